"""Scoring documents by their loss under a model: what the `hard` replay-buffer policy ranks by."""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .mode import evaluating


def document_losses(model: torch.nn.Module, docs: Sequence[np.ndarray], seq_len: int, device,
                    batch_size: int, autocast: Callable = contextlib.nullcontext) -> np.ndarray:
    """Mean next-token loss of each document under `model` (its first `seq_len` tokens when
    longer than the window); a document of one token has nothing to predict and scores 0.
    Documents go in batches of similar length, right-padded, with the padding masked out of
    the loss; the model runs in eval mode and gets its previous mode back (eval/mode.py)."""
    out = np.zeros(len(docs), dtype=np.float64)
    cut = [np.asarray(d[:seq_len], dtype=np.int64) for d in docs]
    idx = [i for i in np.argsort([-len(d) for d in cut], kind="stable") if len(cut[i]) >= 2]
    with evaluating(model):
        for b in range(0, len(idx), batch_size):
            part = idx[b : b + batch_size]
            width = len(cut[part[0]])
            ids = torch.zeros(len(part), width, dtype=torch.long)
            mask = torch.zeros(len(part), width, dtype=torch.bool)
            for row, i in enumerate(part):
                ids[row, : len(cut[i])] = torch.from_numpy(cut[i])
                mask[row, : len(cut[i])] = True
            ids, mask = ids.to(device), mask.to(device)
            # right padding: a causal model's real positions never attend to the padding after them
            with autocast():
                logits = model(input_ids=ids).logits[:, :-1].float()
            loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            valid = mask[:, 1:]
            mean = (loss * valid).sum(1) / valid.sum(1)
            out[part] = mean.cpu().numpy()
    return out
