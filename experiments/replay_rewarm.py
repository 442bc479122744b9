"""Replay x rewarming on a real model: stories260K (TinyStories = D0) continues on English Wikipedia.

Every run trains the same number of tokens; only the TinyStories share of the mix (replay alpha0)
and the LR schedule change, the compute-equivalent design of Ibrahim et al. 2024. Per run we read
forgetting (TinyStories val loss rise) and adaptation (wiki val loss fall) from summary.json, then
write the table, two plots and the generated block of docs/study-replay-rewarm.md.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/replay_rewarm.py           # the study (27 runs, ~22 min)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/replay_rewarm.py --quick   # smoke, into runs/study-quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ALPHAS = (0.0, 0.05, 0.25)               # TinyStories share of every batch (the rest is wiki)
PEAK = 1e-3                              # P, chosen by a probe (docs/study-replay-rewarm.md)
ETA_MIN = 0.1 * PEAK                     # the constant "no rewarm" LR = the cosine's floor at P
CONST = "const-eta_min"                  # Ibrahim et al.'s constant baseline: no rewarm, hold eta_min
REWARM = {"rewarm-P": PEAK, "rewarm-2P": 2 * PEAK}  # the `rewarm-replay` preset: 1% warmup, cosine to 0.1 peak
LR_MODES = (CONST, *REWARM)
TOKENS = 262_144                         # per run (32 steps); sized so 27 runs fit in ~30 min on one CPU thread
BATCH_TOKENS = 8192                      # 2 micro-batches of 8 x 256: more optimizer steps per token
BEGIN, END = "<!-- BEGIN GENERATED (experiments/replay_rewarm.py) -->", "<!-- END GENERATED -->"


def shared_data() -> Path:
    root = Path(os.environ.get("CPT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "models" / "stories260K").is_dir():
        sys.exit(f"shared data not found at {root} (needs models/stories260K and corpora/en); "
                 "set CPT_SHARED_DATA to the folder that holds them")
    return root


def strategy(alpha0: float, lr_mode: str) -> dict:
    """The stage as the cookbook's presets say it: `naive` / `replay` at the constant eta_min, or
    `rewarm-replay` (Ibrahim et al.'s rewarm + re-decay + replay) to the mode's peak."""
    if lr_mode in REWARM:
        return {"strategy": {"name": "rewarm-replay", "peak": REWARM[lr_mode], "alpha0": alpha0}}
    preset = {"name": "replay", "alpha0": alpha0} if alpha0 > 0 else "naive"
    return {"strategy": preset, "schedule": {"kind": "constant", "lr": ETA_MIN}}


def recipe_for(alpha0: float, lr_mode: str, seed: int, tokens: int, data: Path, shards: Path) -> dict:
    """The one recipe of the study; everything that varies between runs is an argument."""
    return {
        "seed": seed,
        "model": {"path": str(data / "models/stories260K")},
        "base_sources": ["stories"],             # D0: replayed, and forgetting is measured on it
        "seq_len": 256, "micro_batch": 8, "batch_tokens": BATCH_TOKENS,
        "optimizer": {"lr": PEAK, "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0},
        "device": "cpu", "tokenize_workers": 1,
        "data_dir": str(shards),                 # tokenize once, share between the 27 runs
        "sources": {
            "stories": {"paths": [str(data / "corpora/en/tinystories.txt")], "separator": "<|endoftext|>"},
            "wiki": {"paths": [str(data / "corpora/en/wikipedia_en.txt")], "format": "lines"},
        },
        "validation": {"tokens_per_source": 20000},
        "stages": [{"name": "wiki", "tokens": tokens, "new": ["wiki"], **strategy(alpha0, lr_mode)}],
        "eval": {"every_tokens": max(tokens // 4, BATCH_TOKENS)},  # a few points per curve; evals cost ~1/4 of a run
        "checkpoint": {"every_tokens": 10 * tokens},  # none mid-run: a run is short, rerun it instead
    }


def run_name(alpha0: float, lr_mode: str, seed: int) -> str:
    return f"a{alpha0:g}-{lr_mode}-s{seed}"


def run_all(out: Path, seeds: list[int], tokens: int) -> None:
    from cptkit.runner import run_recipe

    data = shared_data()
    for seed in seeds:  # seed-major: a partial study already covers every config once
        for alpha0 in ALPHAS:
            for mode in LR_MODES:
                run_dir = out / run_name(alpha0, mode, seed)
                text = yaml.safe_dump(recipe_for(alpha0, mode, seed, tokens, data, out / "shards"), sort_keys=False)
                if (run_dir / "summary.json").is_file() and (run_dir / "recipe.yaml").read_text() == text:
                    continue  # finished with this very recipe (cpt keeps a copy in the run folder)
                shutil.rmtree(run_dir, ignore_errors=True)  # interrupted or stale: restart from zero
                recipe = out / "recipes" / f"{run_dir.name}.yaml"
                recipe.parent.mkdir(parents=True, exist_ok=True)
                recipe.write_text(text)
                t0 = time.time()
                run_recipe(recipe, run_dir)
                print(f"[study] {run_dir.name}: {time.time() - t0:.0f} s", flush=True)


def measure(run_dir: Path) -> tuple[float, float]:
    """(forgetting, adaptation) of the run's single stage, in nats per token."""
    st = json.loads((run_dir / "summary.json").read_text())["stages"][0]
    start, end = st["val_loss_start"], st["val_loss_end"]
    return end["stories"] - start["stories"], start["wiki"] - end["wiki"]


def collect(out: Path, seeds: list[int]) -> list[dict]:
    """One row per (alpha0, LR mode): mean and std over the seeds that finished, plain and as
    same-seed differences. Each seed carves its own validation slices, so the start losses differ
    by seed (adaptation most); a difference to a run of the same seed cancels that out."""
    m = {(a, mode, s): measure(out / run_name(a, mode, s)) for a in ALPHAS for mode in LR_MODES for s in seeds
         if (out / run_name(a, mode, s) / "summary.json").is_file()}
    rows = []
    for alpha0 in ALPHAS:
        for mode in LR_MODES:
            own = [m[alpha0, mode, s] for s in seeds if (alpha0, mode, s) in m]
            if not own:
                continue
            row = {"alpha0": alpha0, "mode": mode, "n": len(own)}
            for prefix, ref in (("naive_", (0.0, mode)), ("const_", (alpha0, CONST))):
                vals = _paired(m, (alpha0, mode), ref, seeds) if ref != (alpha0, mode) else []  # none to itself
                row[prefix + "forget"], row[prefix + "adapt"] = _ms([v[0] for v in vals]), _ms([v[1] for v in vals])
            row["forget"], row["adapt"] = _ms([v[0] for v in own]), _ms([v[1] for v in own])
            rows.append(row)
    return rows


def _paired(m: dict, config: tuple, ref: tuple, seeds: list[int]) -> list[tuple[float, float]]:
    """(forgetting, adaptation) of `config` minus those of `ref`, per seed where both finished."""
    return [(m[(*config, s)][0] - m[(*ref, s)][0], m[(*config, s)][1] - m[(*ref, s)][1])
            for s in seeds if (*config, s) in m and (*ref, s) in m]


def _ms(xs: list[float]) -> tuple[float, float] | None:
    """Mean and sample std; None when there is nothing to average."""
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else None


def _cell(ms: tuple[float, float] | None, signed: bool) -> str:
    return "—" if ms is None else f"{ms[0]:{'+' if signed else ''}.3f} ± {ms[1]:.3f}"


def table(rows: list[dict]) -> str:
    cols = [("forget", "forgetting (TinyStories ↑)"), ("adapt", "adaptation (wiki ↓)"),
            ("naive_forget", "Δ forgetting vs α0=0"), ("naive_adapt", "Δ adaptation vs α0=0"),
            ("const_forget", "Δ forgetting vs const-eta_min"), ("const_adapt", "Δ adaptation vs const-eta_min")]
    lines = ["| replay α0 | LR | seeds | " + " | ".join(h for _, h in cols) + " |", "|---|---|---:" + "|---:" * len(cols) + "|"]
    for r in rows:
        cells = [_cell(r[k], signed="_" in k) for k, _ in cols]
        lines.append(f"| {r['alpha0']:g} | {r['mode']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _style(alpha0: float, mode: str) -> dict:
    # colour = replay share, marker/line = LR mode, the same in both plots
    colour = {0.0: "tab:red", 0.05: "tab:orange", 0.25: "tab:blue"}[alpha0]
    i = list(LR_MODES).index(mode)
    return {"color": colour, "marker": "osD"[i], "linestyle": (":", "-", "--")[i]}


def plot_tradeoff(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for alpha0 in ALPHAS:  # a faint line per replay share, through its LR modes: the LR trade-off
        pts = [(r["adapt"][0], r["forget"][0]) for r in rows if r["alpha0"] == alpha0]
        if pts:
            ax.plot(*zip(*pts), color=_style(alpha0, "rewarm-P")["color"], alpha=0.3)
    for r in rows:
        st = _style(r["alpha0"], r["mode"])
        ax.errorbar(r["adapt"][0], r["forget"][0], xerr=r["adapt"][1], yerr=r["forget"][1], color=st["color"],
                    marker=st["marker"], linestyle="none", capsize=3, label=f"α0={r['alpha0']:g}, {r['mode']}")
    ax.set_xlabel("adaptation: wiki val loss fall (nats/token, higher is better)")
    ax.set_ylabel("forgetting: TinyStories val loss rise (lower is better)")
    ax.set_title("stories260K → wiki: forgetting vs adaptation (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(out: Path, seed: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for alpha0 in ALPHAS:
        for mode in LR_MODES:
            metrics = out / run_name(alpha0, mode, seed) / "metrics.jsonl"
            if not metrics.is_file():
                continue
            evals = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("kind") == "eval"]
            st = _style(alpha0, mode)
            for ax, src in zip(axes, ("stories", "wiki")):
                ax.plot([e["tokens"] for e in evals], [e["val_loss"][src] for e in evals], color=st["color"],
                        linestyle=st["linestyle"], marker=st["marker"], ms=3, label=f"α0={alpha0:g}, {mode}")
    for ax, title in zip(axes, ("TinyStories (D0) val loss: forgetting", "wiki (D1) val loss: adaptation")):
        ax.set_xlabel("training tokens")
        ax.set_ylabel("val loss (nats/token)")
        ax.set_title(f"{title}, seed {seed}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def generated_block(rows: list[dict], seeds: list[int], tokens: int, plots: Path, doc: Path, cmd: str) -> str:
    rel = os.path.relpath(plots, doc.parent)
    warmup_steps = round(0.01 * tokens / BATCH_TOKENS)  # the preset's 1%, rounded to whole steps as cpt does
    return "\n".join([
        BEGIN,
        f"Rerun: `{cmd}` (skips runs already finished with the same recipe; delete `runs/study` to redo all).",
        "",
        "- model: stories260K (Llama, 260K parameters, trained on TinyStories), CPU, 1 thread",
        "- data: TinyStories (D0, replay) and English Wikipedia (D1, one article per line); "
        "validation: fixed 20,000-token slices per source",
        f"- {tokens:,} training tokens per run; batch {BATCH_TOKENS:,} tokens (8 × 256, 2 accumulation steps), "
        f"{tokens // BATCH_TOKENS} steps; AdamW β=(0.9, 0.95), weight decay 0.1, clip 1.0",
        f"- stages as presets: const-eta_min is `naive` (α0 = 0) or `replay` with `schedule: {{kind: constant, "
        f"lr: {ETA_MIN:g}}}`; rewarm-P and rewarm-2P are `rewarm-replay` with `peak` {PEAK:g} and {2 * PEAK:g}: a 1% linear "
        f"warmup ({warmup_steps} steps at this budget: {'the cosine starts at the peak' if not warmup_steps else 'rounded to whole steps'}), "
        f"then cosine to 0.1 × peak ({0.1 * PEAK:g}, {0.2 * PEAK:g})",
        f"- replay α0 ∈ {{{', '.join(f'{a:g}' for a in ALPHAS)}}}; seeds {', '.join(map(str, seeds))} "
        "(data order and validation slices)",
        "",
        "Forgetting = TinyStories val loss at the end − at the start; adaptation = wiki val loss at the "
        "start − at the end (nats/token, mean ± sample std over seeds). The Δ columns are differences to the run "
        "of the same seed with no replay (same LR), or at const-eta_min (same α0): each seed has its own "
        "validation slices, so these paired differences vary far less than the plain values.",
        "",
        table(rows),
        "",
        f"![forgetting vs adaptation]({rel}/tradeoff.png)",
        "",
        f"![val loss curves, seed {seeds[0]}]({rel}/curves.png)",
        END,
    ])


def write_doc(doc: Path, block: str) -> None:
    """Replace the generated block; the prose around it (conclusions) is kept as written."""
    text = doc.read_text() if doc.is_file() else f"# Study: replay and rewarming\n\n{BEGIN}\n{END}\n\n## Conclusions\n\n(to write)\n"
    head, rest = text.split(BEGIN, 1)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(head + block + rest.split(END, 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tokens", type=int, default=TOKENS, help="training tokens per run")
    p.add_argument("--out", type=Path, default=None, help="run folders (default runs/study)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, 32k tokens, report in --out")
    args = p.parse_args()
    if args.quick:  # tiny, and kept away from the real study and its doc
        args.seeds, args.tokens = args.seeds[:2], min(args.tokens, 4 * BATCH_TOKENS)
    out = (args.out or REPO / ("runs/study-quick" if args.quick else "runs/study")).resolve()
    doc = out / "study-replay-rewarm.md" if args.quick else REPO / "docs/study-replay-rewarm.md"
    plots = out / "plots" if args.quick else REPO / "docs/study"

    import torch
    torch.set_num_threads(1)  # the study's speed budget assumes one thread; set OMP_NUM_THREADS=1 too

    t0 = time.time()
    run_all(out, args.seeds, args.tokens)
    rows = collect(out, args.seeds)
    plots.mkdir(parents=True, exist_ok=True)
    plot_tradeoff(rows, plots / "tradeoff.png")
    plot_curves(out, args.seeds[0], plots / "curves.png")
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python experiments/replay_rewarm.py" + (" --quick" if args.quick else "")
    write_doc(doc, generated_block(rows, args.seeds, args.tokens, plots, doc, cmd))
    print(table(rows))
    print(f"[study] done in {time.time() - t0:.0f} s; doc: {doc}")


if __name__ == "__main__":
    main()
