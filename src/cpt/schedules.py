"""Learning-rate schedules as pure functions of the tokens a stage has trained on.

The whole plan's LR is composed of per-stage segments. A segment that names no peak `lr`
continues from the LR at which its stage starts: the end of the previous stage, or the LR stored
with the checkpoint named by `init:` — so an infinite schedule never rewarms by accident.

An optimizer step runs at the LR of the token count it completes (as Megatron does): the first
warmup step is not wasted at LR 0, and the last decay step reaches the final LR exactly. Phase
boundaries are rounded to whole steps so that "right before the decay" is a step boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .recipe import ConstantSchedule, CooldownSchedule, CosineSchedule, Recipe, WSDSchedule


def decay_factor(shape: str, x: float) -> float:
    """Remaining fraction of the (peak - floor) gap after a fraction x in [0, 1] of the decay."""
    x = min(max(x, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - x
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(x)
    raise ValueError(f"unknown decay shape {shape!r}")


@dataclass(frozen=True)
class Segment:
    """The LR of one stage: warm up from 0 to `peak` over `warmup` tokens, hold, then decay from
    `decay_from` to `floor` over the tokens [decay_start, total] with `shape`."""

    kind: str
    total: int  # tokens of the stage (whole steps)
    start_lr: float  # the LR the stage starts from (continuing segments)
    peak: float
    warmup: int
    decay_start: int | None  # None: never decays
    floor: float
    shape: str

    def lr(self, t: float) -> float:
        if self.warmup and t <= self.warmup:
            return self.peak * t / self.warmup
        if self.decay_start is None or t <= self.decay_start:
            return self.peak
        span = self.total - self.decay_start
        return self.floor + (self.peak - self.floor) * decay_factor(self.shape, (t - self.decay_start) / span)

    @property
    def end_lr(self) -> float:
        return self.lr(self.total)

    def phase(self, t: float) -> str:
        """Where a checkpoint at `t` tokens stands: warmup, hold, decay or converged."""
        if self.warmup and t < self.warmup:
            return "warmup"
        if self.decay_start is None or t <= self.decay_start:
            return "hold"
        return "converged" if t >= self.total else "decay"


def _round_to_step(tokens: float, step: int) -> int:
    return int(round(tokens / step)) * step


def build_segment(sched, total: int, step_tokens: int, start_lr: float) -> Segment:
    """The segment of one stage, given the LR at which the stage starts."""
    warmup = _round_to_step(getattr(sched, "warmup", 0.0) * total, step_tokens)
    peak = getattr(sched, "lr", None) or start_lr
    if isinstance(sched, ConstantSchedule):
        return Segment("constant", total, start_lr, peak, warmup, None, peak, "linear")
    if isinstance(sched, CosineSchedule):
        floor = 0.1 * peak if sched.min_lr is None else sched.min_lr
        return Segment("cosine", total, start_lr, peak, warmup, warmup, floor, "cosine")
    if isinstance(sched, WSDSchedule):
        decay_start = total - _round_to_step(sched.decay * total, step_tokens)
        return Segment("wsd", total, start_lr, peak, warmup, max(decay_start, warmup), sched.min_lr, sched.shape)
    if isinstance(sched, CooldownSchedule):
        return Segment("cooldown", total, start_lr, start_lr, 0, 0, sched.to, sched.shape)
    raise TypeError(f"unknown schedule {sched!r}")


def plan_segments(recipe: Recipe, init_lrs: dict[int, float] | None = None) -> list[Segment]:
    """Every stage's segment. `init_lrs` gives the start LR of stages whose `init:` is a
    checkpoint folder (read from its metadata); named checkpoints are resolved here."""
    segments: list[Segment] = []
    for i, st in enumerate(recipe.stages):
        total = recipe.stage_steps(st) * recipe.batch_tokens
        if st.init == "previous":
            start = segments[-1].end_lr if segments else recipe.optimizer.lr
        elif st.init == "base":
            start = recipe.optimizer.lr
        elif st.init_ref is not None:
            name, tag = st.init_ref
            src = segments[recipe.stage_index(name)]
            start = src.end_lr if tag == "final" else src.lr(src.decay_start)
        else:
            start = (init_lrs or {}).get(i, recipe.optimizer.lr)
        segments.append(build_segment(st.schedule, total, recipe.batch_tokens, start))
    return segments


def step_lr(segment: Segment, step: int, step_tokens: int) -> float:
    """LR of the stage's step `step` (0-based): the schedule at the tokens that step completes."""
    return segment.lr(min((step + 1) * step_tokens, segment.total))
