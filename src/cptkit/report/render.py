"""Render a CPT run directory into ``report.md`` plus PNG plots.

Inputs (in ``run_dir``): ``summary.json`` (required) and ``metrics.jsonl``
(optional; without it the plots fall back to the summary's start/end losses).
Outputs: ``plots/val_loss.png``, ``plots/lr.png``, ``plots/train_loss.png`` and
``report.md``, each written atomically so a reader never sees a half file.

matplotlib is imported only inside the plotting functions, after selecting the
non-interactive Agg backend, so importing this module has no GUI side effects.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cptkit.report.tables import (
    ADAPTATION_COLUMNS,
    FORGETTING_COLUMNS,
    adaptation_rows,
    forgetting_rows,
    markdown_table,
)

from cptkit.report.positions import PLOT as POSITION_PLOT, passkey_section, plot_positions, position_section
from cptkit.report.attempts import PLOT as ATTEMPTS_PLOT, attempts_section, plot_attempts
from cptkit.report.stability import PLOT as STABILITY_PLOT, plot_stability, stability_section
from cptkit.report.tasks import PLOT as TASKS_PLOT, plot_tasks, tasks_section

PLOTS_DIR = "plots"
PLOT_FILES = {"val_loss": "val_loss.png", "lr": "lr.png", "train_loss": "train_loss.png"}


# --------------------------------------------------------------------------- I/O


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target so os.replace is a rename on one filesystem
    # (atomic), never a cross-device copy.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; reports are meant to be shared/read.
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave a stray temp file behind, whatever went wrong.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def load_summary(run_dir: Path) -> dict:
    """Return the parsed ``summary.json`` of a run."""
    with open(run_dir / "summary.json", encoding="utf-8") as fh:
        return json.load(fh)


def load_metrics(run_dir: Path) -> list[dict]:
    """Return the records of ``metrics.jsonl`` (empty list when the file is absent).

    Blank lines are skipped. A malformed *last* line is dropped, because a run
    killed mid-write leaves exactly that; a malformed line elsewhere is real
    corruption and raises ValueError.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: bad JSON on record {i + 1}: {exc}") from exc
    return records


# ------------------------------------------------------------------ series prep


def train_series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list, list]:
    """Return (tokens, values) of ``key`` over train records, ordered by step."""
    train = [r for r in records if r.get("kind") == "train" and r.get(key) is not None]
    train.sort(key=lambda r: (r.get("step", 0), r.get("tokens", 0)))
    return [r["tokens"] for r in train], [float(r[key]) for r in train]


def _eval_points_from_summary(summary: Mapping[str, Any]) -> list[tuple[float, dict]]:
    """Return (tokens, val_loss) points implied by summary.json alone."""
    points = []
    if summary.get("base_val_loss"):
        points.append((0, summary["base_val_loss"]))
    for stage in summary.get("stages", []):
        if stage.get("val_loss_start"):
            points.append((stage.get("tokens_start", 0), stage["val_loss_start"]))
        if stage.get("val_loss_end"):
            points.append((stage.get("tokens_end", 0), stage["val_loss_end"]))
    return points


def eval_points(
    records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]
) -> list[tuple[float, dict]]:
    """Return (tokens, {source: val_loss}) eval points in run order.

    Uses the eval records of metrics.jsonl; the base eval is pinned to tokens=0.
    With no eval records at all, falls back to the summary's base/start/end.
    """
    evals = [r for r in records if r.get("kind") == "eval" and r.get("val_loss")]
    if not evals:
        return _eval_points_from_summary(summary)
    # Stable sort on tokens keeps an "end" eval before the next stage's
    # "start" eval when both sit on the same boundary.
    points = [(0 if r.get("tag") == "base" else r.get("tokens", 0), r["val_loss"]) for r in evals]
    points.sort(key=lambda p: p[0])
    if not any(r.get("tag") == "base" for r in evals) and summary.get("base_val_loss"):
        points.insert(0, (0, summary["base_val_loss"]))
    return points


def plot_sources(summary: Mapping[str, Any], points: Sequence[tuple[float, dict]]) -> list[str]:
    """Return the sources to plot: summary order first, then any extra seen in evals."""
    sources = list(summary.get("sources", []))
    for _, losses in points:
        sources.extend(s for s in losses if s not in sources)
    return sources


