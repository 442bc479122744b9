"""Pure table builders over a run's ``summary.json`` (no I/O, no plotting).

Sign conventions:

* forgetting rows report a *rise* in validation loss on sources seen before the
  stage (``end - start``, ``end - base``): positive means the model forgot;
* adaptation rows report a *fall* in validation loss on sources new in the stage
  (``start - end``, ``base - end``): positive means the model learned.

A value that is missing from the summary comes out as ``None`` (and so does any
difference that needs it) rather than raising, so a partly written summary
still yields a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Column order used for forgetting tables in reports.
FORGETTING_COLUMNS = ["stage", "source", "base", "start", "end", "rise_vs_start", "rise_vs_base"]
#: Column order used for adaptation tables in reports.
ADAPTATION_COLUMNS = ["stage", "source", "base", "start", "end", "fall_vs_start", "fall_vs_base"]

#: Cell text for a missing value.
MISSING = "–"


def _loss(table: Mapping[str, Any] | None, source: str) -> float | None:
    """Return ``table[source]`` as a float, or None when absent or not a number."""
    if not table:
        return None
    value = table.get(source)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _diff(a: float | None, b: float | None) -> float | None:
    """Return ``a - b``, or None when either side is missing."""
    if a is None or b is None:
        return None
    return a - b


def _stage_losses(summary: Mapping[str, Any], stage: Mapping[str, Any], source: str) -> dict:
    """Return the common part of a row: stage, source and base/start/end losses."""
    return {
        "stage": stage.get("name"),
        "source": source,
        "start": _loss(stage.get("val_loss_start"), source),
        "end": _loss(stage.get("val_loss_end"), source),
        "base": _loss(summary.get("base_val_loss"), source),
    }


def forgetting_rows(summary: Mapping[str, Any]) -> list[dict]:
    """One row per (stage, earlier source) with the rise in val loss.

    Keys: ``stage, source, start, end, base, rise_vs_start, rise_vs_base`` where
    ``rise_vs_start = end - start`` and ``rise_vs_base = end - base``. Stages with
    no earlier sources contribute no rows.
    """
    rows = []
    for stage in summary.get("stages", []):
        for source in stage.get("earlier_sources", []):
            row = _stage_losses(summary, stage, source)
            row["rise_vs_start"] = _diff(row["end"], row["start"])
            row["rise_vs_base"] = _diff(row["end"], row["base"])
            rows.append(row)
    return rows


def adaptation_rows(summary: Mapping[str, Any]) -> list[dict]:
    """One row per (stage, new source) with the fall in val loss.

    Keys: ``stage, source, start, end, base, fall_vs_start, fall_vs_base`` where
    ``fall_vs_start = start - end`` and ``fall_vs_base = base - end``. Stages with
    no new sources contribute no rows.
    """
    rows = []
    for stage in summary.get("stages", []):
        for source in stage.get("new_sources", []):
            row = _stage_losses(summary, stage, source)
            row["fall_vs_start"] = _diff(row["start"], row["end"])
            row["fall_vs_base"] = _diff(row["base"], row["end"])
            rows.append(row)
    return rows


def format_cell(value: Any, floatfmt: str = ".3f") -> str:
    """Return the markdown text of one table cell."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        text = format(value, floatfmt)
        # A tiny negative difference would otherwise print as "-0.000", which
        # reads like a (meaningless) sign in a forgetting/adaptation column.
        if text.startswith("-") and float(text) == 0.0:
            text = text[1:]
        return text
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else MISSING
    # Pipes and newlines would break the table's row structure.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_numeric_column(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    """True when every present value in ``column`` is a number (for right alignment)."""
    values = [row.get(column) for row in rows if row.get(column) is not None]
    return bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    floatfmt: str = ".3f",
    headers: Sequence[str] | None = None,
) -> str:
    """Render ``rows`` as a GitHub-flavoured markdown table.

    ``columns`` are the row keys to show, in order; ``headers`` (default: the
    column names) label them. Floats use ``floatfmt``; missing keys or None show
    as "–". Numeric columns are right-aligned. Returns the table without a
    trailing newline; with no rows it is just the header and separator lines.
    """
    headers = list(columns) if headers is None else list(headers)
    if len(headers) != len(columns):
        raise ValueError(f"{len(headers)} headers for {len(columns)} columns")
    aligns = ["---:" if _is_numeric_column(rows, c) else "---" for c in columns]
    lines = [
        "| " + " | ".join(format_cell(h) for h in headers) + " |",
        "| " + " | ".join(aligns) + " |",
    ]
    for row in rows:
        cells = [format_cell(row.get(c), floatfmt) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
