"""Merge stages in the recipe: `kind: merge` averages checkpoints instead of training.

```yaml
- name: soup
  kind: merge
  checkpoints: [wiki@final, base]   # base | <stage>@final | <stage>@pre-cooldown | step-N | a checkpoint folder
  weights: [0.5, 0.5]               # >= 0, summing to 1; default: equal (linear)
  method: linear                    # or ema: later checkpoints weigh more, by ema_beta
```

Two presets fill `checkpoints` and `weights` (`strategy:` as on training stages):
- `wsm` (Tian et al. 2025, "merge instead of decay"): the last `last` periodic checkpoints
  (`checkpoint.every_tokens`) of stage `of` before its decay starts, ending with its
  `@pre-cooldown` (its `@final` when it never decays), averaged equally;
- `soup-with-base`: `alpha` x `<of>@final` + (1 - alpha) x the point stage `of` started from
  (Wortsman et al. 2022's interpolation back toward the start, trading adaptation for forgetting).

A merge stage trains nothing: it has no tokens, mix or schedule; it passes on the LR of the stage
before it, and the model it produces starts with fresh optimizer moments. Its checkpoint
`<name>@final` is what later stages `init:` from, and the report evaluates it like any stage.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from .config import Strict

if TYPE_CHECKING:
    from .recipe import Recipe, StageCfg

STEP = re.compile(r"^step-(\d+)$")  # the periodic checkpoints' names (train/stages.py: step-%07d)
TRAIN_ONLY = ("tokens", "mix", "schedule", "buffer_add", "relora", "trainable", "batch_tokens", "new", "init",
              "optimizer_state", "lr_scaling", "rope", "upscale",
              "document_masking", "micro_batch")


class Wsm(Strict):
    name: Literal["wsm"]
    of: str  # the stage whose stable-phase checkpoints are averaged
    last: int = Field(gt=0, le=1000)


class SoupWithBase(Strict):
    name: Literal["soup-with-base"]
    of: str  # the stage whose end is interpolated toward its start
    alpha: float = Field(ge=0, le=1)  # 1: the stage's end; 0: its starting point


def ema_weights(n: int, beta: float) -> list[float]:
    """Weights of m_1 = c_1, m_k = beta m_{k-1} + (1 - beta) c_k over checkpoints in order: they sum to 1."""
    return [beta ** (n - 1)] + [(1 - beta) * beta ** (n - 1 - k) for k in range(1, n)]


def merge_weights(st: StageCfg) -> list[float]:
    n = len(st.checkpoints)
    if st.method == "ema":
        return ema_weights(n, st.ema_beta)
    return list(st.weights) if st.weights is not None else [1.0 / n] * n


def check_merge(r: Recipe, i: int, where: str, check_point, expanded: bool) -> list[str]:
    """A merge stage: no training fields (as written), known checkpoints, valid weights.
    `check_point(ref, where)` checks one checkpoint name as `init:` would."""
    st, problems = r.stages[i], []
    p = problems.append
    for key in () if expanded else TRAIN_ONLY:
        if key in st.model_fields_set:
            p(f"{where}.{key}: a merge stage trains nothing; remove `{key}`")
    if st.strategy is not None:
        if "method" in st.model_fields_set or "ema_beta" in st.model_fields_set:
            p(f"{where}.method: `{st.strategy.name}` averages its checkpoints equally (linear); remove `method`")
        if not isinstance(st.strategy, (Wsm, SoupWithBase)):
            p(f"{where}.strategy: `{st.strategy.name}` is a training preset; a merge stage takes wsm or soup-with-base")
        elif st.checkpoints is not None or st.weights is not None:
            p(f"{where}.strategy: `{st.strategy.name}` chooses the checkpoints and weights; remove them")
        elif st.strategy.of not in [s.name for s in r.stages[:i]]:
            p(f"{where}.strategy.of: `{st.strategy.of}` names no earlier stage")
        return problems
    if not st.checkpoints:
        return problems + [f"{where}.checkpoints: a merge stage needs the checkpoints it averages "
                           "(base, <stage>@final, <stage>@pre-cooldown, step-N or a checkpoint folder)"]
    for k, ref in enumerate(st.checkpoints):
        problems += check_point(ref, f"{where}.checkpoints[{k}]")
    problems += check_weights(st, where)
    return problems


def check_weights(st: StageCfg, where: str) -> list[str]:
    if st.weights is None:
        return []
    if st.method == "ema":
        return [f"{where}.weights: method ema sets the weights from ema_beta; remove `weights` or use method linear"]
    if len(st.weights) != len(st.checkpoints):
        return [f"{where}.weights: {len(st.weights)} weights for {len(st.checkpoints)} checkpoints; give one each"]
    bad = [w for w in st.weights if not math.isfinite(w) or w < 0]
    if bad:
        return [f"{where}.weights: {bad[0]} is negative; merge weights are shares in [0, 1]"]
    if abs(sum(st.weights) - 1) > 1e-6:
        return [f"{where}.weights: they sum to {sum(st.weights):g}; they must sum to 1"]
    return []


def locate_step(r: Recipe, i: int, ref: str) -> tuple[int, int] | None:
    """(stage, step in it) of the periodic checkpoint `step-N` written before stage i, or None."""
    n, tokens, every = int(STEP.match(ref).group(1)), 0, r.checkpoint.every_tokens
    for j, st in enumerate(r.stages[:i]):
        steps, batch = r.stage_steps(st), r.stage_batch(st)
        if n <= steps:  # step n of the run is step n of this stage
            after = tokens + n * batch
            crossed = every is not None and after // every > (after - batch) // every
            return (j, n) if 0 < n < steps and crossed else None  # the last step's save is `@final`
        n, tokens = n - steps, tokens + steps * batch
    return None


def step_problem(r: Recipe, i: int, ref: str, segments=None) -> str | None:
    """Why `step-N` is not a checkpoint stage i can merge, if it is not. With `segments`, also
    the step where a decay starts, whose save is `<stage>@pre-cooldown` instead."""
    if r.checkpoint.every_tokens is None:
        return f"`{ref}`: the run writes no periodic checkpoints; set checkpoint.every_tokens"
    at = locate_step(r, i, ref)
    if at is None:
        return (f"`{ref}` is not a periodic checkpoint written before this stage (every "
                f"{r.checkpoint.every_tokens:,} tokens)")
    j, k = at
    if segments is not None and segments[j].decay_start == k * r.stage_batch(r.stages[j]):
        return f"`{ref}` is where stage {r.stages[j].name} starts its decay; name it {r.stages[j].name}@pre-cooldown"
    return None


def expand_merge(r: Recipe, st: StageCfg, segments, written: Recipe, where: str) -> tuple[StageCfg, str | None]:
    """The stage with its preset's checkpoints and weights filled in (`step-N` names written as
    the saves are, `step-%07d`), an empty mix, and the problem, if any. `r` holds the stages
    expanded so far and `segments` their LR segments; `written` is the recipe as written (a
    preset's `of` names a stage there; its start point is that stage's `init:`)."""
    s, names = st.strategy, [x.name for x in r.stages]
    update: dict = {"mix": {}, "strategy": None}
    problem = None
    if isinstance(s, SoupWithBase):
        j = [x.name for x in written.stages].index(s.of)
        update |= {"checkpoints": [f"{s.of}@final", start_point(written, j)], "weights": [s.alpha, 1 - s.alpha]}
    elif isinstance(s, Wsm):
        j = names.index(s.of)
        saves = stable_saves(r, j, segments[j])
        if len(saves) < s.last:
            problem = (f"{where}.strategy.last: stage `{s.of}` writes {len(saves)} checkpoint(s) before its decay "
                       f"({', '.join(saves) or 'none'}); lower `last` or save more often (checkpoint.every_tokens)")
        update |= {"checkpoints": saves[-s.last:], "weights": None}
    else:
        update["checkpoints"] = [f"step-{int(m.group(1)):07d}" if (m := STEP.match(c)) else c for c in st.checkpoints]
    return st.model_copy(update=update), problem


def start_point(r: Recipe, j: int) -> str:
    """The checkpoint stage j started from, as a merge names it."""
    st = r.stages[j]
    if st.init == "previous":
        return f"{r.stages[j - 1].name}@final" if j > 0 else "base"
    return st.init


def stable_saves(r: Recipe, j: int, segment) -> list[str]:
    """The periodic checkpoints of stage j before its decay starts, then its `@pre-cooldown`
    (all of its periodic ones and its `@final` if it never decays)."""
    first = sum(r.stage_steps(st) for st in r.stages[:j])
    end = segment.decay_start
    saves = [f"step-{first + k:07d}" for k in range(1, r.stage_steps(r.stages[j]))
             if end is None or k * r.stage_batch(r.stages[j]) < end]
    saves = [s for s in saves if locate_step(r, j + 1, s) is not None]
    return saves + [f"{r.stages[j].name}@{'pre-cooldown' if end is not None else 'final'}"]
