"""The state a model is measured in, and the state it is given back in."""

from __future__ import annotations

import contextlib

import torch

from ..distributed.fsdp import reshard


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """Eval mode without gradients inside; after it, the model's own mode back and, under FSDP2,
    every parameter sharded again: a forward without backward leaves the root (and the last
    block) gathered, and `named_parameters()` would then hand out the gathered copies."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        reshard(model)
