"""The report's downstream tasks (`evals:`): each task's score at the base and at each stage's
end, with the change against the base and against the stage's start (bits per byte: lower is
better; accuracy and exact match: higher), and a plot of every evaluation of each task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cptkit.eval.tasks import main_score
from cptkit.report.tables import markdown_table

PLOT = "tasks.png"


def tasks_section(summary: Mapping[str, Any], plots_dir: str) -> str | None:
    base = summary.get("base_evals")
    if not base:
        return None
    stages = [s for s in summary.get("stages", []) if s.get("evals_end")]
    rows = []
    for task, b in base.items():
        row = {"task": task, "base": b}
        for st in stages:
            v, s = st["evals_end"].get(task), (st.get("evals_start") or {}).get(task)
            row[st["name"]] = None if v is None or b is None else \
                f"{v:.3f} ({v - b:+.3f} base" + ("" if s is None else f", {v - s:+.3f} start") + ")"
        rows.append(row)
    names = [st["name"] for st in stages]
    return "\n".join(["## Downstream tasks", "",
                      "Score at the base and at the end of each stage (in brackets: the change against the base and "
                      "against the stage's start). cloze and choice: accuracy; generate: exact match; perplexity: "
                      "bits per byte (lower is better).", "",
                      markdown_table(rows, ["task", "base", *names]), "", f"![Downstream tasks]({plots_dir}/{PLOT})"])


def plot_tasks(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], path: Path, pyplot, save) -> None:
    """Each task's main score at every evaluation, over training tokens (one panel per task)."""
    points = [(r["tokens"], r["scores"]) for r in records if r.get("kind") == "tasks"]
    if not points or not summary.get("base_evals"):
        return
    tasks = list(summary["base_evals"])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        xs = [t for t, s in points if task in s]
        ax.plot(xs, [main_score(s[task]) for _, s in points if task in s], marker="o", markersize=3)
        for st in summary.get("stages", []):
            ax.axvline(st["tokens_start"], color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(task)
        ax.set_xlabel("tokens")
    save(fig, path)
