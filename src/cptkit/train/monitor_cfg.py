"""`monitor:` in a recipe (train/monitor.py measures it), apart from the hook so that the recipe
does not import the training code."""

from __future__ import annotations

from pydantic import Field

from ..config import MAX_TOKENS, Strict
from ..errors import unknown_name


class MonitorCfg(Strict):
    sources: list[str] = []  # the sources to follow (default: every source)
    every_tokens: int = Field(..., gt=0, le=MAX_TOKENS)  # one point each time the stage's tokens cross a multiple
    first_fraction: float = Field(0.25, gt=0, le=1)  # ... over this first part of each stage


def check_monitor(cfg: MonitorCfg | None, sources) -> list[str]:
    if cfg is None:
        return []
    return [f"monitor.sources: {unknown_name('source', n, sources)}" for n in cfg.sources if n not in sources]
