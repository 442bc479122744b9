"""Hooks: concerns with their own state (guards, monitors, loggers, ReLoRA), composed in `build`.

The loop and the stage edges call each event on every hook in order:
- `on_stage_begin(run, stage)`: the stage is entered (or re-entered after a resume), its
  trainable set applied;
- `on_step_begin(run, stage)`: before the step's batch goes through the model;
- `on_step_end(run, stage, result)`: after the step, its record and its checkpoint, if any;
- `on_stage_end(run, stage)`: before the stage's `@final` checkpoint;
- `on_resume(run)`: the hooks' state is loaded, the checkpoint's tensors not yet (a hook that
  changes the model's structure rebuilds it here, so that the tensors have a place to go).
A checkpoint saves `run.hooks.state_dict()` (each hook's state by name) and a resume loads it back.
"""

from __future__ import annotations


class Hook:
    name = "hook"

    def on_stage_begin(self, run, stage) -> None:
        pass

    def on_step_begin(self, run, stage) -> None:
        pass

    def on_step_end(self, run, stage, result) -> None:
        pass

    def on_stage_end(self, run, stage) -> None:
        pass

    def on_resume(self, run) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Hooks:
    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)

    def on_stage_begin(self, run, stage) -> None:
        for h in self.hooks:
            h.on_stage_begin(run, stage)

    def on_step_begin(self, run, stage) -> None:
        for h in self.hooks:
            h.on_step_begin(run, stage)

    def on_step_end(self, run, stage, result) -> None:
        for h in self.hooks:
            h.on_step_end(run, stage, result)

    def on_stage_end(self, run, stage) -> None:
        for h in self.hooks:
            h.on_stage_end(run, stage)

    def on_resume(self, run) -> None:
        for h in self.hooks:
            h.on_resume(run)

    def state_dict(self) -> dict:
        return {h.name: h.state_dict() for h in self.hooks}

    def load_state_dict(self, state: dict) -> None:
        for h in self.hooks:
            h.load_state_dict(state.get(h.name, {}))
