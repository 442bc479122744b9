"""`cpt tokenize`: Megatron shards that Megatron itself reads back, workers that change nothing,
interruptions that resume, Hugging Face datasets, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cptkit.data.encode as encode
import cptkit.data.tokenize as tokenize_mod
from cptkit.cli import main
from cptkit.data.shards import Shard

DOCS = 300  # a slice of the shared TinyStories keeps the tests quick


@pytest.fixture(scope="module")
def gpt2(shared):
    from cptkit.model.load import load_tokenizer

    return load_tokenizer(shared / "tokenizers" / "gpt2")


@pytest.fixture
def wiki(tmp_path, shared) -> tuple[Path, list[str]]:
    text = (shared / "corpora/en/tinystories.txt").read_text()
    lines = [d.strip() for d in text.split("<|endoftext|>") if d.strip()][:DOCS]
    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps({"body": l}) + "\n" for l in lines))
    return path, lines


def cpt(*args: str) -> int:
    return main(["tokenize", *map(str, args)])


def expected_docs(tokenizer, texts):
    return [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def test_megatron_reads_back_the_tokenizers_ids(tmp_path, wiki, gpt2, shared):
    """The independent reader is Megatron-Core's own IndexedDataset."""
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset", reason="megatron-core not installed")
    path, lines = wiki
    assert cpt("--tokenizer", shared / "tokenizers/gpt2", "--output", tmp_path / "out/wiki", "--text-field", "body",
               "--workers", 2, path) == 0
    ds = indexed.IndexedDataset(str(tmp_path / "out/wiki"), mmap=True)
    assert len(ds) == len(lines)
    assert ds.index.dtype == np.uint16  # GPT-2's 50,257 ids fit
    got = [ds[i].tolist() for i in range(len(ds))]
    assert got == expected_docs(gpt2, lines)
    meta = json.loads((tmp_path / "out/wiki.json").read_text())
    assert meta["documents"] == len(lines) and meta["tokens"] == sum(map(len, got))
    assert meta["inputs"][0]["bytes"] == path.stat().st_size and len(meta["inputs"][0]["sha256"]) == 64
    assert meta["inputs"][0]["first_document"] == 0 and meta["inputs"][0]["documents"] == len(lines)


def test_a_vocabulary_over_65536_writes_int32_that_megatron_reads(tmp_path):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset", reason="megatron-core not installed")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["</s>", "<unk>"] + [f"w{i}" for i in range(70_000)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path / "tok")
    texts = ["w1 w69999 w65536", "w70 w65535"]
    (tmp_path / "in.txt").write_text("\n".join(texts))
    assert cpt("--tokenizer", tmp_path / "tok", "--output", tmp_path / "big", "--format", "lines", tmp_path / "in.txt") == 0
    ds = indexed.IndexedDataset(str(tmp_path / "big"), mmap=True)
    assert ds.index.dtype == np.int32
    assert [ds[i].tolist() for i in range(2)] == [[3, 70001, 65538, 0], [72, 65537, 0]]


def test_workers_change_nothing_and_a_rerun_is_a_no_op(tmp_path, wiki, shared):
    path, _ = wiki
    tok = shared / "tokenizers/gpt2"
    for n in (1, 2):
        assert cpt("--tokenizer", tok, "--output", tmp_path / f"w{n}", "--text-field", "body", "--workers", n, path) == 0
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1{ext}").read_bytes() == (tmp_path / f"w2{ext}").read_bytes()
    before = [(tmp_path / f"w1{ext}").stat().st_mtime_ns for ext in (".bin", ".idx", ".json")]
    assert cpt("--tokenizer", tok, "--output", tmp_path / "w1", "--text-field", "body", path) == 0
    assert [(tmp_path / f"w1{ext}").stat().st_mtime_ns for ext in (".bin", ".idx", ".json")] == before


