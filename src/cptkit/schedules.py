"""Learning-rate schedules as pure functions of the tokens trained.

A schedule config (the `schedule:` of a stage) becomes a `Curve`: phases laid end to end, each
going from one LR to another with a shape. A stage's `Segment` is a window of a curve: usually the
whole of it, but stages with `schedule: {kind: continue}` share the curve of the stage before them
(a decay laid over several stages whose mixes differ, like the cookbook's Strategy 4). The plan's LR
is one function of tokens composed of these segments.

A schedule that names no peak `lr` continues from the LR at which its stage starts: the end of the
previous stage, or the LR stored with the checkpoint named by `init:` — so an infinite schedule
never rewarms by accident. An optimizer step runs at the LR of the token count it completes (as
Megatron does): the first warmup step is not wasted at LR 0, and the last decay step reaches the
final LR exactly. Phase boundaries are rounded to whole steps so that "right before the decay" is a
step boundary, where the `@pre-cooldown` checkpoint is taken.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import Field

from .config import MAX_LR, MAX_TOKENS, Strict

if TYPE_CHECKING:
    from .recipe import Recipe

# ---------------------------------------------------------------------------------------------
# configs (the recipe's `schedule:`)

Shape = Literal["linear", "cosine", "1-sqrt", "exponential"]
Fraction = Annotated[float, Field(ge=0, lt=1)]
PositiveLR = Annotated[float, Field(gt=0, le=MAX_LR)]
FloorLR = Annotated[float, Field(ge=0, le=MAX_LR)]  # a final LR (min_lr, to): 0 is allowed


class _Warmup(Strict):
    """A linear warmup over `warmup` (a fraction of the stage's tokens) or `warmup_steps`."""

    warmup: Fraction = 0.0
    warmup_steps: int | None = Field(None, ge=0, le=MAX_TOKENS)

    def warmup_tokens(self, total: int, step: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps * step, total)
        return round_to_step(self.warmup * total, step)


class ConstantSchedule(_Warmup):
    """Warm up (from 0) to `lr`, then hold. Without `lr` the stage holds the LR where it starts."""

    kind: Literal["constant"]
    lr: PositiveLR | None = None


class CosineSchedule(_Warmup):
    """Warm up, then cosine from the peak to `min_lr` (default 0.1 x peak, Ibrahim et al. 2024)."""

    kind: Literal["cosine"]
    lr: PositiveLR | None = None
    min_lr: FloorLR | None = None


class LinearSchedule(_Warmup):
    """Warm up, then a straight line from the peak to `min_lr` at the stage's end."""

    kind: Literal["linear"]
    lr: PositiveLR | None = None
    min_lr: FloorLR = 0.0


class InverseSqrtSchedule(_Warmup):
    """Megatron's inverse-square-root: warm up over W tokens, then peak * sqrt(W / t), floored at
    `min_lr`. It needs a warmup: W sets the decay's time scale."""

    kind: Literal["inverse-sqrt"]
    lr: PositiveLR | None = None
    min_lr: FloorLR = 0.0


class WSDSchedule(_Warmup):
    """Warmup, hold, then decay over the last `decay` fraction of the stage to `min_lr`."""

    kind: Literal["wsd"]
    lr: PositiveLR | None = None
    decay: Annotated[float, Field(gt=0, le=1)] = 0.2  # Hagele et al. 2024: ~20% is the plateau
    shape: Shape = "1-sqrt"
    min_lr: FloorLR = 0.0


class CooldownSchedule(Strict):
    """From the LR where the stage starts down to `to` over the whole stage."""

    kind: Literal["cooldown"]
    shape: Shape = "1-sqrt"
    to: FloorLR = 0.0


class RewarmSchedule(_Warmup):
    """Rewarm: a straight line from the LR where the stage starts (not from 0) up to the new peak
    `lr`, then re-decay with `shape` to `min_lr` (default 0.1 x peak). Ibrahim et al. 2024 warm up
    over 1% of the stage and find the length matters little; the peak trades adaptation against
    forgetting."""

    kind: Literal["rewarm"]
    lr: PositiveLR
    warmup: Fraction = 0.01
    shape: Shape = "cosine"
    min_lr: FloorLR | None = None


class InfiniteSchedule(_Warmup):
    """Ibrahim et al. 2024's infinite schedule: warm up to `lr`, cool down (`cosine` or `inv-sqrt`
    with `timescale`) to `constant_lr` over the `cooldown` fraction, hold there, and, if `anneal` > 0,
    anneal exponentially to `min_lr` over the stage's last `anneal` fraction. Later stages hold at
    `constant_lr` (`kind: constant` without `lr`) and the last one anneals (`cooldown`, `exponential`)."""

    kind: Literal["infinite"]
    lr: PositiveLR | None = None
    warmup: Fraction = 0.01
    cooldown: Annotated[float, Field(ge=0, le=1)] = 0.15
    cooldown_shape: Literal["cosine", "inv-sqrt"] = "cosine"
    timescale: float = Field(10.0, gt=0, le=1e6)  # alpha of the inv-sqrt cooldown (10 in public code)
    constant_lr: PositiveLR
    anneal: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_lr: FloorLR | None = None


class ContinueSchedule(Strict):
    """This stage continues the previous stage's schedule: the two (or more) stages share one curve
    laid over their summed tokens, so a decay can run on across a change of mix."""

    kind: Literal["continue"]


Schedule = Annotated[
    Union[ConstantSchedule, CosineSchedule, LinearSchedule, InverseSqrtSchedule, WSDSchedule, CooldownSchedule,
          RewarmSchedule, InfiniteSchedule, ContinueSchedule],
    Field(discriminator="kind"),
]
KINDS = ("constant", "cosine", "linear", "inverse-sqrt", "wsd", "cooldown", "rewarm", "infinite", "continue")


def decays(sched) -> bool:
    """Does the schedule end in a decay, i.e. does its stage have a pre-cooldown checkpoint?"""
    if isinstance(sched, ConstantSchedule):
        return False
    if isinstance(sched, InfiniteSchedule):
        return sched.anneal > 0
    return True


# ---------------------------------------------------------------------------------------------
# curves


def decay_factor(shape: str, x: float, timescale: float = 10.0) -> float:
    """Remaining fraction of the (from - to) gap after a fraction x in [0, 1] of the way, for the
    additive shapes; `exponential` is geometric and handled by `Phase.lr`."""
    x = min(max(x, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - x
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(x)
    if shape == "inv-sqrt":  # Ibrahim et al.: h(x)/h(1) is the share of the way done, h = 1/sqrt(1+ax) - 1
        def h(u: float) -> float:
            return 1.0 / math.sqrt(1.0 + timescale * u) - 1.0
        return 1.0 - h(x) / h(1.0)
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class Phase:
    """From `lr_from` at token `start` to `lr_to` at `end`. `name`: warmup, hold or decay.
    Shapes: the additive ones of `decay_factor`; `exponential`, from * (to/from)^x; `rsqrt`,
    Megatron's inverse square root max(to, from * sqrt(start / t)) (it may end above `lr_to`)."""

    name: str
    start: int
    end: int
    lr_from: float
    lr_to: float
    shape: str = "linear"
    timescale: float = 10.0

    def lr(self, t: float) -> float:
        if self.end == self.start:
            return self.lr_to
        x = min(max((t - self.start) / (self.end - self.start), 0.0), 1.0)
        if self.shape == "exponential":
            return self.lr_from * (self.lr_to / self.lr_from) ** x
        if self.shape == "rsqrt":
            return max(self.lr_to, self.lr_from * math.sqrt(self.start / max(t, self.start)))
        return self.lr_to + (self.lr_from - self.lr_to) * decay_factor(self.shape, x, self.timescale)


@dataclass(frozen=True)
class Curve:
    kind: str
    span: int  # tokens
    phases: tuple[Phase, ...]

    def _at(self, t: float) -> Phase:
        """The phase that holds t; a boundary belongs to the phase that ends there."""
        live = [p for p in self.phases if p.end > p.start] or list(self.phases)
        return next((p for p in live if t <= p.end), live[-1])

    def lr(self, t: float) -> float:
        return self._at(t).lr(t)

    @property
    def peak(self) -> float:
        return max(max(p.lr_from, p.lr_to) for p in self.phases)

    @property
    def decay_start(self) -> int | None:
        """Where the final decay begins (the pre-cooldown point); None if the curve ends holding. A
        decay too short to span a step still marks the point (at the end)."""
        k = len(self.phases)
        while k > 0 and self.phases[k - 1].name == "decay":
            k -= 1
        return None if k == len(self.phases) else self.phases[k].start

    def phase(self, t: float) -> str:
        """Where a checkpoint at `t` tokens stands: warmup, hold, decay or converged."""
        p = self._at(t)
        if p.name == "decay" and t >= self.span:
            return "converged"
        return "hold" if p.name == "warmup" and t >= p.end else p.name


def round_to_step(tokens: float, step: int) -> int:
    return int(round(tokens / step)) * step


def build_curve(sched, span: int, step: int, start_lr: float) -> Curve:
    """The curve of a schedule over `span` tokens, given the LR at which it starts."""
    kind = sched.kind
    peak = getattr(sched, "lr", None) or start_lr
    if isinstance(sched, CooldownSchedule):
        return Curve(kind, span, (Phase("decay", 0, span, start_lr, sched.to, sched.shape),))
    w = sched.warmup_tokens(span, step)
    rise = Phase("warmup", 0, w, start_lr if isinstance(sched, RewarmSchedule) else 0.0, peak)
    if isinstance(sched, ConstantSchedule):
        return Curve(kind, span, (rise, Phase("hold", w, span, peak, peak)))
    if isinstance(sched, (CosineSchedule, RewarmSchedule)):
        floor = 0.1 * peak if sched.min_lr is None else sched.min_lr
        shape = getattr(sched, "shape", "cosine")
        return Curve(kind, span, (rise, Phase("decay", w, span, peak, floor, shape)))
    if isinstance(sched, LinearSchedule):
        return Curve(kind, span, (rise, Phase("decay", w, span, peak, sched.min_lr)))
    if isinstance(sched, InverseSqrtSchedule):
        return Curve(kind, span, (rise, Phase("decay", w, span, peak, sched.min_lr, "rsqrt")))
    if isinstance(sched, WSDSchedule):
        d = max(span - round_to_step(sched.decay * span, step), w)
        return Curve(kind, span, (rise, Phase("hold", w, d, peak, peak),
                                  Phase("decay", d, span, peak, sched.min_lr, sched.shape)))
    if isinstance(sched, InfiniteSchedule):
        c = min(w + round_to_step(sched.cooldown * span, step), span)
        a = max(span - round_to_step(sched.anneal * span, step), c)
        const = sched.constant_lr
        phases = (rise, Phase("decay", w, c, peak, const, sched.cooldown_shape, sched.timescale),
                  Phase("hold", c, a, const, const))
        if sched.anneal > 0:  # without an anneal the stage ends holding at eta_const
            phases += (Phase("decay", a, span, const, sched.min_lr, "exponential"),)
        return Curve(kind, span, phases)
    raise TypeError(f"no curve for schedule {sched!r}")


# ---------------------------------------------------------------------------------------------
# segments: each stage's window of a curve


@dataclass(frozen=True)
class Segment:
    """The LR of one stage: tokens [offset, offset + total) of `curve`, plus the LR it inherits."""

    curve: Curve
    offset: int
    total: int  # tokens of the stage (whole steps)
    start_lr: float  # the LR before the stage's first step (what a continuing schedule holds)
    scale: float = 1.0  # the lr_scaling factor applied to the inherited LR (1: none)
    # ReLoRA's jagged LR: after each of these stage tokens the curve is multiplied by a linear
    # re-warmup from 0 over `rewarm` tokens (Lialin et al. 2024)
    restarts: tuple[int, ...] = ()
    rewarm: int = 0

    @property
    def kind(self) -> str:
        return self.curve.kind if self.offset == 0 else f"{self.curve.kind} (continued)"

    def lr(self, t: float) -> float:
        return self.curve.lr(self.offset + t) * self.rewarm_factor(t)

    def base_lr(self, t: float) -> float:
        """The schedule's LR without ReLoRA's re-warmup: what a checkpoint records and what a
        stage starting from it inherits (the jag belongs to the ReLoRA stage, not to its points)."""
        return self.curve.lr(self.offset + t)

    def rewarm_factor(self, t: float) -> float:
        """The jagged factor at stage tokens t: (t - r) / rewarm after the last restart r < t."""
        last = max((r for r in self.restarts if r < t), default=None)
        if last is None or self.rewarm == 0:
            return 1.0
        return min(1.0, (t - last) / self.rewarm)

    @property
    def end_lr(self) -> float:
        return self.lr(self.total)

    @property
    def decay_start(self) -> int | None:
        """Stage tokens where the final decay begins, if it begins inside this stage."""
        d = self.curve.decay_start
        inside = d is not None and (self.offset < d or d == self.offset == 0) and d <= self.offset + self.total
        return d - self.offset if inside else None  # a boundary belongs to the window that ends there

    def phase(self, t: float) -> str:
        return self.curve.phase(self.offset + t)

    def describe(self) -> str:
        """The phases in words: `warmup 0 -> 0.001 over 2,560 tokens, hold 0.001, ...`."""
        parts = []
        for p in self.curve.phases:
            lo, hi = max(p.start, self.offset), min(p.end, self.offset + self.total)
            if hi <= lo:
                continue
            n = f"{hi - lo:,} tokens"
            if p.name == "hold":
                parts.append(f"hold {p.lr_to:.4g} for {n}")
            else:
                shape = "" if p.name == "warmup" else f" {p.shape}"
                parts.append(f"{p.name}{shape} {self.curve.lr(lo):.4g} -> {self.curve.lr(hi):.4g} over {n}")
        if self.restarts and self.rewarm:
            at = ", ".join(f"{r:,}" for r in self.restarts[:4]) + (", ..." if len(self.restarts) > 4 else "")
            parts.append(f"jagged (ReLoRA): x a linear re-warmup over {self.rewarm:,} tokens after {at} "
                         f"({len(self.restarts)} restarts)")
        return ", ".join(parts)


def step_lr(segment: Segment, step: int, step_tokens: int) -> float:
    """LR of the stage's step `step` (0-based): the schedule at the tokens that step completes."""
    return segment.lr(min((step + 1) * step_tokens, segment.total))


def lr_scale(rule: str, k: float) -> float:
    """The LR factor for a batch that changed by a factor k: sqrt(k), k, or 1."""
    return {"sqrt": math.sqrt(k), "linear": k, "none": 1.0}[rule]


def checkpoint_point(path) -> tuple[float | None, int | None]:
    """(LR, batch tokens) stored in a checkpoint folder's meta.json (None where not recorded)."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None, None
    if not isinstance(meta, dict):  # the recipe's load refuses such a folder (recipe._check_init)
        return None, None
    lr, batch = meta.get("lr"), meta.get("batch_tokens")
    lr = lr if isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) else None
    return lr, (batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else None)


def plan_segments(recipe: Recipe) -> list[Segment]:
    """Every stage's segment. A stage whose `init:` is a checkpoint folder starts at the LR stored
    with it; named checkpoints of this run are resolved here. When a stage's batch differs from the
    one its starting point was trained with, the LR it inherits is scaled by its `lr_scaling` rule
    (an explicit `lr:` is used as written)."""
    segments: list[Segment] = []
    stages = recipe.stages
    for i, st in enumerate(stages):
        step = recipe.stage_batch(st)
        total = recipe.stage_steps(st) * step
        jag = _jagged(st, total, step)
        if isinstance(st.schedule, ContinueSchedule):
            prev = segments[-1]
            segments.append(Segment(prev.curve, prev.offset + prev.total, total, prev.curve.lr(prev.offset + prev.total),
                                    prev.scale, **jag))
            continue
        start, from_batch = _inherited(recipe, i, segments)
        scale = lr_scale(st.lr_scaling, step / from_batch) if from_batch else 1.0
        span = total
        for later in stages[i + 1:]:  # stages that continue this one share its curve
            if not isinstance(later.schedule, ContinueSchedule):
                break
            span += recipe.stage_steps(later) * recipe.stage_batch(later)
        curve = build_curve(st.schedule, span, step, start * scale)
        segments.append(Segment(curve, 0, total, start * scale, scale, **jag))
    return segments


def _jagged(st, total: int, step: int) -> dict:
    if st.relora is None or not st.relora.rewarm_tokens(step):
        return {}
    return {"restarts": tuple(st.relora.restarts(total)), "rewarm": st.relora.rewarm_tokens(step)}


def _inherited(recipe: Recipe, i: int, segments: list[Segment]) -> tuple[float, int | None]:
    """(LR, batch tokens) of the point stage i starts from."""
    st = recipe.stages[i]
    if st.init == "base" or (st.init == "previous" and i == 0):
        return recipe.optimizer.lr, None
    if st.init == "previous":
        return segments[-1].end_lr, recipe.stage_batch(recipe.stages[i - 1])
    if st.init_ref is not None:
        name, tag = st.init_ref
        j = recipe.stage_index(name)
        src = segments[j]
        # a stage whose decay began in an earlier stage has no pre-cooldown point (check_segments says so)
        lr = src.end_lr if tag == "final" else src.base_lr(src.decay_start or 0)
        return lr, recipe.stage_batch(recipe.stages[j])
    lr, batch = checkpoint_point(st.init_path)
    return (recipe.optimizer.lr if lr is None else lr), batch
