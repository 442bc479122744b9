"""How Megatron-DeepSpeed's (and blendcorpus's) loader turns a data-file list into samples.

Each file i of N training samples gets n_i = ceil(N * w_i * 1.005) samples (w normalised, 0.5%
slack); files are grouped by their corpus column, and corpora are blended with the shares
sum(n_i in c) / sum(n_i) (spec B7). The ceilings move each share by at most a sample per file."""

from __future__ import annotations

import math


def achieved_shares(entries, samples: int) -> dict[str, float]:
    """Each corpus's share of the blend Megatron builds for `samples` training samples."""
    total = sum(e.weight for e in entries)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.corpus] = counts.get(e.corpus, 0) + math.ceil(samples * (e.weight / total) * 1.005)
    n = sum(counts.values())
    return {c: k / n for c, k in counts.items()}
