"""The forgetting guard (`guard:` on a stage, ladder.py): the cookbook's "monitor loss; stop early if
loss does not recover", run by the tool.

During a guarded stage the watched source's validation loss is measured every `every_tokens`
(default: 20 checks per stage; each at the start of the step after the crossing, as the monitor
does, so that a resumed run checks the same points). The stage fails when the loss rises more
than `max_rise` over the stage's start, when it is not back at or under the start at the first
check past `recover_within` of the stage, or when the task's score at the stage's end is under
`min_score`. A failure raises `GuardFailed`; the runner rolls the stage back (train/attempts.py).
"""

from __future__ import annotations

import math

from ..eval.validation import evaluate
from ..eval.tasks import main_score
from .hooks import Hook
from .stages import crossed


class GuardFailed(Exception):
    def __init__(self, stage: str, reason: str, stage_tokens: int):
        super().__init__(f"stage {stage}: {reason}")
        self.stage, self.reason, self.stage_tokens = stage, reason, stage_tokens


class ForgettingGuard(Hook):
    """Keyed on the stage as written (`guard.stage`): a preset that expands into several stages
    (strategy4's `X.base` then `X`, EEVE's seven) is measured from its first one's start and over
    all their tokens, and checked at the end of its last (which keeps the written name)."""

    name = "guard"

    def __init__(self):
        self.stage: str | None = None  # the written stage whose start `start` is
        self.start: float | None = None
        self.start_tokens = 0  # the run's tokens at that start
        self.recovery_checked = False

    def on_stage_begin(self, run, stage) -> None:
        g = stage.cfg.guard
        if g is not None and self.stage != g.stage:  # entered now, not resumed
            self.stage, self.start_tokens, self.recovery_checked = g.stage, run.state.tokens, False
            self.start = self._loss(run, g.source) if g.source is not None else None

    def on_step_begin(self, run, stage) -> None:
        g = stage.cfg.guard
        if g is None or g.source is None:
            return
        batch, total = run.recipe.stage_batch(stage.cfg), g.stage_tokens
        t = run.state.tokens - self.start_tokens  # tokens the written stage has trained on so far
        every = g.every_tokens or max(batch, total // 20)
        if t > 0 and crossed(t, batch, every):
            self._check(run, stage, self._loss(run, g.source), t, total)

    def on_stage_end(self, run, stage) -> None:
        g = stage.cfg.guard
        if g is None or stage.name != g.stage:  # a written stage's end is its last part's
            return
        total = g.stage_tokens
        if g.source is not None:  # the end eval's loss is the last check
            self._check(run, stage, run.last_eval["val_loss"][g.source], total, total)
        if g.task is not None:
            score = main_score(run.last_eval["tasks"][g.task])
            if not score >= g.min_score:  # NaN fails too
                raise GuardFailed(g.stage, f"task {g.task} scored {score:.4g} at the stage's end, under its "
                                  f"min_score {g.min_score:g}", total)

    def _loss(self, run, source: str) -> float:
        return evaluate(run.model, {source: run.validation[source]}, run.recipe.micro_batch, run.device, run.autocast,
                        run.dist)[source]

    def _check(self, run, stage, loss: float, t: int, total: int) -> None:
        g, s = stage.cfg.guard, run.state
        run.metrics.write({"kind": "guard", "stage": stage.name, "of": g.stage, "step": s.global_step, "tokens": s.tokens,
                           "stage_tokens": t, "source": g.source, "loss": loss, "start": self.start})
        rise = loss - self.start
        if not math.isfinite(loss):
            raise GuardFailed(g.stage, f"{g.source} loss is {loss} at {t:,} tokens", t)
        if g.max_rise is not None and rise > g.max_rise:
            raise GuardFailed(g.stage, f"{g.source} loss rose {rise:.3f} nats over the stage's start "
                              f"({self.start:.3f} -> {loss:.3f}) at {t:,} tokens, more than max_rise {g.max_rise:g}", t)
        if g.recover_within is not None and not self.recovery_checked and t >= g.recover_within * total:
            self.recovery_checked = True
            if loss > self.start:
                raise GuardFailed(g.stage, f"{g.source} loss was not back at the stage's start by "
                                  f"{g.recover_within:.0%} of the stage ({loss:.3f} > {self.start:.3f} at {t:,} tokens)", t)

    def state_dict(self) -> dict:
        return {"stage": self.stage, "start": self.start, "start_tokens": self.start_tokens,
                "recovery_checked": self.recovery_checked}

    def load_state_dict(self, state: dict) -> None:
        self.stage, self.start = state.get("stage"), state.get("start")
        self.start_tokens = int(state.get("start_tokens", 0))
        self.recovery_checked = bool(state.get("recovery_checked", False))
