"""ReLoRA as a hook: a stage with `relora:` trains its decoder linears through low-rank adapters
that merge into the weights every `merge_every_tokens` (the mechanics: model/relora.py).

The hook's whole state is (stage, wrapped, merges); every action is decided at the start of a step
from the stage's token count, so an action is never half-done in a checkpoint:
- the adapters go on at `warm_start` tokens (at once without a warm start);
- a merge is due when a merge point lies at or before the stage's tokens and has not happened yet
  (`merges` counts them): a checkpoint written at a merge point holds the unmerged adapters, and
  the run that resumes from it merges first, as the uninterrupted run did;
- the wrapped weights' Adam moments (from a warm start or an earlier stage) are dropped when the
  adapters go on: kept, they would hold two thirds of the memory full rank needs; a later stage
  that trains those weights at full rank starts their moments fresh;
- at the stage's end the adapters merge a last time and the plain layers come back, so `@final`
  and the export hold a plain model.
A resume rebuilds the adapters before the checkpoint's tensors are loaded into them (`on_resume`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CptError
from ..model import relora
from ..model.relora_cfg import ReLoRACfg
from .hooks import Hook


class ReLoRA(Hook):
    name = "relora"

    def __init__(self):
        self.layers: list = []  # the LoRA layers while the adapters are on
        self.stage: int | None = None
        self.merges = 0
        self.cfg: ReLoRACfg | None = None
        self.saved_on = False  # a loaded state with the adapters on: rebuild them on resume

    def on_stage_begin(self, run, stage) -> None:
        if self.layers:  # `trainable:` was just applied again (a resume): it must not unfreeze W
            relora.freeze(self.layers)

    def on_step_begin(self, run, stage) -> None:
        cfg = stage.cfg.relora
        if cfg is None:
            return
        t = run.state.stage_step * run.recipe.stage_batch(stage.cfg)
        if not self.layers and t >= cfg.warm_start:
            self._wrap(run, stage.index, cfg)
            self._record(run, stage, "start", trainable=sum(p.numel() for p in relora.lora_params(self.layers)),
                         adapters=len(self.layers))
        elif self.layers and self.merges < sum(1 for m in cfg.merge_points(stage.segment.total) if m <= t):
            pruned = relora.merge(self.layers, run.optimizer, cfg.prune, _seed(run, stage.index), self.merges)
            self.merges += 1
            self._record(run, stage, "merge", merges=self.merges, pruned=pruned)

    def on_stage_end(self, run, stage) -> None:
        if not self.layers:
            return
        relora.unwrap(run.model, self.layers)
        ids = {id(p) for p in relora.lora_params(self.layers)}
        opt = run.optimizer
        opt.param_groups[:] = [g for g in opt.param_groups if not any(id(p) in ids for p in g["params"])]
        for p in [p for p in opt.state if id(p) in ids]:
            del opt.state[p]
        self._record(run, stage, "end", merges=self.merges + 1)
        self.layers, self.stage, self.merges, self.cfg = [], None, 0, None

    def on_resume(self, run) -> None:
        if not self.saved_on or self.layers:
            return
        stages = run.recipe.stages
        if not (0 <= self.stage < len(stages) and stages[self.stage].relora is not None
                and self.stage == run.state.stage_index):
            raise CptError(f"the checkpoint's ReLoRA state names stage {self.stage}, which is not the ReLoRA stage "
                           "it was saved in; resume from another checkpoint or start a new --out")
        self._wrap(run, self.stage, stages[self.stage].relora)

    def _wrap(self, run, index: int, cfg: ReLoRACfg) -> None:
        where = f"stages[{index}] ({run.recipe.stages[index].name}).relora"
        self.layers = relora.wrap(run.model, cfg, _seed(run, index), where)
        self.stage, self.cfg = index, cfg
        for layer in self.layers:  # frozen for the rest of the stage: their moments would hold the
            run.optimizer.state.pop(layer.get_base_layer().weight, None)  # memory ReLoRA is for
        run.optimizer.add_param_group({"params": relora.lora_params(self.layers),
                                       "weight_decay": run.recipe.optimizer.weight_decay})

    def _record(self, run, stage, event: str, **fields) -> None:
        run.metrics.write({"kind": "relora", "event": event, "stage": stage.name, "step": run.state.global_step,
                           "tokens": run.state.tokens, **fields})

    def state_dict(self) -> dict:
        if not self.layers:
            return {}
        return {"stage": self.stage, "merges": self.merges,
                "adapters": {"rank": self.cfg.rank, "alpha": self.cfg.alpha, "targets": self.cfg.targets}}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's state, checked (a resume turns a ValueError into one line)."""
        if not isinstance(state, dict):
            raise ValueError("hooks.relora is not a mapping")
        self.saved_on = bool(state)
        self.stage, self.merges = state.get("stage"), state.get("merges", 0)
        if self.saved_on and not (isinstance(self.stage, int) and isinstance(self.merges, int) and self.merges >= 0):
            raise ValueError(f"hooks.relora: stage {self.stage!r} and merges {self.merges!r} are not counts")


def _seed(run, index: int) -> int:
    return run.recipe.seed * 4099 + index


def load_plain(run, path: Path) -> None:
    """Load a checkpoint into the plain model as `init:` does, also one written inside a ReLoRA
    cycle (`<stage>@pre-cooldown`, `step-N`): the adapters are put on as they were, loaded, and
    merged, so the model starts from the weights that checkpoint's model computed with."""
    meta = run.checkpoints.read_meta(path)
    hooks = meta.get("hooks")
    saved = hooks.get(ReLoRA.name) if isinstance(hooks, dict) else None
    if not saved:
        run.checkpoints.load(path, run.model, run.optimizer, rng=False, dist=run.dist)
        return
    try:
        a = saved["adapters"]
        cfg = ReLoRACfg(rank=a["rank"], alpha=a["alpha"], targets=a["targets"], merge_every_tokens=1)
    except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        raise CptError(f"{path / 'meta.json'}: hooks.relora is not a ReLoRA state (adapters: rank, alpha, targets); "
                       "start from another checkpoint") from None
    flags = [p.requires_grad for p in run.model.parameters()]  # `trainable:` of the stage starting
    layers = relora.wrap(run.model, cfg, where=f"{path}: its relora adapters")
    try:
        run.checkpoints.load(path, run.model, run.optimizer, rng=False, dist=run.dist)
    finally:
        relora.unwrap(run.model, layers)
        for p, flag in zip(run.model.parameters(), flags):
            p.requires_grad_(flag)
