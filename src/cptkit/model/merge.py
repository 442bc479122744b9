"""The weighted average of several weight sets loaded one after another into one model.

Each rank averages only the shards it holds (FSDP2 parameters are DTensors; their local parts are
what is summed), so a merge of sharded checkpoints never gathers the whole model on one process:
peak memory is the model's shards plus one float64 accumulator of the same size.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.distributed.tensor import DTensor


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if isinstance(p, DTensor) else p


@torch.no_grad()
def average_into(model: torch.nn.Module, load: Callable[[int], None], weights: list[float]) -> None:
    """`load(k)` puts the k-th weight set into `model`; afterwards the model holds
    sum_k weights[k] x set_k, summed in float64 and rounded once to each parameter's dtype.
    A tied matrix is one parameter, averaged once."""
    params = list(model.parameters())
    total = [torch.zeros_like(_local(p), dtype=torch.float64) for p in params]
    for k, w in enumerate(weights):
        load(k)
        for acc, p in zip(total, params):
            acc.add_(_local(p).to(torch.float64), alpha=w)
    for acc, p in zip(total, params):
        _local(p).copy_(acc)
