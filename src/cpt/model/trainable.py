"""Which parameters a stage trains (`trainable:`), by group; everything else is frozen.

Freezing is `requires_grad = False`: a frozen parameter gets no gradient, and AdamW skips a
parameter without a gradient entirely (no update, no weight decay, no moment update), so it stays
bit-identical. The optimizer keeps one param group per decay class over every parameter, so a
parameter unfrozen later needs no new optimizer.

With tied input/output embeddings (stories260K, SmolLM2) the two groups are one tensor: naming
either trains it.
"""

from __future__ import annotations

import torch

from ..errors import CptError

GROUPS = ("all", "input_embeddings", "output_embeddings", "layers", "norms")


def group_params(model: torch.nn.Module, group: str) -> set[int]:
    """The ids of one group's parameters (tensors compare elementwise, so sets hold ids); `layers`
    is every parameter that is neither an embedding nor a normalisation weight (attention, MLP)."""
    every = {id(p) for p in model.parameters()}
    inputs = {id(model.get_input_embeddings().weight)}
    out = model.get_output_embeddings()
    outputs = set() if out is None else {id(out.weight)}
    norms = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(recurse=False)}
    groups = {"all": every, "input_embeddings": inputs, "output_embeddings": outputs, "norms": norms,
              "layers": every - inputs - outputs - norms}
    return groups[group]


def trainable_params(model: torch.nn.Module, groups: list[str], where: str = "trainable") -> set[int]:
    chosen: set[int] = set()
    for g in groups:
        params = group_params(model, g)
        if not params:
            raise CptError(f"{where}: `{g}` names no parameter of this model ({type(model).__name__}); "
                           f"choose from {', '.join(GROUPS)}")
        chosen |= params
    return chosen


def set_trainable(model: torch.nn.Module, groups: list[str], where: str = "trainable") -> set[int]:
    """Freeze every parameter outside `groups`; return the ids of the trainable ones."""
    chosen = trainable_params(model, groups, where)
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return chosen
