"""Which parameters and rows a stage trains (`trainable:`); everything else is frozen.

Freezing a parameter is `requires_grad = False`: it gets no gradient, and AdamW skips a parameter
without a gradient entirely (no update, no weight decay, no moment update), so it stays
bit-identical. The optimizer keeps one param group per decay class over every parameter, so a
parameter unfrozen later needs no new optimizer.

`new_input_rows` / `new_output_rows` train only the rows of tokens added by a vocabulary
extension (`cpt vocab init` records them in the model folder's vocab_extension.json); see
rows.py for how. A matrix trained whole (`input_embeddings`, `all`) needs no row training.

With tied input/output embeddings (stories260K, SmolLM2) the two are one tensor: naming either
trains it, and `new_input_rows` / `new_output_rows` name the same rows (EEVE's input and output
stages collapse; `cpt vocab init --untie` gives a model where they differ).
"""

from __future__ import annotations

import torch

from ..errors import CptError
from .rows import TrainableRows, is_rows_param, unsupported

GROUPS = ("all", "input_embeddings", "output_embeddings", "layers", "norms", "new_input_rows", "new_output_rows")
ROW_GROUPS = {"new_input_rows": "input_embeddings", "new_output_rows": "output_embeddings"}


def _matrix(model: torch.nn.Module, group: str) -> torch.nn.Parameter | None:
    module = model.get_input_embeddings() if group == "input_embeddings" else model.get_output_embeddings()
    return None if module is None else module.weight


def group_params(model: torch.nn.Module, group: str) -> set[int]:
    """The ids of one group's parameters (tensors compare elementwise, so sets hold ids); `layers`
    is every parameter that is neither an embedding nor a normalisation weight (attention, MLP).
    Row groups hold no whole parameter."""
    if group in ROW_GROUPS:
        return set()
    every = {id(p) for n, p in model.named_parameters() if not is_rows_param(n)}
    inputs = {id(_matrix(model, "input_embeddings"))}
    out = _matrix(model, "output_embeddings")
    outputs = set() if out is None else {id(out)}
    norms = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(recurse=False)}
    groups = {"all": every, "input_embeddings": inputs, "output_embeddings": outputs, "norms": norms,
              "layers": every - inputs - outputs - norms}
    return groups[group]


def trainable_params(model: torch.nn.Module, groups: list[str], where: str = "trainable") -> set[int]:
    chosen: set[int] = set()
    for g in groups:
        params = group_params(model, g)
        if not params and g not in ROW_GROUPS:
            raise CptError(f"{where}: `{g}` names no parameter of this model ({type(model).__name__}); "
                           f"choose from {', '.join(GROUPS)}")
        chosen |= params
    return chosen


def set_trainable(model: torch.nn.Module, groups: list[str], where: str = "trainable") -> set[int]:
    """Freeze every whole parameter outside `groups`; return the ids of the trainable ones. Row
    parameters (rows.py) are left as they are."""
    chosen = trainable_params(model, groups, where)
    for name, p in model.named_parameters():
        if not is_rows_param(name):
            p.requires_grad_(id(p) in chosen)
    return chosen


def train_rows(model: torch.nn.Module, optimizer, groups: list[str], new_ids: list[int] | None,
               where: str = "trainable") -> list[TrainableRows]:
    """Start training the new rows the row groups name, for each matrix not trained whole."""
    whole = trainable_params(model, groups, where)
    matrices: list[torch.nn.Parameter] = []
    for g in groups:
        if g not in ROW_GROUPS:
            continue
        weight = _matrix(model, ROW_GROUPS[g])
        if not new_ids or weight is None:
            what = "the model has no vocabulary extension (vocab_extension.json from `cpt vocab init`)" \
                if not new_ids else "the model has no output embedding"
            raise CptError(f"{where}: `{g}` names nothing: {what}")
        users = [m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                 if m is not None and m.weight is weight]  # tied: both
        why = next(filter(None, map(unsupported, users)), None)
        if why:
            raise CptError(f"{where}: `{g}` cannot train rows of this model: {why}; train "
                           f"`{ROW_GROUPS[g]}` whole instead")
        if id(weight) not in whole and all(weight is not m for m in matrices):
            matrices.append(weight)  # tied: one matrix, one set of rows
    return [TrainableRows(model, w, new_ids, optimizer) for w in matrices]