def test_an_interrupted_run_leaves_nothing_complete_and_a_rerun_continues(tmp_path, wiki, shared, monkeypatch):
    path, lines = wiki
    tok = shared / "tokenizers/gpt2"
    args = ["--tokenizer", tok, "--text-field", "body", "--workers", 1, path]
    assert cpt("--output", tmp_path / "whole", *args) == 0

    monkeypatch.setattr(tokenize_mod, "_COMMIT_SECONDS", 0.0)  # commit after every batch
    monkeypatch.setattr(tokenize_mod, "_BATCH_DOCS", 40)
    encoded = []
    real = encode._encode

    def interrupted(tokenizer, texts, eos, dtype):
        if len(encoded) >= 160:
            raise KeyboardInterrupt  # the user's Ctrl-C, in the middle of the corpus
        encoded.extend(texts)
        return real(tokenizer, texts, eos, dtype)

    monkeypatch.setattr(encode, "_encode", interrupted)
    out = tmp_path / "part"
    assert cpt("--output", out, *args) == 130
    assert not any(Path(f"{out}{ext}").exists() for ext in (".bin", ".idx", ".json"))
    progress = json.loads(Path(f"{out}.progress.json").read_text())
    assert progress["documents"] == 160
    # a kill between commits leaves bytes past the commit point; the resume must drop them
    with open(f"{out}.bin.tmp", "ab") as f:
        f.write(b"\x07" * 1000)
    with open(f"{out}.lengths.tmp", "ab") as f:
        f.write(np.array([500, 500], dtype="<i4").tobytes())

    encoded.clear()
    monkeypatch.setattr(encode, "_encode", lambda *a: (encoded.extend(a[1]), real(*a))[1])
    assert cpt("--output", out, *args) == 0
    assert encoded == lines[160:]  # only the rest was encoded again
    for ext in (".bin", ".idx"):
        assert Path(f"{out}{ext}").read_bytes() == (tmp_path / f"whole{ext}").read_bytes()
    assert not any(Path(f"{out}{ext}").exists() for ext in (".bin.tmp", ".lengths.tmp", ".progress.json"))


def test_hugging_face_dataset_folders(tmp_path, gpt2, shared, capsys):
    datasets = pytest.importorskip("datasets", reason="datasets not installed")
    texts = ["First document.", "", "Second one, a little longer.", "Third."]
    datasets.Dataset.from_dict({"text": texts, "n": [1, 2, 3, 4]}).save_to_disk(str(tmp_path / "ds"))
    assert cpt("--tokenizer", shared / "tokenizers/gpt2", "--output", tmp_path / "hf", tmp_path / "ds") == 0
    shard = Shard(tmp_path / "hf")
    assert [shard[i].tolist() for i in range(len(shard))] == expected_docs(gpt2, [t for t in texts if t])
    assert cpt("--tokenizer", shared / "tokenizers/gpt2", "--output", tmp_path / "tpl", "--template", "{n}: {text}",
               tmp_path / "ds") == 0
    shard = Shard(tmp_path / "tpl")
    assert shard[1].tolist() == expected_docs(gpt2, ["2: "])[0]

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "dd"))
    assert cpt("--tokenizer", shared / "tokenizers/gpt2", "--output", tmp_path / "dd-out", tmp_path / "dd") == 2
    assert "a DatasetDict; pass one split's folder (train)" in capsys.readouterr().err
    assert not list(tmp_path.glob("dd-out*"))


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cptkit.cli", "tokenize", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("case", ["missing", "empty", "bad-json", "separator-on-jsonl", "workers", "tokenizer"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, shared, case):
    tok, out = shared / "tokenizers/gpt2", tmp_path / "out"
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "hello"}\n')
    args = {
        "missing": ["--tokenizer", tok, "--output", out, tmp_path / "nope.txt"],
        "empty": ["--tokenizer", tok, "--output", out, tmp_path / "empty.txt"],
        "bad-json": ["--tokenizer", tok, "--output", out, good, tmp_path / "bad.jsonl"],
        "separator-on-jsonl": ["--tokenizer", tok, "--output", out, "--separator", "###", good],
        "workers": ["--tokenizer", tok, "--output", out, "--workers", 0, good],
        "tokenizer": ["--tokenizer", tmp_path, "--output", out, good],
    }[case]
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    expected = {"missing": "nope.txt: file not found", "empty": "empty.txt: no documents found",
                "bad-json": "bad.jsonl:2: not valid JSON", "separator-on-jsonl": "--separator: only the `text` format",
                "workers": "--workers: 0", "tokenizer": "--tokenizer: cannot load a tokenizer"}[case]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # progress bars may come before it
    assert last.startswith("cpt: error: ") and expected in last, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error") == 1
    assert not list(tmp_path.glob("out*"))


def test_an_existing_shard_from_other_inputs_is_not_overwritten_silently(tmp_path, shared, capsys):
    tok = shared / "tokenizers/gpt2"
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("alpha\n\nbeta")
    b.write_text("gamma")
    assert cpt("--tokenizer", tok, "--output", tmp_path / "s", a) == 0
    before = (tmp_path / "s.bin").read_bytes()
    assert cpt("--tokenizer", tok, "--output", tmp_path / "s", b) == 2
    assert "exists and was made from other inputs" in capsys.readouterr().err
    assert (tmp_path / "s.bin").read_bytes() == before
    assert cpt("--tokenizer", tok, "--output", tmp_path / "s", "--overwrite", b) == 0
    assert len(Shard(tmp_path / "s")) == 1