def source_series(points: Sequence[tuple[float, dict]], source: str) -> tuple[list, list]:
    """Return (tokens, losses) for one source, skipping evals that lack it."""
    xs, ys = [], []
    for tokens, losses in points:
        value = losses.get(source)
        if value is not None:
            xs.append(tokens)
            ys.append(float(value))
    return xs, ys


# --------------------------------------------------------------------- plotting


def _pyplot():
    """Return pyplot with the non-interactive Agg backend selected."""
    import matplotlib

    # Selected here rather than at package import: a report is rendered on
    # headless machines, but importing cpt must not change a user's backend.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark_stages(ax, stages: Sequence[Mapping[str, Any]]) -> None:
    """Draw a dashed vertical line at each stage start, labelled with the stage name."""
    # x in data units, y in axes units: labels stay at the top whatever the loss scale.
    transform = ax.get_xaxis_transform()
    for stage in stages:
        x = stage.get("tokens_start", 0)
        ax.axvline(x, color="0.4", linestyle="--", linewidth=1.0)
        ax.text(
            x, 0.98, f" {stage.get('name', '?')}", transform=transform,
            rotation=90, va="top", ha="left", fontsize=8, color="0.3",
            # Boxed so the label stays readable where a data line crosses it.
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.0},
        )


def _style_token_axis(ax) -> None:
    """Label the x axis as cumulative tokens with engineering (k/M/G) ticks."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("cumulative tokens")
    ax.grid(True, alpha=0.3)


def _no_data(ax, what: str, stages: Sequence[Mapping[str, Any]]) -> None:
    """Write a 'no data' note in an empty axes so the PNG still explains itself."""
    ax.text(0.5, 0.5, f"no {what} recorded", transform=ax.transAxes,
            ha="center", va="center", color="0.5")
    # Without data matplotlib picks a 0..1 x range ("200 m" tokens); span the run instead.
    ends = [st.get("tokens_end") for st in stages if isinstance(st.get("tokens_end"), (int, float))]
    if ends and max(ends) > 0:
        ax.set_xlim(0, max(ends))


def _save(fig, path: Path) -> None:
    """Render ``fig`` to PNG bytes, write them atomically and free the figure."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_val_loss(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Plot val loss per source against cumulative tokens, stages marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    points = eval_points(records, summary)
    plotted = False
    for source in plot_sources(summary, points):
        xs, ys = source_series(points, source)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.5, label=source)
            plotted = True
    if plotted:
        ax.legend(loc="best", fontsize=8)
    else:
        _no_data(ax, "evaluations", summary.get("stages", []))
    _mark_stages(ax, summary.get("stages", []))
    _style_token_axis(ax)
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss by source")
    _save(fig, path)


def _plot_train_key(summary, records, key: str, ylabel: str, title: str, path: Path) -> None:
    """Plot one train-record field against tokens, stages marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    xs, ys = train_series(records, key)
    if xs:
        ax.plot(xs, ys, linewidth=1.2)
    skipped = [r["tokens"] for r in records if r.get("kind") == "train" and r.get("skipped")]
    if skipped:  # steps that made no update: marked along the bottom edge
        ax.plot(skipped, [0.0] * len(skipped), "x", color="tab:red", transform=ax.get_xaxis_transform(),
                clip_on=False, label="skipped step (NaN/Inf)")
        ax.legend(loc="upper right", fontsize=8)
    else:
        _no_data(ax, ylabel, summary.get("stages", []))
    _mark_stages(ax, summary.get("stages", []))
    _style_token_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _save(fig, path)


def plot_lr(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Plot the learning rate against cumulative tokens, stages marked."""
    _plot_train_key(summary, records, "lr", "learning rate", "Learning rate", path)


