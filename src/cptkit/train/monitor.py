"""The stability gap (Guo et al. 2024), measured: at the start of a new stage the loss on old data
first rises, then recovers. `monitor:` evaluates the listed sources densely over the first part
of every stage; the summary (report/stability.py) turns the curve into the peak rise, when it
happened, the tokens until the loss is back at the stage's start, and the final change.

Each point is measured at the *start* of the step after the one that crossed it: the model is the
same, and a checkpoint written at the end of that step already lies before it in the log, so a
run resumed from that checkpoint writes the point exactly once, as an unbroken run does.
"""

from __future__ import annotations

from ..eval.validation import evaluate
from .hooks import Hook
from .stages import crossed
from .monitor_cfg import MonitorCfg


class StabilityMonitor(Hook):
    name = "monitor"

    def __init__(self, cfg: MonitorCfg):
        self.cfg = cfg

    def on_step_begin(self, run, stage) -> None:
        batch = run.recipe.stage_batch(stage.cfg)
        t = run.state.stage_step * batch  # tokens this stage has trained on so far
        every = self.cfg.every_tokens
        if not 0 < t <= self.cfg.first_fraction * stage.steps * batch or not crossed(t, batch, every):
            return
        names = self.cfg.sources or list(run.validation)
        losses = evaluate(run.model, {n: run.validation[n] for n in names}, run.recipe.micro_batch, run.device,
                          run.autocast, run.dist)
        s = run.state
        run.metrics.write({"kind": "monitor", "stage": stage.name, "step": s.global_step, "tokens": s.tokens,
                           "stage_tokens": t, "val_loss": losses})
