"""Each rank's slice of a global batch: the samples of optimizer step k are the same for any
world size (the mixture is a pure function of the step), and rank r trains on the r-th
contiguous part. FSDP2 averages gradients over ranks, so with the loss of each micro-batch
scaled by 1 / (this rank's micro-batches) the update equals one process's over the whole batch."""

from __future__ import annotations

import torch

from ..errors import CptError


def rank_accum(samples_per_step: int, micro_batch: int, world: int, where: str = "batch_tokens") -> int:
    """Micro-batches per rank per step; a one-line error when the world does not divide the batch."""
    per_rank, rest = divmod(samples_per_step, micro_batch * world)
    if rest or per_rank == 0:
        raise CptError(f"{where}: {samples_per_step} samples a step do not split into micro_batch {micro_batch} "
                       f"x {world} ranks; make batch_tokens a multiple of seq_len x micro_batch x world size")
    return per_rank


def rank_slice(tokens: torch.Tensor, micro_batch: int, rank: int, world: int) -> torch.Tensor:
    """`tokens`: (samples, seq_len), the step's global batch in mixture order. Returns this rank's
    part as (micro-batches, micro_batch, seq_len)."""
    accum = rank_accum(tokens.shape[0], micro_batch, world)
    per_rank = accum * micro_batch
    return tokens[rank * per_rank:(rank + 1) * per_rank].reshape(accum, micro_batch, tokens.shape[1])
