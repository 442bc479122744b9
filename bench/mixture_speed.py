"""Mixture engine figures, each against a baseline run in the same process:

1. the order of 100M samples over 10 sources (block by block) vs a plain Python largest-deficit
   loop (Megatron's rule) timed on 1M samples and scaled linearly; peak memory of our build;
2. a random training sample (`PackedStream.sample`, documents packed across boundaries) vs a raw
   `np.memmap` slice of the same length at a random offset of the same .bin;
3. resuming at step 10 vs step 10^6: planning the stage and fetching that step's batch;
4. a random sample of a `list:` source (the same documents in 4 shards, read in place) vs the same
   sample of the one shard.

    .venv/bin/python bench/mixture_speed.py
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cptkit.data.mixture import StageMixture, interleave
from cptkit.data.packing import PackedStream
from cptkit.data.shards import Shard, ShardWriter


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def python_largest_deficit(weights: np.ndarray, n: int) -> np.ndarray:
    w, counts, out = list(weights), [0] * len(weights), bytearray(n)
    for i in range(n):
        s = max(i, 1)
        best, d = -1e300, 0
        for j, wj in enumerate(w):
            deficit = wj * s - counts[j]
            if deficit > best:
                best, d = deficit, j
        out[i] = d
        counts[d] += 1
    return np.frombuffer(out, dtype=np.uint8)


def order_bench(n: int = 100_000_000, sources: int = 10) -> None:
    weights = np.random.default_rng(0).dirichlet(np.ones(sources))
    before = rss_mb()
    t0 = time.perf_counter()
    order = interleave(weights, n)
    ours = time.perf_counter() - t0
    peak = rss_mb() - before
    counts = np.bincount(order, minlength=sources)
    worst = float(np.max(np.abs(counts - n * weights)))
    base_n = 1_000_000
    t0 = time.perf_counter()
    python_largest_deficit(weights, base_n)
    loop = (time.perf_counter() - t0) * n / base_n
    print(f"order of {n:,} samples over {sources} sources: {ours:.2f} s, peak +{peak:.0f} MB "
          f"(uint8 order itself: {n / 1e6:.0f} MB); final counts within {worst:.2f} of n*w")
    print(f"  Python largest-deficit loop: {loop:.0f} s (1M timed, x{n // base_n}) -> {loop / ours:.0f}x faster")


def fetch_bench(folder: Path, seq_len: int = 2048, fetches: int = 20_000) -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(50, 3000, size=40_000)  # ~61M tokens, documents shorter and longer than a sample
    with ShardWriter(folder / "s", np.uint16) as w:
        for n in lengths:
            w.add(rng.integers(0, 50_000, size=n))
    shard = Shard(folder / "s")
    stream = PackedStream("s", shard, np.arange(len(shard)), seq_len, seed=0)
    raw = np.memmap(folder / "s.bin", dtype=np.uint16, mode="r")
    samples = rng.integers(0, stream.samples_per_epoch, size=fetches)
    offsets = rng.integers(0, len(raw) - seq_len, size=fetches)
    stream.sample(0)  # the epoch's layout is built once per epoch; not what we time
    rounds = {"raw memmap slice": [], "cpt sample": []}
    for _ in range(5):
        t0 = time.perf_counter()
        for a in offsets:
            np.array(raw[a : a + seq_len])
        rounds["raw memmap slice"].append((time.perf_counter() - t0) / fetches * 1e6)
        t0 = time.perf_counter()
        for s in samples:
            stream.sample(s)
        rounds["cpt sample"].append((time.perf_counter() - t0) / fetches * 1e6)
    raw_us, ours_us = (statistics.median(v) for v in rounds.values())
    print(f"random {seq_len}-token sample: cpt {ours_us:.1f} us vs raw memmap slice {raw_us:.1f} us "
          f"-> {ours_us / raw_us:.2f}x")
    return stream


def resume_bench(stream: PackedStream, samples_per_step: int = 512) -> None:
    """A resumed process starts with nothing cached: fresh streams, a fresh stage plan."""
    def resume_at(step: int) -> float:
        t0 = time.perf_counter()
        streams = {n: PackedStream(n, stream.shard, stream.doc_ids, stream.seq_len, 0) for n in "abc"}
        mix = StageMixture(["a", "b", "c"], [0.6, 0.3, 0.1], 2_000_000, samples_per_step, {"a": 10**6})
        for name, s in mix.step(step):
            streams[name].sample(s)
        return time.perf_counter() - t0

    times = {k: statistics.median(resume_at(k) for _ in range(7)) for k in (10, 10**6)}
    print(f"resume (plan the stage + fetch that step's {samples_per_step} samples): step 10 "
          f"{times[10] * 1e3:.1f} ms, step 10^6 {times[10**6] * 1e3:.1f} ms -> ratio {times[10**6] / times[10]:.2f}")


def list_bench(folder: Path, stream: PackedStream, parts: int = 4, fetches: int = 20_000) -> None:
    """The same documents, written as `parts` shards and joined by a data-file list (data/lists.py)."""
    from cptkit.data.lists import ListShard

    shard, prefixes = stream.shard, []
    for k, docs in enumerate(np.array_split(np.arange(len(shard)), parts)):
        with ShardWriter(folder / f"part{k}", shard.dtype) as w:
            for i in docs:
                w.add(shard[int(i)])
        prefixes.append(str(folder / f"part{k}"))
    joined = ListShard(prefixes, [Shard(p).num_tokens for p in prefixes], "list")
    listed = PackedStream("s", joined, np.arange(len(joined)), stream.seq_len, seed=0)
    samples = np.random.default_rng(2).integers(0, stream.samples_per_epoch, size=fetches)
    assert all(np.array_equal(stream.sample(x), listed.sample(x)) for x in samples[:100])  # the same samples
    rounds = {"one shard": [], "list": []}
    for _ in range(5):
        for name, st in (("one shard", stream), ("list", listed)):
            t0 = time.perf_counter()
            for x in samples:
                st.sample(x)
            rounds[name].append((time.perf_counter() - t0) / fetches * 1e6)
    one_us, list_us = (statistics.median(v) for v in rounds.values())
    print(f"random {stream.seq_len}-token sample of a list: source ({parts} shards): {list_us:.1f} us vs one shard "
          f"{one_us:.1f} us -> {list_us / one_us:.2f}x")


if __name__ == "__main__":
    order_bench()
    with tempfile.TemporaryDirectory() as tmp:
        stream = fetch_bench(Path(tmp))
        resume_bench(stream)
        list_bench(Path(tmp), stream)
