"""Depth up-scaling inside a plan (`init: {upscale: {drop: M}}`, model/upscale.py): the stage's
starting model gets its deeper layer stack, then fresh optimizer moments (the copies' moments
would be their twins', and the optimizer must hold the new parameters). The depth a stage trains
is a function of the recipe and the stage index, so a resume rebuilds it before loading tensors."""

from __future__ import annotations

from ..errors import CptError
from ..model.upscale import plain_layers, upscale_model
from .step import build_optimizer


def upscale_stage(run, index: int, log: bool = True) -> None:
    st = run.recipe.stages[index]
    where = f"stages[{index}].init.upscale"
    before = sum(p.numel() for p in run.model.parameters())
    n = len(plain_layers(run.model, where))
    layers = st.upscale.source_layers(n, where)
    upscale_model(run.model, layers, where)
    run.model.to(run.device)
    run.optimizer = build_optimizer(run.model, run.recipe.optimizer)
    if log:
        run.metrics.write({"kind": "upscale", "stage": st.name, "source_layers": layers, "layers_before": n,
                           "layers_after": len(layers), "parameters_before": before,
                           "parameters_after": sum(p.numel() for p in run.model.parameters())})


def restore_depth(run) -> None:
    """On a resume: the up-scalings of the stages before the one resumed (and of that one, when
    the checkpoint was saved inside it), applied to the freshly built model in order."""
    s = run.state
    for i, st in enumerate(run.recipe.stages[:s.stage_index + (1 if s.entered else 0)]):
        if st.upscale is not None:
            upscale_stage(run, i, log=False)


def check_upscales(recipe, model, world: int) -> None:
    """Before any work: the model's layers are a plain list, and the run is one process (up-scaling
    a sharded model would need its layers gathered and sharded again; not built yet)."""
    for i, st in enumerate(recipe.stages):
        if st.upscale is None:
            continue
        if world > 1:
            raise CptError(f"stages[{i}].init.upscale: depth up-scaling inside a plan runs in one process for now; "
                           "up-scale with `cpt upscale` and start the distributed run from that folder")
        plain_layers(model, f"stages[{i}].init.upscale")
