"""Exact, deterministic mixtures of sources, with a cursor per source that carries across stages.

Every sample is `seq_len` tokens, so token shares equal sample shares. The order is built without
a Python loop per sample: the k-th sample of source d gets the key (k + 1/2) / w_d and the stage
takes the n smallest keys. At every prefix of length m, source d then holds round(m * w_d)
samples give or take one — the guarantee of Megatron's largest-deficit blending.
"""

from __future__ import annotations

import numpy as np


def interleave(weights: np.ndarray, n: int) -> np.ndarray:
    """Source index of each of `n` samples for the given weights (summing to 1)."""
    weights = np.asarray(weights, dtype=np.float64)
    keys, ids = [], []
    for d, w in enumerate(weights):
        if w <= 0:
            continue
        count = int(np.ceil(n * w)) + 1
        keys.append((np.arange(count) + 0.5) / w)
        ids.append(np.full(count, d, dtype=np.int32))
    keys, ids = np.concatenate(keys), np.concatenate(ids)
    order = np.lexsort((ids, keys))[:n]  # ties go to the lower source index
    return ids[order]


class StageMixture:
    """The sample plan of one stage: for step k, which sample of which stream fills each slot."""

    def __init__(self, streams: list[str], weights: list[float], steps: int, samples_per_step: int,
                 start: dict[str, int]):
        self.streams = streams
        self.samples_per_step = samples_per_step
        self.source_of = interleave(np.asarray(weights), steps * samples_per_step)
        # the rank of each slot among its own source's slots, plus where that source's cursor stood
        self.sample_of = np.empty(len(self.source_of), dtype=np.int64)
        for d, name in enumerate(streams):
            slots = np.flatnonzero(self.source_of == d)
            self.sample_of[slots] = start.get(name, 0) + np.arange(len(slots))
        self.start = dict(start)

    def step(self, k: int) -> list[tuple[str, int]]:
        sl = slice(k * self.samples_per_step, (k + 1) * self.samples_per_step)
        return [(self.streams[d], int(s)) for d, s in zip(self.source_of[sl], self.sample_of[sl])]

    def counts(self, steps: int | None = None) -> dict[str, int]:
        """Samples drawn from each stream in the first `steps` steps (default: the whole stage)."""
        n = len(self.source_of) if steps is None else steps * self.samples_per_step
        counts = np.bincount(self.source_of[:n], minlength=len(self.streams))
        return {name: int(c) for name, c in zip(self.streams, counts)}

    def cursors_after(self, steps: int | None = None) -> dict[str, int]:
        out = dict(self.start)
        for name, c in self.counts(steps).items():
            out[name] = out.get(name, 0) + c
        return out
