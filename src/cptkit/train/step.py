"""One optimizer step: gradient accumulation over micro-batches, clipping, AdamW."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

from ..distributed.env import Dist
from .inputs import plain


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
               autocast=contextlib.nullcontext, dist: Dist = Dist(), inputs=plain) -> StepResult:
    """`micro_batches`: (accum, micro_batch, seq_len) token ids, this rank's part of the step;
    `inputs` makes the model's inputs of one (train/inputs.py: labels are the inputs, which the
    model shifts; with document masking, positions too). The loss of every micro-batch is scaled by
    1/accum, and FSDP2 averages over ranks, so the gradient is the mean over the global batch.
    The loss returned is the global mean, the same on every rank."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    accum = micro_batches.shape[0]
    total = torch.zeros((), device=micro_batches.device)
    for mb in micro_batches:
        with autocast():
            loss = model(**inputs(mb)).loss / accum
        loss.backward()
        total += loss.detach()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:  # one FSDP2 does not manage (row training's R) is whole on every rank
        if p.grad is not None and not isinstance(p.grad, DTensor):
            dist.average_(p.grad)  # as FSDP2 averages its own
    norm = clip_gradients(params, grad_clip, dist)
    loss = dist.mean(float(total), micro_batches.device)
    skipped = not (math.isfinite(loss) and math.isfinite(norm))
    if not skipped:  # a NaN/Inf gradient would poison every weight and both AdamW moments
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss, grad_norm=norm, skipped=skipped)


def clip_gradients(params: list[torch.Tensor], grad_clip: float | None, dist: Dist = Dist()) -> float:
    """The gradient norm over the whole model (and over every rank), after scaling the gradients
    down to `grad_clip` if it is set. FSDP2's gradients are DTensor shards; the others are
    whole on every rank (and already averaged over ranks)."""
    if dist.world == 1:
        if grad_clip is not None:
            return float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
    sharded = [p for p in params if isinstance(p.grad, DTensor)]
    replicated = [p for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    parts = []
    if sharded:
        parts.append(torch.nn.utils.get_total_norm([p.grad for p in sharded]).full_tensor())
    if replicated:
        parts.append(torch.nn.utils.get_total_norm([p.grad for p in replicated]))
    if not parts:
        return 0.0
    norm = torch.linalg.vector_norm(torch.stack(parts))
    if grad_clip is not None:
        for group in (sharded, replicated):  # foreach kernels take DTensors or tensors, not both
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, grad_clip, norm)
    return float(norm)
