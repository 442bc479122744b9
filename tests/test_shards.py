"""Behavioural tests for Megatron .bin/.idx shards, source tokenization and validation carving."""

from __future__ import annotations

import functools
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from cptkit.data.shards import Shard, ShardWriter, token_dtype
from cptkit.data.tokenize import carve_validation, prepare_source, tokenizer_fingerprint
from cptkit.errors import CptError
from cptkit.recipe import SourceCfg

MAGIC = b"MMIDIDX\x00\x00"
DOCS = [[1, 2, 3], [4], [5, 6]]


def write_shard(prefix: Path, docs, dtype) -> Path:
    with ShardWriter(prefix, dtype) as w:
        for d in docs:
            w.add(d)
    return prefix


def expected_idx(lengths: list[int], itemsize: int, code: int) -> bytes:
    """The Megatron index, byte for byte, built independently of the writer."""
    pointers, at = [], 0
    for n in lengths:
        pointers.append(at)
        at += n * itemsize
    return (MAGIC + struct.pack("<Q", 1) + struct.pack("<B", code) + struct.pack("<Q", len(lengths))
            + struct.pack("<Q", len(lengths) + 1) + struct.pack(f"<{len(lengths)}i", *lengths)
            + struct.pack(f"<{len(lengths)}q", *pointers) + struct.pack(f"<{len(lengths) + 1}q", *range(len(lengths) + 1)))


# ---------------------------------------------------------------------------------------------
# the format


def test_token_dtype_by_vocab_size():
    assert token_dtype(512) == np.uint16
    assert token_dtype(65_536) == np.uint16  # ids 0..65535 all fit
    assert token_dtype(65_537) == np.int32
    assert token_dtype(100_000) == np.int32


@pytest.mark.parametrize(("dtype", "code"), [(np.uint16, 8), (np.int32, 4)])
def test_index_and_bin_bytes_are_megatron_layout(tmp_path, dtype, code):
    prefix = write_shard(tmp_path / "s", DOCS, dtype)
    itemsize = np.dtype(dtype).itemsize
    idx = Path(f"{prefix}.idx").read_bytes()
    assert idx[:9] == MAGIC
    assert struct.unpack("<Q", idx[9:17]) == (1,)
    assert idx[17] == code
    assert struct.unpack("<QQ", idx[18:34]) == (3, 4)
    assert idx == expected_idx([3, 1, 2], itemsize, code)
    little = np.dtype(dtype).newbyteorder("<")
    assert Path(f"{prefix}.bin").read_bytes() == np.array([1, 2, 3, 4, 5, 6], dtype=little).tobytes()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_round_trip(tmp_path, dtype):
    docs = [[0, 511, 7], [65_535 if dtype == np.uint16 else 100_000], list(range(300)), [9, 9]]
    shard = Shard(write_shard(tmp_path / "s", docs, dtype))
    assert shard.dtype == np.dtype(dtype)
    assert len(shard) == len(docs)
    assert [shard[i].tolist() for i in range(len(shard))] == docs
    assert shard.num_tokens == sum(map(len, docs))
    assert shard.lengths.dtype == np.int32 and shard.lengths.tolist() == [3, 1, 300, 2]
    itemsize = np.dtype(dtype).itemsize
    assert shard.pointers.dtype == np.int64
    assert shard.pointers.tolist() == [0, 3 * itemsize, 4 * itemsize, 304 * itemsize]  # bytes, not tokens
    assert shard.doc_idx.tolist() == [0, 1, 2, 3, 4]


def test_shard_files_appear_only_on_close(tmp_path):
    prefix = tmp_path / "s"
    with ShardWriter(prefix, np.uint16) as w:
        w.add([1, 2])
        assert not Path(f"{prefix}.bin").exists() and not Path(f"{prefix}.idx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin", "s.idx"]


def test_exception_inside_writer_leaves_no_files(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path / "s", np.uint16) as w:
            w.add([1, 2, 3])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext, cut", [(".bin", 2), (".idx", 5)])
def test_truncated_file_is_refused_naming_it(tmp_path, ext, cut):
    prefix = write_shard(tmp_path / "s", DOCS, np.uint16)
    path = Path(f"{prefix}{ext}")
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(CptError, match=rf"s\{ext}"):
        Shard(prefix)


def test_missing_bin_is_refused(tmp_path):
    prefix = write_shard(tmp_path / "s", DOCS, np.uint16)
    Path(f"{prefix}.bin").unlink()
    with pytest.raises(CptError, match=r"s\.bin"):
        Shard(prefix)


