"""Mixtures are exact at every prefix, deterministic, and carry per-source cursors across stages."""

import numpy as np
import pytest

from cptkit.data.mixture import Mixture, StageMixture, interleave
from cptkit.data.packing import PackedStream
from cptkit.data.rng import generator
from cptkit.data.shards import Shard, ShardWriter


@pytest.mark.parametrize("weights", [[0.05, 0.95], [0.33, 0.33, 0.34], [0.7, 0.3], [0.001, 0.2, 0.799], [1.0]])
def test_interleave_is_exact_at_every_prefix(weights):
    n = 20_000
    order = interleave(np.array(weights), n)
    assert len(order) == n
    for d, w in enumerate(weights):
        prefix_counts = np.cumsum(order == d)
        target = w * np.arange(1, n + 1)
        assert np.max(np.abs(prefix_counts - target)) <= 1.0


def _reference_order(weights, n):
    """The definition, written the slow and obvious way: every key, one global stable sort."""
    keys, ids = [], []
    for d, w in enumerate(weights):
        if w > 0:
            keys += [(k + 0.5) / w for k in range(int(n * w) + 2)]
            ids += [d] * (int(n * w) + 2)
    order = sorted(range(len(keys)), key=lambda i: (keys[i], ids[i]))
    return np.array([ids[i] for i in order[:n]])


def _max_deviation(order, weights):
    n = len(order)
    return max(np.max(np.abs(np.cumsum(order == d) - w * np.arange(1, n + 1))) for d, w in enumerate(weights))


def _megatron_order(weights, n):
    """Megatron's largest-deficit blending loop (helpers.cpp::build_blending_indices)."""
    w, counts, out = np.asarray(weights), np.zeros(len(weights)), np.empty(n, dtype=int)
    for i in range(n):
        d = int(np.argmax(w * max(i, 1) - counts))
        out[i], counts[d] = d, counts[d] + 1
    return out


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.33, 0.33, 0.34], [0.1] * 10, [0.5, 0.05, 0.45, 0.0]])
def test_blocks_equal_the_global_sort_at_any_offset(weights):
    """Random access: any block, computed on its own, is that slice of the one global order."""
    n = 5_000
    ref = _reference_order(weights, n)
    assert np.array_equal(interleave(weights, n, block=777), ref)
    mix = Mixture(weights)
    rng = np.random.default_rng(0)
    for a in rng.integers(0, n - 300, size=25):
        b = a + int(rng.integers(1, 300))
        src, sample = mix.block(a, b)
        assert np.array_equal(src, ref[a:b])
        for d in set(src.tolist()):  # each source's sample ids count up from its count before a
            before = int(np.sum(ref[:a] == d))
            assert sample[src == d].tolist() == list(range(before, before + int(np.sum(src == d))))
        assert mix.counts_at(b).tolist() == np.bincount(ref[:b], minlength=len(weights)).tolist()


def test_counts_far_into_the_order_match_a_block_there():
    """counts_at(10^12) costs the same as counts_at(10) and agrees with the blocks around it."""
    weights = [0.05, 0.5, 0.25, 0.2]
    mix = Mixture(weights)
    a = 10**12 + 12345
    before = mix.counts_at(a)
    assert np.all(np.abs(before - a * np.array(weights)) <= 1)
    src, sample = mix.block(a, a + 1000)
    after = before + np.bincount(src, minlength=4)
    assert np.array_equal(after, mix.counts_at(a + 1000))
    assert all(sample[src == d].min() == before[d] for d in set(src.tolist()))


def test_prefix_error_bound_and_megatron_comparison():
    """The documented bound (1 - w)/2 + w (D - 1)/2 holds for random weights; with up to three
    sources every prefix is within one sample, where Megatron's own loop is not."""
    rng = np.random.default_rng(1)
    ours_3 = megatron_3 = 0.0
    for trial in range(30):
        D = int(rng.integers(2, 11))
        w = rng.dirichlet(np.full(D, rng.choice([0.2, 1.0, 5.0])))
        order = interleave(w, 3000)
        for d in range(D):
            dev = np.max(np.abs(np.cumsum(order == d) - w[d] * np.arange(1, 3001)))
            assert dev <= (1 - w[d]) / 2 + w[d] * (D - 1) / 2 + 1e-9
        if trial < 10:
            w3 = rng.dirichlet(np.ones(3))
            ours_3 = max(ours_3, _max_deviation(interleave(w3, 2000), w3))
            megatron_3 = max(megatron_3, _max_deviation(_megatron_order(w3, 2000), w3))
    assert ours_3 <= 1.0 < megatron_3


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


def test_cursors_across_stages_never_repeat_or_skip_a_sample():
    """Three stages with changing weights (a source leaves and comes back): every stream's sample
    ids over the whole run are 0, 1, 2, ... exactly once, so nothing repeats within an epoch."""
    stages = [(["d0", "d1"], [0.5, 0.5]), (["d0", "d1", "d2"], [0.05, 0.6, 0.35]), (["d0", "d2"], [0.7, 0.3])]
    cursors: dict[str, int] = {}
    seen: dict[str, list[int]] = {}
    for streams, weights in stages:
        mix = StageMixture(streams, weights, steps=37, samples_per_step=8, start=cursors)
        for k in range(37):
            for name, s in mix.step(k):
                seen.setdefault(name, []).append(s)
        cursors = mix.cursors_after()
    for name, ids in seen.items():
        assert ids == list(range(len(ids))), name
        assert cursors[name] == len(ids)
