"""Validation loss per source on the fixed slices carved before stage one, overall and by token
position (how a context extension shows: the loss at positions past the old context)."""

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


def position_edges(seq_len: int, buckets: int = 5) -> list[int]:
    """Bucket edges over the predicted positions 1..seq_len - 1: 0, then doubling up to seq_len
    (1024 -> 0, 64, 128, 256, 512, 1024), so each old context length is an edge."""
    edges = [seq_len >> k for k in range(buckets) if seq_len >> k > 1]
    return [0] + sorted(edges)


def evaluate(model, windows: dict[str, torch.Tensor], micro_batch: int, device, autocast,
             dist: Dist = Dist()) -> dict[str, float]:
    """Mean next-token loss of each source's windows."""
    return evaluate_positions(model, windows, micro_batch, device, autocast, dist)[0]


def evaluate_positions(model, windows: dict[str, torch.Tensor], micro_batch: int, device, autocast,
                       dist: Dist = Dist()) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Per source, the mean next-token loss (every window predicts seq_len - 1 tokens, so the mean
    over windows is the mean over tokens) and the mean in each `position_edges` bucket of the
    predicted token's position. With several ranks each takes its part."""
    means, buckets = {}, {}
    with evaluating(model):
        for name, w in windows.items():
            sums = dist.sum_tensor(_position_sums(model, w, micro_batch, device, autocast, dist), device) / len(w)
            means[name] = float(sums.mean())
            edges = position_edges(w.shape[1])
            buckets[name] = [float(sums[max(a, 1) - 1:b - 1].mean()) for a, b in zip(edges, edges[1:])]
    return means, buckets


@torch.no_grad()
def _position_sums(model, w: torch.Tensor, micro_batch: int, device, autocast, dist: Dist) -> torch.Tensor:
    """The loss at each predicted position (seq_len - 1,), summed over this rank's contiguous part
    of the windows, in float64. Every rank runs the same number of forwards (a sharded model
    gathers its weights in each): a short part is padded with copies that are not counted."""
    per = -(-len(w) // dist.world)
    mine = w[dist.rank * per:(dist.rank + 1) * per]
    real = len(mine)
    padded = torch.cat([mine, w[:per - real]]) if real < per else mine
    total = torch.zeros(w.shape[1] - 1, dtype=torch.float64)
    for start in range(0, per, micro_batch):
        chunk = padded[start:start + micro_batch].to(device)
        with autocast():
            logits = model(input_ids=chunk).logits[:, :-1].float()
        rows = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")
        total += rows[:max(0, real - start)].sum(0).double().cpu()
    return total


def _rank_loss_sum(model, w: torch.Tensor, micro_batch: int, device, autocast, dist: Dist) -> float:
    """The summed per-window mean loss of this rank's part."""
    return float(_position_sums(model, w, micro_batch, device, autocast, dist).sum()) / (w.shape[1] - 1)
