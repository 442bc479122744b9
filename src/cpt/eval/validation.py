"""Validation loss per source on the fixed slices carved before stage one."""

from __future__ import annotations

import numpy as np
import torch

from ..data.shards import Shard


def validation_windows(shard: Shard, doc_ids: np.ndarray, tokens: int, seq_len: int) -> torch.Tensor:
    """The first `tokens` tokens of the slice's documents, as whole `seq_len` windows."""
    stream = np.concatenate([shard[int(i)] for i in doc_ids]).astype(np.int64)
    n = min(tokens, len(stream)) // seq_len
    return torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len))


@torch.no_grad()
def evaluate(model, windows: dict[str, torch.Tensor], micro_batch: int, device, autocast) -> dict[str, float]:
    """Mean next-token loss of each source's windows (every window predicts seq_len - 1 tokens,
    so the mean over windows is the mean over tokens)."""
    was_training = model.training
    model.eval()
    out = {}
    for name, w in windows.items():
        losses = []
        for chunk in w.split(micro_batch):
            chunk = chunk.to(device)
            with autocast():
                losses.append(model(input_ids=chunk, labels=chunk).loss.float() * len(chunk))
        out[name] = float(torch.stack(losses).sum() / len(w))
    model.train(was_training)
    return out
