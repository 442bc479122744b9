"""The report's downstream tasks (`evals:`): each task's score at the base and at each stage's
end, with the change against the base (bits per byte: lower is better; accuracy: higher)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cpt.report.tables import markdown_table


def tasks_section(summary: Mapping[str, Any]) -> str | None:
    base = summary.get("base_evals")
    if not base:
        return None
    stages = [s for s in summary.get("stages", []) if s.get("evals_end")]
    rows = []
    for task, b in base.items():
        row = {"task": task, "base": b}
        for st in stages:
            v = st["evals_end"].get(task)
            row[st["name"]] = None if v is None or b is None else f"{v:.3f} ({v - b:+.3f})"
        rows.append(row)
    names = [st["name"] for st in stages]
    return "\n".join(["## Downstream tasks", "",
                      "Score at the base and at the end of each stage (in brackets: the change against the base). "
                      "cloze and choice: accuracy; generate: exact match; perplexity: bits per byte (lower is better).", "",
                      markdown_table(rows, ["task", "base", *names])])
