"""Exact, deterministic mixtures of sources, computed block by block with random access.

Every sample is `seq_len` tokens, so token shares equal sample shares. Source d's k-th sample gets
the key (k + 1/2) / w_d and the mixture is all keys in increasing order (ties to the lower source
index): the Sainte-Laguë / Webster divisor rule, where Megatron uses a largest-deficit loop.

Why keys instead of Megatron's loop: the order never needs a Python loop per sample, and any
block of it can be computed on its own. How many samples each source holds among the first `a`
is known in closed form up to a few candidates around a * w_d (see `counts_at`), so the block of
step k costs the same at step 10 as at step 10^6 — resume replays nothing and stores no index.

Prefix exactness: after any prefix of m samples, source d holds m * w_d samples give or take
(1 - w_d)/2 + w_d (D - 1)/2 (D sources): at most one sample with up to three sources (the
cookbook's D0 / Di / buffer mixes; Megatron's rule reaches 1.4 there), and a bit above one
with many sources (tests/test_mixture.py measures both).
"""

from __future__ import annotations

import numpy as np


class Mixture:
    """The infinite interleaving of sources with the given weights (zeros allowed, never drawn)."""

    def __init__(self, weights):
        w = np.asarray(weights, dtype=np.float64)
        self.num_sources = len(w)
        self.active = np.flatnonzero(w > 0)  # sources that are ever drawn
        self.w = w[self.active] / w[self.active].sum()
        # |count - a * w| is below D/2 + 1 (module docstring), so this many candidates each side suffice
        self.halo = len(self.w) // 2 + 2

    def _keys(self, first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys of samples first[d] .. first[d] + count[d] - 1 of every active source, concatenated
        in source order (so a stable sort breaks ties towards the lower source)."""
        ks = [first[i] + np.arange(count[i]) for i in range(len(self.w))]
        keys = np.concatenate([(k + 0.5) / w for k, w in zip(ks, self.w)])
        ids = np.repeat(np.arange(len(self.w)), count)
        return keys, ids, np.concatenate(ks)

    def _active_counts_at(self, a: int) -> np.ndarray:
        h = self.halo
        lo = np.maximum(0, np.floor(a * self.w).astype(np.int64) - h)  # surely among the first a
        keys, ids, _ = self._keys(lo, np.full(len(self.w), 2 * h + 1))
        rest = a - int(lo.sum())  # the next `rest` positions go to the smallest candidates
        taken = np.argsort(keys, kind="stable")[:rest]
        return lo + np.bincount(ids[taken], minlength=len(self.w))

    def counts_at(self, a: int) -> np.ndarray:
        """Samples of each source among the first `a` positions, in O(D^2) whatever `a` is."""
        out = np.zeros(self.num_sources, dtype=np.int64)
        if len(self.active):  # a stage that draws nothing (a merge) has no sources
            out[self.active] = self._active_counts_at(int(a))
        return out

    def block(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions a..b-1: the source of each, and its index among that source's samples."""
        n = int(b) - int(a)
        first = self._active_counts_at(int(a))
        count = np.ceil(n * self.w).astype(np.int64) + 2 * self.halo
        keys, ids, sample = self._keys(first, count)
        order = np.argsort(keys, kind="stable")[:n]
        return self.active[ids[order]], sample[order]


def interleave(weights, n: int, block: int = 1 << 20) -> np.ndarray:
    """Source index of each of the first `n` samples (uint8 when it fits), built block by block."""
    mix = Mixture(weights)
    out = np.empty(n, dtype=np.uint8 if mix.num_sources <= 256 else np.int32)
    for a in range(0, n, block):
        out[a : a + block] = mix.block(a, min(n, a + block))[0]
    return out


class StageMixture:
    """The sample plan of one stage: for step k, which sample of which stream fills each slot.
    Sample ids continue each stream's cursor from where the previous stages left it."""

    def __init__(self, streams: list[str], weights: list[float], steps: int, samples_per_step: int,
                 start: dict[str, int]):
        self.streams = streams
        self.steps = steps
        self.samples_per_step = samples_per_step
        self.mixture = Mixture(weights)
        self.start = dict(start)
        self._offset = np.array([self.start.get(n, 0) for n in streams], dtype=np.int64)

    def step(self, k: int) -> list[tuple[str, int]]:
        s = self.samples_per_step
        src, sample = self.mixture.block(k * s, (k + 1) * s)
        sample = sample + self._offset[src]
        return [(self.streams[d], int(i)) for d, i in zip(src, sample)]

    def counts(self, steps: int | None = None) -> dict[str, int]:
        """Samples drawn from each stream in the first `steps` steps (default: the whole stage)."""
        steps = self.steps if steps is None else steps
        counts = self.mixture.counts_at(steps * self.samples_per_step)
        return {name: int(c) for name, c in zip(self.streams, counts)}

    def cursors_after(self, steps: int | None = None) -> dict[str, int]:
        out = dict(self.start)
        for name, c in self.counts(steps).items():
            out[name] = out.get(name, 0) + c
        return out
