"""Hooks: per-step concerns with their own state (guards, monitors, loggers), composed in `build`.

The loop calls `run.hooks.on_step_end(run, stage, result)` after each step; a checkpoint saves
`run.hooks.state_dict()` (each hook's state by name) and a resume loads it back.
"""

from __future__ import annotations


class Hook:
    name = "hook"

    def on_step_end(self, run, stage, result) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Hooks:
    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)

    def on_step_end(self, run, stage, result) -> None:
        for h in self.hooks:
            h.on_step_end(run, stage, result)

    def state_dict(self) -> dict:
        return {h.name: h.state_dict() for h in self.hooks}

    def load_state_dict(self, state: dict) -> None:
        for h in self.hooks:
            h.load_state_dict(state.get(h.name, {}))
