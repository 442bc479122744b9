"""Seeded generators keyed by names: data order is a pure function of (seed, names, counters)."""

import hashlib

import numpy as np


def stable_hash(text: str) -> int:
    """Python's hash() is salted per process; data order must not be."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def generator(seed: int, *parts: str | int) -> np.random.Generator:
    """An independent stream for (seed, parts): e.g. ("epoch", "wiki", 3)."""
    keys = [seed] + [stable_hash(p) if isinstance(p, str) else int(p) for p in parts]
    return np.random.default_rng(keys)
