"""The recipe's `nonfinite:` section (owned by the non-finite guard, train/guard.py)."""

from __future__ import annotations

from pydantic import Field

from ..config import Strict


class NonFiniteCfg(Strict):
    """A step whose loss or gradient norm is NaN or Inf is skipped (no update); after
    `max_bad_steps` such steps in a row the run stops, naming the last good checkpoint."""

    max_bad_steps: int = Field(3, ge=1, le=1_000_000)
