"""Long-context upsampling (Gao et al. 2024): long documents are read `factor` times per epoch,
short ones once, while the source's share of the mixture stays exactly as declared."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from cptkit.data.mixture import StageMixture
from cptkit.data.packing import PackedStream
from cptkit.data.prepare import RunData
from cptkit.data.shards import Shard, ShardWriter
from cptkit.data.tokenize import _parsing_options
from cptkit.recipe import SourceCfg, load_recipe
import test_recipe
from test_recipe import changed, error_of, write

SHORT, LONG = 8, 96  # token lengths: multiples of SEQ_LEN, so an epoch drops no tail
SEQ_LEN = 8
N_SHORT, N_LONG = 30, 20
base = test_recipe.base  # the fixture: a small valid two-source recipe


def _shard(tmp_path, name="s") -> Shard:
    """Short documents 0..N_SHORT-1, then long ones; every token of document i is i."""
    with ShardWriter(tmp_path / name, np.uint16) as w:
        for i in range(N_SHORT + N_LONG):
            w.add(np.full(SHORT if i < N_SHORT else LONG, i, dtype=np.uint16))
    return Shard(tmp_path / name)


def _epoch_counts(stream: PackedStream, epoch: int) -> Counter:
    """How many times each document is read in one epoch, counted from the samples themselves."""
    spe = stream.samples_per_epoch
    tokens = np.concatenate([stream.sample(s) for s in range(epoch * spe, (epoch + 1) * spe)])
    assert len(tokens) == stream.epoch_tokens  # no dropped tail: the counts below are exact
    per_doc = Counter(tokens.tolist())
    return Counter({d: n // (SHORT if d < N_SHORT else LONG) for d, n in per_doc.items()})


def test_integer_factor_reads_each_long_document_factor_times_per_epoch(tmp_path):
    shard = _shard(tmp_path)
    ids = np.arange(len(shard))
    plain = PackedStream("x", shard, ids, SEQ_LEN, seed=1)
    up = PackedStream("x", shard, ids, SEQ_LEN, seed=1, upsample=(SHORT, 3.0))
    for epoch in range(3):
        before, after = _epoch_counts(plain, epoch), _epoch_counts(up, epoch)
        assert all(before[d] == 1 for d in ids)
        assert all(after[d] == 1 for d in range(N_SHORT))  # not longer than min_tokens: once
        assert all(after[d] == 3 * before[d] for d in range(N_SHORT, N_SHORT + N_LONG))
    assert up.distinct_tokens == plain.distinct_tokens == plain.epoch_tokens == N_SHORT * SHORT + N_LONG * LONG
    assert up.epoch_tokens == N_SHORT * SHORT + 3 * N_LONG * LONG
    assert up.samples_per_epoch == up.epoch_tokens // SEQ_LEN


def test_fractional_factor_is_exact_on_average_and_floor_or_ceil_per_document(tmp_path):
    shard = _shard(tmp_path)
    up = PackedStream("x", shard, np.arange(len(shard)), SEQ_LEN, seed=2, upsample=(SHORT, 2.25))
    long_docs = range(N_SHORT, N_SHORT + N_LONG)
    ceil_docs = None
    for epoch in range(3):
        counts = _epoch_counts(up, epoch)
        assert all(counts[d] == 1 for d in range(N_SHORT))
        assert {counts[d] for d in long_docs} == {2, 3}
        assert sum(counts[d] for d in long_docs) / N_LONG == 2.25  # 5 of the 20 get the extra copy
        chosen = {d for d in long_docs if counts[d] == 3}
        assert ceil_docs is None or chosen == ceil_docs  # which ones is fixed per stream, not per epoch
        ceil_docs = chosen
    other = PackedStream("y", shard, np.arange(len(shard)), SEQ_LEN, seed=2, upsample=(SHORT, 2.25))
    assert {d for d in long_docs if _epoch_counts(other, 0)[d] == 3} != ceil_docs  # seeded by the name


def test_long_token_share_within_the_source_rises_as_computed(tmp_path):
    shard = _shard(tmp_path)
    ids = np.arange(len(shard))
    for factor in (1.0, 2.25, 4.0):
        stream = PackedStream("x", shard, ids, SEQ_LEN, seed=0, upsample=(SHORT, factor))
        tokens = np.concatenate([stream.sample(s) for s in range(2 * stream.samples_per_epoch)])
        measured = np.mean(tokens >= N_SHORT)
        expected = factor * N_LONG * LONG / (N_SHORT * SHORT + factor * N_LONG * LONG)
        assert measured == pytest.approx(expected, abs=1e-12)


def test_share_in_the_mixture_is_unchanged_by_upsampling(tmp_path):
    shard, other_shard = _shard(tmp_path), _shard(tmp_path, "o")
    ids = np.arange(len(shard))
    other = PackedStream("other", other_shard, ids, SEQ_LEN, seed=0)
    drawn = {}
    for factor in (None, 3.0):
        streams = {"x": PackedStream("x", shard, ids, SEQ_LEN, seed=0,
                                     upsample=None if factor is None else (SHORT, factor)), "other": other}
        mix = StageMixture(["x", "other"], [0.3, 0.7], steps=50, samples_per_step=8, start={})
        tokens = {"x": [], "other": []}
        for k in range(mix.steps):
            for name, s in mix.step(k):
                tokens[name].append(streams[name].sample(s))
        drawn[factor] = {n: np.concatenate(t) for n, t in tokens.items()}
    # the same number of samples (so tokens) from each source, whatever is inside the source's epochs
    assert {n: len(t) for n, t in drawn[None].items()} == {n: len(t) for n, t in drawn[3.0].items()}
    assert len(drawn[None]["x"]) == 0.3 * 50 * 8 * SEQ_LEN
    assert np.array_equal(drawn[None]["other"], drawn[3.0]["other"])
    # ... while within the source the long documents took a larger part of it (0.89 -> 0.96 per epoch;
    # these 120 samples are under half an epoch, hence the tolerance)
    share = {f: np.mean(drawn[f]["x"] >= N_SHORT) for f in drawn}
    for f, k in ((None, 1), (3.0, 3)):
        assert share[f] == pytest.approx(k * N_LONG * LONG / (N_SHORT * SHORT + k * N_LONG * LONG), abs=0.03)
    assert share[3.0] > share[None]


def test_stream_is_deterministic_and_unchanged_without_upsampling(tmp_path):
    shard = _shard(tmp_path)
    ids = np.arange(len(shard))
    a = PackedStream("x", shard, ids, SEQ_LEN, seed=5, upsample=(SHORT, 2.5))
    b = PackedStream("x", shard, ids, SEQ_LEN, seed=5, upsample=(SHORT, 2.5))
    c = PackedStream("x", shard, ids, SEQ_LEN, seed=6, upsample=(SHORT, 2.5))
    span = range(0, 3 * a.samples_per_epoch, 5)
    assert all(np.array_equal(a.sample(s), b.sample(s)) for s in span)
    assert not all(np.array_equal(a.sample(s), c.sample(s)) for s in span)
    # random access equals sequential access
    late = 2 * a.samples_per_epoch + 7
    assert np.array_equal(PackedStream("x", shard, ids, SEQ_LEN, seed=5, upsample=(SHORT, 2.5)).sample(late),
                          a.sample(late))
    # a factor of 1 (or a min_tokens no document exceeds) is byte-identical to no upsampling
    plain = PackedStream("x", shard, ids, SEQ_LEN, seed=5)
    for same in (PackedStream("x", shard, ids, SEQ_LEN, seed=5, upsample=(SHORT, 1.0)),
                 PackedStream("x", shard, ids, SEQ_LEN, seed=5, upsample=(LONG, 3.0))):
        assert same.samples_per_epoch == plain.samples_per_epoch
        assert all(np.array_equal(same.sample(s), plain.sample(s)) for s in range(3 * plain.samples_per_epoch))


def test_upsampling_does_not_change_the_shard_cache_key(tmp_path):
    plain = SourceCfg(paths=[tmp_path / "a.txt"], format="text")
    up = SourceCfg(paths=[tmp_path / "a.txt"], format="text", upsample_long={"min_tokens": 4096, "factor": 2})
    assert _parsing_options(up) == _parsing_options(plain)


def test_recipe_upsample_long_reaches_the_stream(base, tmp_path):
    data = changed(base, lambda d: d["sources"]["a"].update(upsample_long={"min_tokens": SHORT, "factor": 2}))
    recipe = load_recipe(write(tmp_path, data))
    assert recipe.sources["a"].upsample_long.factor == 2.0
    (tmp_path / "run").mkdir()
    run = SimpleNamespace(recipe=recipe, dir=tmp_path / "run", leader=True)
    src = RunData._split(run, "a", SimpleNamespace(open=lambda: _shard(tmp_path)))
    long_train = int(np.sum(src.stream.shard.lengths[src.train_ids] > SHORT))
    assert src.stream.upsample == (SHORT, 2.0)
    assert src.stream.epoch_tokens == src.stream.distinct_tokens + long_train * LONG


@pytest.mark.parametrize("bad, field", [({"min_tokens": 0, "factor": 2}, "min_tokens"),
                                        ({"min_tokens": 4096, "factor": 0.5}, "factor"),
                                        ({"min_tokens": 4096, "factor": 2, "facter": 3}, "facter")])
def test_bad_upsample_long_is_refused_naming_the_field(base, tmp_path, bad, field):
    e = error_of(write(tmp_path, changed(base, lambda d: d["sources"]["a"].update(upsample_long=bad))))
    assert f"sources.a.upsample_long.{field}:" in str(e)
    assert "\n" not in str(e)