def plot_train_loss(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Plot the training loss against cumulative tokens, stages marked."""
    _plot_train_key(summary, records, "loss", "training loss", "Training loss", path)


# ---------------------------------------------------------------------- markdown


def _tokens(n: Any) -> str:
    """Format a token count with thousands separators ("–" when missing)."""
    return f"{n:,}" if isinstance(n, int) else ("–" if n is None else str(n))


def overview_section(summary: Mapping[str, Any], run_dir: Path) -> str:
    """Return the run overview: sources and each stage with its token range."""
    stages = summary.get("stages", [])
    rows = []
    for i, stage in enumerate(stages, start=1):
        start, end = stage.get("tokens_start"), stage.get("tokens_end")
        span = end - start if isinstance(start, int) and isinstance(end, int) else None
        rows.append({
            "n": i,
            "stage": stage.get("name"),
            "range": f"{_tokens(start)} → {_tokens(end)}",
            "tokens": _tokens(span),
            "new": stage.get("new_sources", []),
            "earlier": stage.get("earlier_sources", []),
        })
    total = stages[-1].get("tokens_end") if stages else None
    lines = [
        "## Overview",
        "",
        f"- Run directory: `{run_dir.name}`",
        f"- Sources: {', '.join(summary.get('sources', [])) or '–'}",
        f"- Stages: {len(stages)}; tokens trained: {_tokens(total)}",
        *_skipped_line(stages),
        *_relora_lines(stages),
        "",
        markdown_table(
            rows,
            ["n", "stage", "range", "tokens", "new", "earlier"],
            headers=["#", "stage", "tokens (start → end)", "stage tokens", "new sources", "earlier sources"],
        ),
    ]
    return "\n".join(lines)


def _relora_lines(stages: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for s in stages:
        r = s.get("relora")
        if isinstance(r, Mapping):
            shares = r.get("pruned_share") or []
            pruned = f", {min(shares):.3f}-{max(shares):.3f} of the adapters' moments pruned" if shares else ""
            out.append(f"- **ReLoRA** in `{s.get('name')}`: rank {r.get('rank')}, {r.get('adapter_params')} adapter "
                       f"parameters from step {r.get('start_step')}, {len(r.get('merge_steps') or [])} merges inside "
                       f"the stage{pruned}, merged into the plain model at its end")
    return out


def _skipped_line(stages: Sequence[Mapping[str, Any]]) -> list[str]:
    skipped = [(s.get("name"), step) for s in stages for step in s.get("skipped_steps", [])]
    if not skipped:
        return []
    listed = ", ".join(f"{step} ({name})" for name, step in skipped[:20]) + (" …" if len(skipped) > 20 else "")
    return [f"- **Skipped steps** (NaN or Inf loss or gradient, no update made): {len(skipped)}: {listed}"]


def _throughput_lines(records: Sequence[Mapping[str, Any]]) -> str:
    """Medians over the training steps (the first, which warms up, left out) of what each step's
    `perf` record measured."""
    perf = [r["perf"] for r in records if r.get("kind") == "train" and isinstance(r.get("perf"), dict)][1:]
    if not perf:
        return ""

    def median(key: str) -> float | None:
        values = sorted(p[key] for p in perf if isinstance(p.get(key), (int, float)))
        return values[len(values) // 2] if values else None

    tok, wait, mem, mfu = (median(k) for k in ("tokens_per_s_device", "data_wait_s", "peak_mem_gib", "mfu"))
    step = 1 / tok if tok else None  # seconds a token, per device
    parts = [f"{tok:,.0f} tokens/s per device" if tok else None,
             f"MFU {100 * mfu:.1f}%" if mfu is not None else "MFU – (no known peak; pass --peak-tflops)",
             f"peak memory {mem:.2f} GiB" if mem is not None else None,
             f"data wait {1000 * wait:.1f} ms a step" if wait is not None and step else None]
    return "\n- Throughput (median step): " + ", ".join(p for p in parts if p) + _saves_line(records)


def _saves_line(records: Sequence[Mapping[str, Any]]) -> str:
    """How long checkpoint saves held training up: the whole write, or (async) the copy to memory."""
    saves = [r for r in records if r.get("kind") == "checkpoint" and isinstance(r.get("blocked_s"), (int, float))]
    if not saves:
        return ""
    blocked = sorted(r["blocked_s"] for r in saves)
    how = "asynchronous" if all(r.get("async") for r in saves) else "synchronous"
    return (f"\n- Checkpoint saves: {len(saves)} ({how}), training blocked {blocked[len(blocked) // 2]:.2f} s "
            f"median, {blocked[-1]:.2f} s at most")


def plots_section() -> str:
    """Return the markdown embedding the three plots by relative path."""
    return "\n".join([
        "## Plots",
        "",
        f"![Validation loss by source]({PLOTS_DIR}/{PLOT_FILES['val_loss']})",
        "",
        f"![Learning rate]({PLOTS_DIR}/{PLOT_FILES['lr']})",
        "",
        f"![Training loss]({PLOTS_DIR}/{PLOT_FILES['train_loss']})",
    ])


def _rows_or_none(summary: Mapping[str, Any], build, sources_key: str) -> list[dict]:
    """Return ``build(summary)`` rows stage by stage, with a "none" row for an empty stage."""
    out = []
    for stage in summary.get("stages", []):
        # One stage at a time, so stages sharing a name are still kept apart.
        stage_rows = build({**summary, "stages": [stage]})
        if not stage.get(sources_key):
            stage_rows = [{"stage": stage.get("name"), "source": "none"}]
        out.extend(stage_rows)
    return out


def forgetting_section(summary: Mapping[str, Any]) -> str:
    """Return the "Forgetting" heading, sign-convention sentence and table."""
    rows = _rows_or_none(summary, forgetting_rows, "earlier_sources")
    return "\n".join([
        "## Forgetting",
        "",
        "Validation loss on sources seen before each stage. "
        "`rise_vs_start = end - start` and `rise_vs_base = end - base`: "
        "a positive rise means the loss went up, i.e. forgetting.",
        "",
        markdown_table(rows, FORGETTING_COLUMNS),
    ])


def adaptation_section(summary: Mapping[str, Any]) -> str:
    """Return the "Adaptation" heading, sign-convention sentence and table."""
    rows = _rows_or_none(summary, adaptation_rows, "new_sources")
    return "\n".join([
        "## Adaptation",
        "",
        "Validation loss on sources new in each stage. "
        "`fall_vs_start = start - end` and `fall_vs_base = base - end`: "
        "a positive fall means the loss went down, i.e. learning.",
        "",
        markdown_table(rows, ADAPTATION_COLUMNS),
    ])


def val_loss_section(summary: Mapping[str, Any]) -> str:
    """Return the full table of val loss by source: base, then each stage's start/end."""
    sources = list(summary.get("sources", []))
    # Prefixed keys so a source called e.g. "stage" cannot clash with a label column.
    keys = [f"src:{s}" for s in sources]

    def row(stage: str, point: str, losses: Mapping[str, Any] | None) -> dict:
        losses = losses or {}
        return {"stage": stage, "point": point, **{k: losses.get(s) for k, s in zip(keys, sources)}}

    rows = [row("–", "base", summary.get("base_val_loss"))]
    for stage in summary.get("stages", []):
        rows.append(row(stage.get("name"), "start", stage.get("val_loss_start")))
        rows.append(row(stage.get("name"), "end", stage.get("val_loss_end")))
    return "\n".join([
        "## Validation loss by stage",
        "",
        markdown_table(rows, ["stage", "point", *keys], headers=["stage", "point", *sources]),
    ])


def build_markdown(summary: Mapping[str, Any], run_dir: Path, title: str,
                   records: Sequence[Mapping[str, Any]] = ()) -> str:
    """Return the whole report.md text."""
    sections = [
        f"# {title}",
        overview_section(summary, run_dir) + _throughput_lines(records),
        plots_section(),
        forgetting_section(summary),
        adaptation_section(summary),
        val_loss_section(summary),
        position_section(summary, PLOTS_DIR),
        passkey_section(summary),
        tasks_section(summary, PLOTS_DIR),
        stability_section(summary, PLOTS_DIR),
        attempts_section(summary, PLOTS_DIR),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


# ------------------------------------------------------------------------ entry


def write_report(run_dir: Path, title: str | None = None) -> Path:
    """Write plots and ``report.md`` for the run in ``run_dir``; return the report path."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    records = load_metrics(run_dir)
    plots = run_dir / PLOTS_DIR
    plot_val_loss(summary, records, plots / PLOT_FILES["val_loss"])
    plot_lr(summary, records, plots / PLOT_FILES["lr"])
    plot_train_loss(summary, records, plots / PLOT_FILES["train_loss"])
    plot_positions(summary, plots / POSITION_PLOT, _pyplot, _save)
    plot_stability(summary, records, plots / STABILITY_PLOT, _pyplot, _save)
    plot_tasks(summary, records, plots / TASKS_PLOT, _pyplot, _save)
    plot_attempts(summary, run_dir, records, plots / ATTEMPTS_PLOT, _pyplot, _save)
    report = run_dir / "report.md"
    atomic_write_text(report, build_markdown(summary, run_dir, title or f"CPT run report: {run_dir.name}", records))
    return report
