"""The attempts of guarded stages (train/attempts.py) in the summary and the report: each attempt's
strategy, whether it failed (and why, after how many tokens) or is the one the plan kept, and the
guard's readings of every attempt side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cptkit.config import RecipeLoader
from cptkit.ladder import describe, ladders
from cptkit.report.stability import stage_panel
from cptkit.report.tables import markdown_table
from cptkit.train.attempts import read_attempts

PLOT = "guard_attempts.png"


def attempts_summary(out: Path) -> dict[str, list[dict]] | None:
    """Per guarded stage that failed at least once: its failed attempts, then the kept one."""
    attempts = read_attempts(out)
    if not attempts:
        return None
    table = ladders(yaml.load((out / "recipe.yaml").read_text(encoding="utf-8"), Loader=RecipeLoader))
    summary = {}
    for stage, entry in attempts.items():
        rows = [{**h, "result": "failed"} for h in entry["history"]]
        k = entry["attempt"]
        rows.append({"attempt": k, "strategy": describe(table[stage][k]), "result": "kept"})
        summary[stage] = rows
    return summary


def _readings(records: Sequence[Mapping[str, Any]], stage: str) -> list[tuple[int, float, float]]:
    return [(r["stage_tokens"], r["loss"], r["start"]) for r in records if r.get("kind") == "guard" and r["of"] == stage]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def attempts_section(summary: Mapping[str, Any], plots_dir: str) -> str | None:
    attempts = summary.get("attempts")
    if not attempts:
        return None
    rows = [{"stage": stage, "attempt": a["attempt"], "strategy": a["strategy"], "result": a["result"],
             "at": f"{a['stage_tokens']:,}" if "stage_tokens" in a else "", "why": a.get("failed", "")}
            for stage, tried in attempts.items() for a in tried]
    return "\n".join(["## Guarded stages: attempts", "",
                      "A stage whose guard failed went back to its start and ran the next strategy of its ladder. "
                      "Failed attempts keep their records and checkpoints under `attempts/`.", "",
                      markdown_table(rows, ["stage", "attempt", "strategy", "result", "at", "why"],
                                     headers=["stage", "attempt", "strategy", "result", "failed at tokens", "why"]),
                      "", f"![Guard readings of each attempt]({plots_dir}/{PLOT})"])


def plot_attempts(summary: Mapping[str, Any], run_dir: Path, records: Sequence[Mapping[str, Any]], path: Path,
                  pyplot, save) -> None:
    """One panel per guarded stage: the watched loss minus its start, per attempt."""
    attempts = summary.get("attempts")
    if not attempts:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(attempts), figsize=(5 * len(attempts), 3.8), squeeze=False)
    for ax, (stage, tried) in zip(axes[0], attempts.items()):
        for a in tried:
            recs = _records(run_dir / a["folder"] / "metrics.jsonl") if "folder" in a else records
            points = _readings(recs, stage)
            ax.plot([t for t, _, _ in points], [loss - start for _, loss, start in points], marker="o", markersize=3,
                    label=f"{a['attempt']}: {a['strategy']} ({a['result']})")
        stage_panel(ax, stage, "guarded loss − stage start")
    save(fig, path)
