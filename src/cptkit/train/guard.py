"""The non-finite guard: a step with a NaN or Inf loss or gradient norm makes no update
(`train_step` skips it); this hook warns, counts such steps in a row, and stops the run after
`nonfinite.max_bad_steps` of them, before a diverged run burns the rest of its stage.
"""

from __future__ import annotations


from ..errors import CptError
from ..notify import warn
from .guard_cfg import NonFiniteCfg
from .hooks import Hook


class NonFiniteGuard(Hook):
    name = "nonfinite"

    def __init__(self, cfg: NonFiniteCfg):
        self.max_bad = cfg.max_bad_steps
        self.in_a_row = 0
        self.skipped = 0  # over the whole run

    def on_step_end(self, run, stage, result) -> None:
        if not result.skipped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.skipped += 1
        s = run.state
        lr = stage.lr(s.stage_step - 1, run.recipe.stage_batch(stage.cfg))
        if run.dist.is_main:
            warn(f"step {s.global_step} (stage {stage.name}, lr {lr:.3g}): loss {result.loss}, "
                 f"gradient norm {result.grad_norm}; step skipped, no update ({self.in_a_row} in a row)")
        if self.in_a_row >= self.max_bad:
            run.checkpoints.wait()  # a save still being written held finite weights: name it first
            last = run.checkpoints.last_good
            where = f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written yet"
            raise CptError(f"training diverged: {self.in_a_row} steps in a row with a non-finite loss or gradient, "
                           f"the last at step {s.global_step} (stage {stage.name}, lr {lr:.3g}); {where}; lower "
                           "the LR (or raise nonfinite.max_bad_steps) and start again")

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row = int(state.get("in_a_row", 0))
        self.skipped = int(state.get("skipped", 0))