def test_bad_index_header_is_refused(tmp_path):
    prefix = write_shard(tmp_path / "s", DOCS, np.uint16)
    idx = Path(f"{prefix}.idx")
    idx.write_bytes(b"NOTMEGA\x00\x00" + idx.read_bytes()[9:])
    with pytest.raises(CptError, match="header"):
        Shard(prefix)


@pytest.mark.parametrize("damage", ["pointer", "doc_idx", "negative_length"])
def test_index_whose_sizes_do_not_add_up_is_refused(tmp_path, damage):
    """A header that reads fine but arrays that disagree (a foreign or damaged index) would read
    the wrong tokens; it is refused naming the file."""
    prefix = write_shard(tmp_path / "s", DOCS, np.uint16)
    idx = Path(f"{prefix}.idx")
    data = bytearray(idx.read_bytes())
    n = len(DOCS)
    lengths_at, pointers_at = 34, 34 + 4 * n
    doc_idx_at = pointers_at + 8 * n
    if damage == "pointer":
        data[pointers_at + 8 : pointers_at + 16] = np.int64(2).tobytes()  # second document starts too early
    elif damage == "doc_idx":
        data[doc_idx_at + 8 * n : doc_idx_at + 8 * n + 8] = np.int64(n + 5).tobytes()
    else:
        data[lengths_at : lengths_at + 4] = np.int32(-3).tobytes()
    idx.write_bytes(bytes(data))
    with pytest.raises(CptError, match=r"s\.idx: .*do not add up|s\.bin: expected"):
        Shard(prefix)


def test_prefix_shard_too_narrow_for_the_tokenizer_is_refused(tmp_path):
    from cptkit.data.tokenize import _existing_shard

    prefix = write_shard(tmp_path / "s", DOCS, np.uint16)
    Path(f"{prefix}.json").write_text('{"tokenizer": {"fingerprint": "abc"}}')
    assert _existing_shard("old", prefix, "abc", 50_000).prefix == str(prefix)
    with pytest.raises(CptError, match="sources.old.prefix: .*uint16 tokens but the tokenizer has 70,000 ids"):
        _existing_shard("old", prefix, "abc", 70_000)


def test_missing_index_is_refused(tmp_path):
    with pytest.raises(CptError, match="not found"):
        Shard(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# prepare_source with the real stories260K tokenizer

TEXTS = [
    "Once upon a time, there was a little cat named Tom.",
    "Tom liked to play in the garden.\nHe saw a big red ball.",
    "The sun was hot. Lily and Ben went to the park to play.",
    "One day, a bird sang a happy song!",
]


@functools.lru_cache(maxsize=None)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture
def tokenizer(shared):
    return _load_tokenizer(str(shared / "models" / "stories260K"))


def corpus(tmp_path: Path, texts=TEXTS) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(texts) + "\n")
    return path


def shard_docs(prefix: str) -> list[list[int]]:
    shard = Shard(prefix)
    return [shard[i].tolist() for i in range(len(shard))]


