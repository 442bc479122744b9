"""The stability gap in the summary and the report (`monitor:`, train/monitor.py): per stage and
monitored source, how far the loss rose over the stage's start, when, how many tokens it took to
come back, and where it ended; a plot of each stage's curve over its first part."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cptkit.report.tables import markdown_table

PLOT = "stability_gap.png"


def stage_curve(records: Sequence[Mapping[str, Any]], stage: str, tokens_start: int) -> list[tuple[int, dict]]:
    """(stage tokens, losses) of the stage's dense and periodic evaluations and its end, in order."""
    points = [(r["stage_tokens"], r["val_loss"]) for r in records if r.get("kind") == "monitor" and r["stage"] == stage]
    points += [(r["tokens"] - tokens_start, r["val_loss"]) for r in records
               if r.get("kind") == "eval" and r["stage"] == stage and r["tag"] in ("periodic", "end")]
    return sorted(points, key=lambda p: p[0])


def gap(start: float, curve: list[tuple[int, float]]) -> dict[str, Any]:
    """The peak rise over `start` and its stage tokens, the tokens until the loss is back at or
    under `start` after the peak (None: it did not recover in the stage), and the final change."""
    peak, at = max(((loss - start, t) for t, loss in curve), key=lambda p: p[0])
    if peak <= 0:
        return {"peak_rise": peak, "peak_at_tokens": at, "recovered_at_tokens": 0, "final_delta": curve[-1][1] - start}
    back = next((t for t, loss in curve if t > at and loss <= start), None)
    return {"peak_rise": peak, "peak_at_tokens": at, "recovered_at_tokens": back, "final_delta": curve[-1][1] - start}


def stability(records: Sequence[Mapping[str, Any]], stage: Mapping[str, Any]) -> dict[str, dict] | None:
    """Per monitored source of the stage, its `gap` (None when the stage was not monitored)."""
    monitored = next((r["val_loss"] for r in records if r.get("kind") == "monitor" and r["stage"] == stage["name"]), None)
    if monitored is None:
        return None
    curve = stage_curve(records, stage["name"], stage["tokens_start"])
    return {src: gap(stage["val_loss_start"][src], [(t, losses[src]) for t, losses in curve])
            for src in monitored}


def _tokens(n: int | None) -> str:
    return "did not recover" if n is None else f"{n:,}"


def stability_section(summary: Mapping[str, Any], plots_dir: str) -> str | None:
    stages = [st for st in summary.get("stages", []) if st.get("stability")]
    if not stages:
        return None
    rows = [{"stage": st["name"], "source": src, "peak": g["peak_rise"],
             "at": f"{g['peak_at_tokens']:,}" if g["peak_rise"] > 0 else "no rise",
             "back": _tokens(g["recovered_at_tokens"]), "final": g["final_delta"]}
            for st in stages for src, g in st["stability"].items()]
    return "\n".join(["## Stability gap", "",
                      "Validation loss measured densely over the first part of each stage (`monitor:`): the peak "
                      "rise over the stage's start (nats) and the stage tokens it happened at, the tokens until the "
                      "loss was back at its start, and the change at the stage's end.", "",
                      markdown_table(rows, ["stage", "source", "peak", "at", "back", "final"],
                                     headers=["stage", "source", "peak rise", "at tokens", "recovered at tokens",
                                              "final Δ"]),
                      "", f"![Stability gap]({plots_dir}/{PLOT})"])


def plot_stability(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], path: Path, pyplot, save) -> None:
    """One panel per monitored stage and source (a new source's fall would flatten an old one's
    gap on a shared axis): the loss minus its stage start, over stage tokens."""
    stages = [st for st in summary.get("stages", []) if st.get("stability")]
    if not stages:
        return
    sources = list(dict.fromkeys(src for st in stages for src in st["stability"]))
    plt = pyplot()
    fig, axes = plt.subplots(len(sources), len(stages), figsize=(4.5 * len(stages), 3.2 * len(sources)), squeeze=False)
    for col, st in enumerate(stages):
        curve = [(0, st["val_loss_start"])] + stage_curve(records, st["name"], st["tokens_start"])
        for row, src in enumerate(sources):
            ax = axes[row][col]
            if src in st["stability"]:
                ax.plot([t for t, _ in curve], [losses[src] - st["val_loss_start"][src] for _, losses in curve],
                        marker="o", markersize=2.5, label=src, color=f"C{row}")
            stage_panel(ax, st["name"], f"Δ {src} loss vs stage start")
    fig.tight_layout()
    save(fig, path)


def stage_panel(ax, stage: str, ylabel: str) -> None:
    """A panel of changes against a stage's start, over the stage's tokens (k/M ticks)."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter())
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_title(f"stage {stage}")
    ax.set_xlabel("stage tokens")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
