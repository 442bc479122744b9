"""`cpt schedule RECIPE`: the whole plan's LR, per stage and per optimizer step, from the same
segments that drive training (no model, no data)."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from .errors import CptError, naming
from .fileio import write_bytes_atomic, write_text_atomic
from .recipe import Recipe, load_recipe
from .schedules import plan_segments, step_lr

HELP = """Print each stage's LR segment (kind, the LR it starts from, its phases, the LR at the
end). --csv FILE writes one row per optimizer step: stage,step,tokens,lr (step and
tokens cumulative over the plan; lr is the LR that step runs at, the LR of the token count it
completes). --plot FILE.png draws LR against tokens with stage boundaries. The numbers are the
ones training uses. A stage whose init: is a checkpoint folder starts at the LR stored with it.
--csv and --plot refuse plans of more than 10^8 optimizer steps."""

MAX_ROWS = 10**8  # about a 4 GB CSV; 15T tokens at 4M tokens a step is 3.75M rows


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("schedule", help="the plan's LR per stage and per step (csv, plot)", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path, help="recipe YAML file")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write stage,step,tokens,lr per optimizer step")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw LR against tokens")
    return p


def lr_rows(recipe: Recipe, segments) -> list[tuple[str, int, int, float]]:
    """(stage, global step, cumulative tokens after the step, LR of the step) for every step."""
    rows, step, tokens = [], 0, 0
    for st, seg in zip(recipe.stages, segments):
        batch = recipe.stage_batch(st)
        for k in range(recipe.stage_steps(st)):
            step, tokens = step + 1, tokens + batch
            rows.append((st.name, step, tokens, step_lr(seg, k, batch)))
    return rows


def run(args) -> int:
    recipe = load_recipe(args.recipe)
    segments = plan_segments(recipe)
    for st, seg in zip(recipe.stages, segments):
        scaled = f" (inherited LR x {seg.scale:.4g}, lr_scaling {st.lr_scaling})" if seg.scale != 1 else ""
        print(f"{st.name}: {seg.kind}, {seg.total:,} tokens, starts at {seg.start_lr:.6g}{scaled}: {seg.describe()}; "
              f"ends at {seg.end_lr:.6g}")
    if not (args.csv or args.plot):
        return 0
    steps = sum(recipe.stage_steps(st) for st in recipe.stages)
    if steps > MAX_ROWS:  # checked before a row exists: 10^13 steps would fill the memory first
        flag = "--csv" if args.csv else "--plot"
        raise CptError(f"{flag}: the plan has {steps:,} optimizer steps, more than the {MAX_ROWS:,} rows "
                       "cpt schedule writes or draws; check the stages' tokens and batch_tokens")
    rows = lr_rows(recipe, segments)
    if args.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["stage", "step", "tokens", "lr"])
        writer.writerows((s, k, t, repr(lr)) for s, k, t, lr in rows)
        with naming(args.csv):
            write_text_atomic(args.csv, buf.getvalue())
        print(f"wrote {len(rows):,} steps to {args.csv}")
    if args.plot:
        png = _plot(recipe, rows)
        with naming(args.plot):
            write_bytes_atomic(args.plot, png)
        print(f"wrote {args.plot}")
    return 0


def _plot(recipe: Recipe, rows) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([t for _, _, t, _ in rows], [lr for *_, lr in rows], lw=1.5)
    edge = 0
    for st in recipe.stages:
        ax.axvline(edge, color="grey", lw=0.6, ls=":")
        ax.text(edge, 1.0, f" {st.name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        edge += recipe.stage_steps(st) * recipe.stage_batch(st)
    ax.set_xlabel("tokens")
    ax.set_ylabel("learning rate")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=120)
    plt.close(fig)
    return out.getvalue()
