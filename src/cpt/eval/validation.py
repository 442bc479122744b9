"""Validation loss per source on the fixed slices carved before stage one."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shards import Shard
from ..distributed.env import Dist
from .mode import evaluating


def validation_windows(shard: Shard, doc_ids: np.ndarray, tokens: int, seq_len: int) -> torch.Tensor:
    """The first `tokens` tokens of the slice's documents, as whole `seq_len` windows."""
    stream = np.concatenate([shard[int(i)] for i in doc_ids]).astype(np.int64)
    n = min(tokens, len(stream)) // seq_len
    return torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len))


def evaluate(model, windows: dict[str, torch.Tensor], micro_batch: int, device, autocast,
             dist: Dist = Dist()) -> dict[str, float]:
    """Mean next-token loss of each source's windows (every window predicts seq_len - 1 tokens,
    so the mean over windows is the mean over tokens). With several ranks each takes its part."""
    out = {}
    with evaluating(model):
        for name, w in windows.items():
            if dist.world > 1:
                out[name] = dist.sum(_rank_loss_sum(model, w, micro_batch, device, autocast, dist), device) / len(w)
                continue
            losses = []
            for chunk in w.split(micro_batch):
                chunk = chunk.to(device)
                with autocast():
                    losses.append(model(input_ids=chunk, labels=chunk).loss.float() * len(chunk))
            out[name] = float(torch.stack(losses).sum() / len(w))
    return out


@torch.no_grad()
def _rank_loss_sum(model, w: torch.Tensor, micro_batch: int, device, autocast, dist: Dist) -> float:
    """The summed loss of this rank's contiguous part of the windows. Every rank runs the same
    number of forwards (a sharded model gathers its weights in each): a short part is padded
    with copies that are not counted."""
    per = -(-len(w) // dist.world)
    mine = w[dist.rank * per:(dist.rank + 1) * per]
    real = len(mine)
    padded = torch.cat([mine, w[:per - real]]) if real < per else mine
    total = 0.0
    for start in range(0, per, micro_batch):
        chunk = padded[start:start + micro_batch].to(device)
        with autocast():
            logits = model(input_ids=chunk).logits[:, :-1].float()
        rows = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none").mean(1)
        total += float(rows[:max(0, real - start)].sum())
    return total
