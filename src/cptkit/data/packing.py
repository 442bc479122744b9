"""Packing a source's documents into fixed-length training samples, with O(1) random access.

Epoch e of a source is its documents in a seeded random order, concatenated (each already ends
with EOS), cut into `seq_len`-token samples; the partial tail of an epoch is dropped. Sample s is
therefore a pure function of (seed, source, s): resuming needs no replay, and a source that runs
out simply starts epoch e+1 in a new order.

Long-context upsampling (Gao et al. 2024, "How to Train Long-Context Language Models"): an epoch
may hold extra copies of the source's long documents, so the source's *own* composition shifts
towards long documents while its share of the mixture (a share of samples) stays as declared.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..errors import CptError
from .rng import generator
from .shards import Shard


class PackedStream:
    """`stream.sample(s)` is the s-th `seq_len`-token training sample of one source."""

    def __init__(self, name: str, shard: Shard, doc_ids: np.ndarray, seq_len: int, seed: int,
                 upsample: tuple[int, float] | None = None):
        """`doc_ids`: the distinct training documents. `upsample`: (min_tokens, factor): every
        document longer than min_tokens appears `factor` times per epoch (on average, for a
        fractional factor); None or factor 1 leaves every epoch exactly as without it. A shard
        with `factors` (a `list:` source whose weights differ from its shards' tokens) repeats
        each document that many times an epoch first."""
        self.name, self.shard, self.doc_ids, self.seq_len, self.seed = name, shard, doc_ids, seq_len, seed
        self.upsample = upsample
        factors = getattr(shard, "factors", None)
        base = doc_ids if factors is None else self._weighted(factors)
        self.epoch_docs = base if upsample is None else self._with_copies(base, *upsample)
        self.distinct_tokens = int(shard.lengths[doc_ids].astype(np.int64).sum())  # each document once
        self.epoch_tokens = int(shard.lengths[self.epoch_docs].astype(np.int64).sum())  # copies included
        self.samples_per_epoch = self.epoch_tokens // seq_len
        if self.samples_per_epoch == 0:
            raise CptError(f"source `{name}`: {self.epoch_tokens} training tokens, fewer than one sample of "
                           f"seq_len={seq_len}; add data or lower seq_len")
        self._epoch = lru_cache(maxsize=2)(self._epoch_layout)
        self._placed = lru_cache(maxsize=2)(self._placement)

    def _with_copies(self, docs: np.ndarray, min_tokens: int, factor: float) -> np.ndarray:
        """`docs` plus floor(factor) - 1 extra copies of each long document, and one more copy
        for round(frac(factor) x #long) of them, chosen once per stream (not per epoch), so every
        long document is read floor or ceil(factor) times per epoch and `factor` times on average."""
        long = docs[self.shard.lengths[docs] > min_tokens]
        whole = int(math.floor(factor))
        extra = int(round((factor - whole) * len(long)))
        chosen = long[np.sort(generator(self.seed, "upsample", self.name).permutation(len(long))[:extra])]
        return np.concatenate([docs, np.repeat(long, whole - 1), chosen]).astype(docs.dtype)

    def _weighted(self, factors: np.ndarray) -> np.ndarray:
        """`doc_ids` with each `list:` shard k's documents read factors[k] times an epoch: floor(f)
        copies of each, and one more for round(frac(f) x n) of its n documents (seeded, fixed)."""
        docs = np.sort(self.doc_ids)
        bounds = docs.searchsorted(self.shard.first)  # each shard's documents: docs[bounds[k]:bounds[k + 1]]
        parts = []
        for k, f in enumerate(factors):
            group = docs[bounds[k] : bounds[k + 1]]
            whole, extra = int(math.floor(f)), int(round((f - math.floor(f)) * len(group)))
            parts.append(np.repeat(group, whole))
            if extra:
                parts.append(group[np.sort(generator(self.seed, "list-weights", self.name, k).permutation(len(group))[:extra])])
        return np.concatenate(parts).astype(self.doc_ids.dtype)

    def _epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Documents of an epoch in order, and the token offset where each one ends."""
        order = self.epoch_docs[generator(self.seed, "epoch", self.name, epoch).permutation(len(self.epoch_docs))]
        ends = np.cumsum(self.shard.lengths[order].astype(np.int64))
        return order, ends

    def _placement(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each of an epoch's documents ends in the epoch, and, beside it, the shift that
        turns an epoch position inside that document into its offset in the .bin."""
        order, ends = self._epoch(epoch)
        shift = self.shard.starts[order] + self.shard.lengths[order].astype(np.int64) - ends
        return ends, np.stack([ends, shift], axis=1)

    def sample(self, s: int) -> np.ndarray:
        """Copies the sample's pieces straight out of the memory-mapped .bin, a few documents at a
        time as Python ints (cheaper than numpy scalars): within 2x of slicing the raw file."""
        epoch, index = divmod(int(s), self.samples_per_epoch)
        ends, placed = self._placed(epoch)
        pos = index * self.seq_len
        stop = pos + self.seq_len
        j = int(ends.searchsorted(pos, side="right"))  # the first document ending after `pos`
        tokens = self.shard.tokens
        pieces = []
        while True:
            for end, shift in placed[j : j + 4].tolist():
                if end >= stop:
                    pieces.append(tokens[pos + shift : stop + shift])
                    return pieces[0].copy() if len(pieces) == 1 else np.concatenate(pieces)
                pieces.append(tokens[pos + shift : end + shift])
                pos = end
            j += 4

    def epochs_at(self, samples: int) -> float:
        """How many passes over this source `samples` samples make."""
        return samples / self.samples_per_epoch


def carry(samples: int, epoch_tokens: int, from_len: int, to_len: int) -> int:
    """A cursor moved to another sample length: the first `to_len` sample that starts at or after
    the end of the first `samples` samples of `from_len` (same epochs: their order depends on the
    seed and the source only). Nothing is read twice; at most to_len - 1 tokens are skipped."""
    if from_len == to_len or epoch_tokens < max(from_len, to_len):  # (a plan's estimate of a tiny source)
        return samples
    epoch, index = divmod(samples, epoch_tokens // from_len)
    per_epoch = epoch_tokens // to_len
    return epoch * per_epoch + min(-(-index * from_len // to_len), per_epoch)  # past the last: the next epoch
