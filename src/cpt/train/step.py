"""One optimizer step: gradient accumulation over micro-batches, clipping, AdamW."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

from ..distributed.env import Dist


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms and biases are not decayed (GPT-2/nanoGPT
    practice), since shrinking a gain toward 0 is not regularisation."""
    params = list(model.parameters())  # frozen ones too: without a gradient, AdamW leaves them alone
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             foreach=True)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 on CPU (CPU bf16 is slower and changes the numbers)."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


@dataclass
class StepResult:
    loss: float  # mean over the step's micro-batches
    grad_norm: float
    skipped: bool = False  # loss or gradient norm not finite: no update was made (train/guard.py)


def train_step(model, optimizer, micro_batches: torch.Tensor, lr: float, grad_clip: float | None,
               autocast=contextlib.nullcontext, dist: Dist = Dist()) -> StepResult:
    """`micro_batches`: (accum, micro_batch, seq_len) token ids, this rank's part of the step;
    labels are the inputs (the model shifts them). The loss of every micro-batch is scaled by
    1/accum, and FSDP2 averages over ranks, so the gradient is the mean over the global batch.
    The loss returned is the global mean, the same on every rank."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    accum = micro_batches.shape[0]
    total = torch.zeros((), device=micro_batches.device)
    for mb in micro_batches:
        with autocast():
            loss = model(input_ids=mb, labels=mb).loss / accum
        loss.backward()
        total += loss.detach()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if grad_clip is not None or dist.world > 1:  # sharded: the norm over every rank's shard
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    loss, norm = dist.mean(float(total), micro_batches.device), float(norm)
    skipped = not (math.isfinite(loss) and math.isfinite(norm))
    if not skipped:  # a NaN/Inf gradient would poison every weight and both AdamW moments
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss, grad_norm=norm, skipped=skipped)
