"""Packing a source's documents into fixed-length training samples, with O(1) random access.

Epoch e of a source is its documents in a seeded random order, concatenated (each already ends
with EOS), cut into `seq_len`-token samples; the partial tail of an epoch is dropped. Sample s is
therefore a pure function of (seed, source, s): resuming needs no replay, and a source that runs
out simply starts epoch e+1 in a new order.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import CptError
from .rng import generator
from .shards import Shard


class PackedStream:
    """`stream.sample(s)` is the s-th `seq_len`-token training sample of one source."""

    def __init__(self, name: str, shard: Shard, doc_ids: np.ndarray, seq_len: int, seed: int):
        self.name, self.shard, self.doc_ids, self.seq_len, self.seed = name, shard, doc_ids, seq_len, seed
        self.epoch_tokens = int(shard.lengths[doc_ids].astype(np.int64).sum())
        self.samples_per_epoch = self.epoch_tokens // seq_len
        if self.samples_per_epoch == 0:
            raise CptError(f"source `{name}`: {self.epoch_tokens} training tokens, fewer than one sample of "
                           f"seq_len={seq_len}; add data or lower seq_len")
        self._epoch = lru_cache(maxsize=2)(self._epoch_layout)

    def _epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Documents of an epoch in order, and the token offset where each one ends."""
        order = self.doc_ids[generator(self.seed, "epoch", self.name, epoch).permutation(len(self.doc_ids))]
        ends = np.cumsum(self.shard.lengths[order].astype(np.int64))
        return order, ends

    def sample(self, s: int) -> np.ndarray:
        epoch, index = divmod(int(s), self.samples_per_epoch)
        order, ends = self._epoch(epoch)
        start, stop = index * self.seq_len, (index + 1) * self.seq_len
        j = int(np.searchsorted(ends, start, side="right"))  # first document ending after `start`
        pieces, pos = [], start
        while pos < stop:
            doc_start = int(ends[j - 1]) if j else 0
            doc = self.shard[int(order[j])]
            take = doc[pos - doc_start : min(stop, int(ends[j])) - doc_start]
            pieces.append(take)
            pos += len(take)
            j += 1
        return np.concatenate(pieces) if len(pieces) > 1 else np.array(pieces[0])

    def epochs_at(self, samples: int) -> float:
        """How many passes over this source `samples` samples make."""
        return samples / self.samples_per_epoch