def test_prepare_source_tokenizes_each_document_with_eos(tmp_path, tokenizer):
    src = SourceCfg(paths=[corpus(tmp_path)])
    tok = prepare_source("stories", src, tokenizer, tmp_path / "shards")
    expected = [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in TEXTS]
    assert shard_docs(tok.prefix) == expected
    assert Shard(tok.prefix).dtype == np.uint16  # vocab 512
    meta = json.loads(Path(f"{tok.prefix}.json").read_text())
    assert meta["documents"] == len(TEXTS)
    assert meta["tokens"] == sum(map(len, expected))
    assert meta["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert meta["complete"] is True
    assert tok.meta == meta


def test_prepare_source_reuses_an_unchanged_shard(tmp_path, tokenizer):
    src = SourceCfg(paths=[corpus(tmp_path)])
    first = prepare_source("stories", src, tokenizer, tmp_path / "shards")
    files = [Path(f"{first.prefix}{ext}") for ext in (".bin", ".idx", ".json")]
    old = 1_000_000_000_000_000_000  # 2001, far from "now", so any rewrite shows
    for f in files:
        os.utime(f, ns=(old, old))
    again = prepare_source("stories", src, tokenizer, tmp_path / "shards")
    assert again.prefix == first.prefix and again.key == first.key
    assert [f.stat().st_mtime_ns for f in files] == [old] * 3
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == sorted(f.name for f in files)


def test_changed_input_gets_a_new_shard(tmp_path, tokenizer):
    path = corpus(tmp_path)
    first = prepare_source("stories", SourceCfg(paths=[path]), tokenizer, tmp_path / "shards")
    corpus(tmp_path, TEXTS[:2] + ["A brand new story about a dog."])
    second = prepare_source("stories", SourceCfg(paths=[path]), tokenizer, tmp_path / "shards")
    assert second.prefix != first.prefix
    assert shard_docs(second.prefix)[-1] == tokenizer("A brand new story about a dog.").input_ids + [tokenizer.eos_token_id]
    assert len(shard_docs(second.prefix)) == 3


def test_changed_parsing_options_get_a_new_shard(tmp_path, tokenizer):
    path = corpus(tmp_path)
    first = prepare_source("stories", SourceCfg(paths=[path]), tokenizer, tmp_path / "shards")
    lines = prepare_source("stories", SourceCfg(paths=[path], format="lines"), tokenizer, tmp_path / "shards")
    assert lines.prefix != first.prefix
    assert lines.meta["documents"] == 5  # one text holds two lines


def test_prefix_source_with_matching_tokenizer_is_used_as_is(tmp_path, tokenizer):
    made = prepare_source("stories", SourceCfg(paths=[corpus(tmp_path)]), tokenizer, tmp_path / "shards")
    tok = prepare_source("pre", SourceCfg(prefix=Path(made.prefix)), tokenizer, tmp_path / "other")
    assert tok.prefix == made.prefix
    assert shard_docs(tok.prefix) == shard_docs(made.prefix)
    assert not (tmp_path / "other").exists()


def test_prefix_source_from_another_tokenizer_is_refused(tmp_path, tokenizer):
    made = prepare_source("stories", SourceCfg(paths=[corpus(tmp_path)]), tokenizer, tmp_path / "shards")
    meta_path = Path(f"{made.prefix}.json")
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"]["fingerprint"] = "0123456789abcdef"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CptError, match="another tokenizer") as e:
        prepare_source("pre", SourceCfg(prefix=Path(made.prefix)), tokenizer, tmp_path / "shards")
    assert "sources.pre.prefix" in str(e.value)


def test_prefix_source_without_metadata_is_refused(tmp_path, tokenizer):
    prefix = write_shard(tmp_path / "bare", DOCS, np.uint16)
    with pytest.raises(CptError, match="bare.json"):
        prepare_source("pre", SourceCfg(prefix=prefix), tokenizer, tmp_path / "shards")


def test_source_without_documents_is_refused(tmp_path, tokenizer):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n   \n\n")
    with pytest.raises(CptError, match="no documents"):
        prepare_source("empty", SourceCfg(paths=[path]), tokenizer, tmp_path / "shards")


# ---------------------------------------------------------------------------------------------
# carve_validation


@pytest.fixture
def varied_shard(tmp_path) -> Shard:
    rng = np.random.default_rng(123)
    docs = [list(range(int(n))) for n in rng.integers(5, 60, size=200)]
    return Shard(write_shard(tmp_path / "v", docs, np.uint16))


def test_carve_is_deterministic_for_a_seed(varied_shard):
    a = carve_validation(varied_shard, 500, seed=0, name="wiki")
    b = carve_validation(varied_shard, 500, seed=0, name="wiki")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, carve_validation(varied_shard, 500, seed=1, name="wiki"))
    assert not np.array_equal(a, carve_validation(varied_shard, 500, seed=0, name="math"))


def test_carve_takes_whole_documents_just_past_the_request(varied_shard):
    ids = carve_validation(varied_shard, 500, seed=0, name="wiki")
    lengths = varied_shard.lengths[ids].astype(np.int64)
    assert np.array_equal(ids, np.unique(ids))  # sorted, distinct document ids
    assert 0 <= ids[0] and ids[-1] < len(varied_shard)
    assert lengths.sum() >= 500
    assert lengths.sum() - lengths.max() < 500  # no document more than needed
    assert lengths.sum() * 2 <= varied_shard.num_tokens


def test_carve_refuses_a_source_too_small(varied_shard):
    total = varied_shard.num_tokens
    with pytest.raises(CptError, match="too few"):
        carve_validation(varied_shard, total // 2 + 100, seed=0, name="wiki")
    with pytest.raises(CptError, match="too few"):
        carve_validation(varied_shard, total + 1, seed=0, name="wiki")


def test_resumed_run_refuses_a_changed_source_before_any_work(tmp_path, tokenizer):
    src = SourceCfg(paths=[corpus(tmp_path)], format="lines")
    first = prepare_source("s", src, tokenizer, tmp_path / "shards")
    assert prepare_source("s", src, tokenizer, tmp_path / "shards", expect_key=first.key).key == first.key
    src.paths[0].write_text("a changed corpus\n")
    before = sorted(p.name for p in (tmp_path / "shards").iterdir())
    with pytest.raises(CptError, match=f"changed since this run.*{first.key}"):
        prepare_source("s", src, tokenizer, tmp_path / "shards", expect_key=first.key)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == before  # nothing written
