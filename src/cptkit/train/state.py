"""The run's counters: everything besides tensors that a resume needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

STATE_VERSION = 1


@dataclass
class TrainState:
    stage_index: int = 0  # the stage being (or about to be) trained
    entered: bool = False  # has the current stage's entry (init load, start eval) happened?
    stage_step: int = 0  # optimizer steps done in the current stage
    global_step: int = 0
    tokens: int = 0  # cumulative training tokens over the whole run
    cursors: dict[str, int] = field(default_factory=dict)  # samples consumed per stream, at stage start
    buffer_version: int = 0
    metrics_bytes: int = 0  # length of metrics.jsonl when this state was taken
    checkpoints_saved: int = 0

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, **asdict(self)}

    def load_state_dict(self, state: dict) -> None:
        """Raises ValueError naming the field when `state` is not a train state of this version."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"train state version {state.get('version') if isinstance(state, dict) else None} "
                             f"is not {STATE_VERSION}")
        for f in fields(self):
            value = state.get(f.name)
            ok = (isinstance(value, bool) if f.type == "bool" else
                  isinstance(value, dict) and all(isinstance(k, str) and _count(v) for k, v in value.items())
                  if f.type.startswith("dict") else _count(value))
            if not ok:
                raise ValueError(f"train_state.{f.name} is {value!r}, not a {f.type}")
        for f in fields(self):
            setattr(self, f.name, state[f.name])


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
