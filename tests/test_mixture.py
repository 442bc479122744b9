"""Mixtures are exact at every prefix, deterministic, and carry per-source cursors across stages."""

import numpy as np
import pytest

from cpt.data.mixture import StageMixture, interleave
from cpt.data.packing import PackedStream
from cpt.data.rng import generator
from cpt.data.shards import Shard, ShardWriter


@pytest.mark.parametrize("weights", [[0.05, 0.95], [0.33, 0.33, 0.34], [0.7, 0.3], [0.001, 0.2, 0.799], [1.0]])
def test_interleave_is_exact_at_every_prefix(weights):
    n = 20_000
    order = interleave(np.array(weights), n)
    assert len(order) == n
    for d, w in enumerate(weights):
        prefix_counts = np.cumsum(order == d)
        target = w * np.arange(1, n + 1)
        assert np.max(np.abs(prefix_counts - target)) <= 1.0


def test_interleave_skips_zero_weights_and_is_deterministic():
    a = interleave(np.array([0.0, 0.5, 0.5]), 1000)
    assert 0 not in a
    assert np.array_equal(a, interleave(np.array([0.0, 0.5, 0.5]), 1000))


def test_stage_mixture_token_shares_and_cursors():
    mix = StageMixture(["a", "b"], [0.05, 0.95], steps=61, samples_per_step=64, start={"a": 100})
    counts = mix.counts()
    total = 61 * 64
    assert abs(counts["a"] - 0.05 * total) <= 1 and counts["a"] + counts["b"] == total
    assert abs(counts["a"] - 0.05 * total) / total < 0.01
    # sample ids of each stream continue from its cursor, in order, without gaps
    ids = {"a": [], "b": []}
    for k in range(61):
        for name, s in mix.step(k):
            ids[name].append(s)
    assert ids["a"] == list(range(100, 100 + counts["a"]))
    assert ids["b"] == list(range(0, counts["b"]))
    assert mix.cursors_after() == {"a": 100 + counts["a"], "b": counts["b"]}
    assert mix.cursors_after(10) == {"a": 100 + mix.counts(10)["a"], "b": mix.counts(10)["b"]}


def _shard(tmp_path, docs):
    with ShardWriter(tmp_path / "s", np.uint16) as w:
        for d in docs:
            w.add(d)
    return Shard(tmp_path / "s")


def test_packed_stream_covers_each_epoch_once_and_reshuffles(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 500, size=rng.integers(5, 40)) for _ in range(50)]
    shard = _shard(tmp_path, docs)
    ids = np.arange(len(shard))
    stream = PackedStream("x", shard, ids, seq_len=16, seed=3)
    total = sum(len(d) for d in docs)
    assert stream.samples_per_epoch == total // 16
    epoch0 = np.concatenate([stream.sample(s) for s in range(stream.samples_per_epoch)])
    # the epoch is a permutation of whole documents, concatenated (minus the dropped tail)
    order = ids[generator(3, "epoch", "x", 0).permutation(50)]
    expected = np.concatenate([docs[i] for i in order])[: len(epoch0)]
    assert np.array_equal(epoch0, expected)
    epoch1 = np.concatenate([stream.sample(s) for s in range(stream.samples_per_epoch, 2 * stream.samples_per_epoch)])
    assert not np.array_equal(epoch0, epoch1)  # a new epoch is a new order
    assert all(len(stream.sample(s)) == 16 for s in range(0, 200, 7))
    # random access equals sequential access (O(1) resume)
    fresh = PackedStream("x", shard, ids, seq_len=16, seed=3)
    assert np.array_equal(fresh.sample(stream.samples_per_epoch + 5), stream.sample(stream.samples_per_epoch + 5))


def test_packed_stream_uses_only_given_documents(tmp_path):
    docs = [np.full(10, i, dtype=np.int64) for i in range(20)]
    shard = _shard(tmp_path, docs)
    train = np.array([i for i in range(20) if i % 4])  # leave out every 4th (a "validation" doc)
    stream = PackedStream("y", shard, train, seq_len=10, seed=0)
    seen = set(np.concatenate([stream.sample(s) for s in range(3 * stream.samples_per_epoch)]).tolist())
    assert seen == set(train.tolist())
