"""Tests for cptkit.demo.corpora: the four demo corpora and the demo tokenizer."""

import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest

from cptkit.demo.corpora import (
    CORPORA,
    SEPARATOR,
    iter_texts,
    read_documents,
    train_tokenizer,
    write_corpora,
)

# Large enough that every corpus has well over 100 documents (stdlib chunks are up to 4000 chars),
# small enough that the whole file runs in a few seconds.
CHARS = 500_000
FILES = {"english": "english.txt", "code": "code.jsonl", "arithmetic": "arithmetic.jsonl",
         "traces": "traces.txt"}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The four corpora written once at seed 0: (directory, name -> path)."""
    out = tmp_path_factory.mktemp("corpora")
    return out, write_corpora(out, seed=0, chars_per_corpus=CHARS)


@pytest.fixture(scope="module")
def tokenizer_dir(corpora, tmp_path_factory):
    """A tokenizer trained on the module's corpora."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    return train_tokenizer(iter_texts(corpora[0]), out, vocab_size=1024)


def _file_bytes(paths):
    return {name: Path(p).read_bytes() for name, p in paths.items()}


def test_returns_the_four_declared_files(corpora):
    out, paths = corpora
    assert set(paths) == set(CORPORA) == set(FILES)
    for name, path in paths.items():
        assert Path(path) == out / FILES[name] == out / CORPORA[name]["paths"][0]
        assert Path(path).is_file()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = _file_bytes(write_corpora(tmp_path / "a", seed=3, chars_per_corpus=40_000))
    again = _file_bytes(write_corpora(tmp_path / "b", seed=3, chars_per_corpus=40_000))
    other = _file_bytes(write_corpora(tmp_path / "c", seed=4, chars_per_corpus=40_000))
    assert first == again
    for name in CORPORA:
        assert first[name] != other[name], name


def test_english_splits_on_separator(corpora):
    out, paths = corpora
    text = paths["english"].read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split(SEPARATOR)]
    assert all(docs) and len(docs) > 100
    assert f"\n{SEPARATOR}\n" in text
    assert docs == list(read_documents(out, "english"))
    assert not any(ch.isdigit() for ch in text)  # prose only: digits belong to the other corpora


def test_code_is_jsonl_of_stdlib_chunks(corpora):
    out, paths = corpora
    lines = paths["code"].read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) > 100
    assert all(set(r) == {"text"} for r in records)
    assert all(0 < len(r["text"]) <= 4000 for r in records)
    joined = "".join(r["text"] for r in records)
    assert "def " in joined and "import " in joined
    # Chunks are cut at line boundaries: every chunk but a file's last ends with a newline.
    assert sum(r["text"].endswith("\n") for r in records) > 0.9 * len(records)
    assert [r["text"] for r in records] == list(read_documents(out, "code"))


def test_arithmetic_is_jsonl_with_worked_answers(corpora):
    out, paths = corpora
    records = [json.loads(line) for line in paths["arithmetic"].read_text(encoding="utf-8").splitlines()]
    assert len(records) > 100
    for r in records:
        assert set(r) == {"question", "answer"}
        *steps, final = r["answer"].split("\n")
        assert steps and final.startswith("#### ")
        for step in steps:  # every step is a correct integer equation
            a, op, b, eq, c = step.split()
            assert eq == "=" and {"+": int.__add__, "-": int.__sub__, "*": int.__mul__,
                                  "/": int.__floordiv__}[op](int(a), int(b)) == int(c)
        assert final == f"#### {steps[-1].split()[-1]}"
    template = CORPORA["arithmetic"]["template"]
    assert list(read_documents(out, "arithmetic")) == [template.format(**r) for r in records]


def test_traces_one_document_per_line(corpora):
    out, paths = corpora
    text = paths["traces"].read_text(encoding="utf-8")
    lines = [line for line in text.split("\n") if line.strip()]
    assert len(lines) > 100
    docs = list(read_documents(out, "traces"))
    assert docs == lines
    assert all("\n" not in d and "\r" not in d and " ; " in d for d in docs)


@pytest.mark.parametrize("name", list(FILES))
def test_size_close_to_target(corpora, name):
    out, _ = corpora
    chars = sum(len(doc) for doc in read_documents(out, name))
    assert 0.8 * CHARS <= chars <= 1.2 * CHARS


def test_iter_texts_yields_all_documents(corpora):
    out, _ = corpora
    expected = sum(len(list(read_documents(out, name))) for name in CORPORA)
    assert sum(1 for _ in iter_texts(out)) == expected


def _bigram_model(text):
    """Add-one smoothed character-bigram log-probabilities, as a function of (prev, ch)."""
    pairs, firsts = Counter(zip(text, text[1:])), Counter(text[:-1])
    alphabet = 256
    return lambda a, b: math.log((pairs[a, b] + 1) / (firsts[a] + alphabet))


def test_distributions_are_clearly_different(corpora):
    out, _ = corpora
    sample = {name: "\n".join(read_documents(out, name))[:60_000] for name in CORPORA}
    train = {name: text[:40_000] for name, text in sample.items()}
    held = {name: text[40_000:] for name, text in sample.items()}
    models = {name: _bigram_model(text) for name, text in train.items()}

    def loss(model, text):
        return -sum(model(a, b) for a, b in zip(text, text[1:])) / (len(text) - 1)

    for name, model in models.items():
        own = loss(model, held[name])
        for other in CORPORA:
            if other != name:
                # Code comments are English, so code -> english is the closest pair (~0.5 nats/char).
                margin = 1.0 if name == "english" else 0.3
                assert loss(model, held[other]) > own + margin, (name, other)


def test_tokenizer_loads_and_round_trips(corpora, tokenizer_dir):
    from transformers import AutoTokenizer

    assert (tokenizer_dir / "tokenizer.json").is_file()
    assert (tokenizer_dir / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    assert 256 < len(tok) <= 1024

    out, _ = corpora
    samples = [next(read_documents(out, name)) for name in CORPORA]
    samples += ["  Hello ,  world !\n\n\tx = {'a': [1, 2]}  # odd   spacing . ", "~`!@#$%^&*()_+|\\"]
    for text in samples:
        ids = tok.encode(text)
        special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        assert not special & set(ids)  # encoding adds no special tokens by itself
        assert tok.decode(ids) == text


def test_writes_nothing_outside_out_dir(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # catches stray writes to relative paths
    data = write_corpora(tmp_path / "out" / "data", seed=1, chars_per_corpus=20_000)
    train_tokenizer(iter_texts(tmp_path / "out" / "data"), tmp_path / "out" / "tok", vocab_size=512)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "out"]
    assert list(cwd.iterdir()) == []
    assert sorted(os.listdir(tmp_path / "out" / "data")) == sorted(p.name for p in data.values())
