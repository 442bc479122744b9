"""Input files, checked where they are read: templates against the first record (at load),
invalid UTF-8 (file and byte offset, or `errors: replace`), a JSONL byte-order mark, whole JSON
decoder messages, and broken model or tokenizer JSON named as what it is. One line each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cptkit.cli import main
from cptkit.data.shards import Shard
from cptkit.data.sources import iter_documents
from cptkit.data.tokenize import content_key
from cptkit.errors import CptError, RecipeError
from cptkit.recipe import SourceCfg, load_recipe

BAD_BYTE = b"\xff"


@pytest.fixture
def stories(shared) -> Path:
    return shared / "models" / "stories260K"


def recipe(tmp_path: Path, stories: Path, source: dict, model: Path | None = None) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(model or stories)}, "seq_len": 64, "micro_batch": 4, "batch_tokens": 256,
        "sources": {"m": source}, "stages": [{"name": "one", "tokens": 1024, "mix": {"m": 1.0}}]}))
    return path


def refusal(path: Path) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def qa(tmp_path: Path, name: str = "qa.jsonl", prefix: bytes = b"") -> Path:
    path = tmp_path / name
    rows = [{"question": f"what is {i}?", "answer": f"{i}", "n": i} for i in range(3)]
    path.write_bytes(prefix + "".join(json.dumps(r) + "\n" for r in rows).encode())
    return path


def tokenize(*args) -> int:
    return main(["tokenize", "--workers", "1", *map(str, args)])


# ---------------------------------------------------------------------------------------------
# templates, checked at load against each input's first record


@pytest.mark.parametrize("template,expected", [
    ("{}", "`{}` is positional"),
    ("{0}", "`{0}` is positional"),
    ("{question!z}", "`!z` in `{question!z}` is not a conversion"),
    ("{question:abc}", "Invalid format specifier 'abc'"),
    ("{question:{width}}", "names 'width', not a field of this record"),
    ("{question}\n{answr}", "names 'answr', not a field of this record"),
    ("{question.upper}", "reads an attribute"),
    ("{question", "not a valid template"),
    ("{n:s}", "cannot format this record"),
])
def test_a_bad_template_is_one_line_at_load_naming_source_and_template(tmp_path, stories, template, expected):
    message = refusal(recipe(tmp_path, stories, {"paths": [str(qa(tmp_path))], "template": template}))
    assert "sources.m" in message and repr(template) in message and expected in message


def test_a_good_template_and_a_missing_text_field(tmp_path, stories):
    path = qa(tmp_path)
    r = load_recipe(recipe(tmp_path, stories, {"paths": [str(path)], "template": "{question}\n{answer} {n:03d}"}))
    assert list(iter_documents("m", r.sources["m"]))[1] == "what is 1?\n1 001"
    message = refusal(recipe(tmp_path, stories, {"paths": [str(path)]}))
    assert f"sources.m: {path}:1: no `text` field" in message and "'question', 'answer', 'n'" in message


def test_cpt_tokenize_checks_the_template_first(tmp_path, stories, capsys):
    assert tokenize("--tokenizer", stories, "--output", tmp_path / "out", "--template", "{x!z}", qa(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--template: `!z` in `{x!z}` is not a conversion" in err
    assert not list(tmp_path.glob("out*"))


# ---------------------------------------------------------------------------------------------
# invalid UTF-8: the file and the byte offset, or `errors: replace`


def bad_utf8(tmp_path: Path, fmt: str) -> tuple[Path, int]:
    """A file of the format with one bad byte deep in it (past the first 1 MiB chunk for text)."""
    if fmt == "jsonl":
        head = b'{"text": "fine"}\n' * 3 + b'{"text": "caf'
        tail = b'"}\n{"text": "after"}\n'
    else:
        sep = b"\n\n" if fmt == "text" else b"\n"
        head = sep.join([b"x" * 1000] * 1100) + sep + "café ".encode() * 10
        tail = sep + b"after" + sep
    path = tmp_path / f"bad.{'jsonl' if fmt == 'jsonl' else 'txt'}"
    path.write_bytes(head + BAD_BYTE + tail)
    return path, len(head)


@pytest.mark.parametrize("fmt", ["text", "lines", "jsonl"])
def test_invalid_utf8_names_the_file_and_byte(tmp_path, fmt):
    path, offset = bad_utf8(tmp_path, fmt)
    with pytest.raises(CptError) as e:
        list(iter_documents("m", SourceCfg(paths=[path], format=fmt)))
    assert f"{path}: not valid UTF-8 at byte {offset} " in str(e.value) and "(source `m`)" in str(e.value)
    assert "errors: replace" in str(e.value) and "\n" not in str(e.value)
    docs = list(iter_documents("m", SourceCfg(paths=[path], format=fmt, errors="replace")))
    assert any("\ufffd" in d for d in docs) and docs[-1] == "after"


def test_cpt_tokenize_refuses_invalid_utf8_and_replaces_it_when_asked(tmp_path, stories, capsys):
    path, offset = bad_utf8(tmp_path, "lines")
    out = tmp_path / "out" / "bad"
    assert tokenize("--tokenizer", stories, "--output", out, "--format", "lines", path) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("cpt: error: ") and f"{path}: not valid UTF-8 at byte {offset} (line 1101" in err
    assert not Path(f"{out}.bin").exists()
    assert tokenize("--tokenizer", stories, "--output", out, "--format", "lines", "--errors", "replace", path) == 0
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["options"]["errors"] == "replace" and len(Shard(out)) == 1102


def test_errors_replace_is_part_of_the_shard_key_only_when_set(tmp_path, stories):
    path, _ = bad_utf8(tmp_path, "text")
    strict = SourceCfg(paths=[path])
    inputs = [{"sha256": "0" * 64}]
    assert content_key("fp", inputs, strict) != content_key("fp", inputs, SourceCfg(paths=[path], errors="replace"))
    # the key of a source without the option is the one shards made before the option carry
    assert content_key("fp", inputs, strict) == content_key("fp", inputs, SourceCfg(paths=[path], errors="strict"))
    r = load_recipe(recipe(tmp_path, stories, {"paths": [str(path)], "errors": "replace"}))
    assert r.sources["m"].errors == "replace"


def test_errors_on_a_source_that_is_not_decoded_is_refused(tmp_path, stories):
    path = tmp_path / "d.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"]}), path)
    message = refusal(recipe(tmp_path, stories, {"paths": [str(path)], "errors": "replace"}))
    assert "sources.m.errors: only text, lines and jsonl files are decoded" in message


def test_invalid_utf8_in_the_first_record_is_found_at_load(tmp_path, stories):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "a' + BAD_BYTE + b'"}\n')
    assert f"{path}: not valid UTF-8 at byte 11 (line 1, byte 0xff)" in refusal(
        recipe(tmp_path, stories, {"paths": [str(path)]}))


# ---------------------------------------------------------------------------------------------
# JSONL: a byte-order mark, and whole decoder messages


def test_jsonl_with_a_byte_order_mark_is_read(tmp_path, stories):
    path = qa(tmp_path, prefix=b"\xef\xbb\xbf")
    r = load_recipe(recipe(tmp_path, stories, {"paths": [str(path)], "template": "{question}"}))
    assert list(iter_documents("m", r.sources["m"])) == ["what is 0?", "what is 1?", "what is 2?"]


def test_a_bad_jsonl_line_names_file_line_column_and_the_decoders_message(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "fine", oops}\n')
    with pytest.raises(CptError) as e:
        list(iter_documents("m", SourceCfg(paths=[path])))
    assert str(e.value) == (f"{path}:3: not valid JSON at column 18 (Expecting property name enclosed in "
                            "double quotes)")


def test_a_prefix_shard_with_broken_metadata_is_one_whole_line(tmp_path, stories, shared):
    from cptkit.data.tokenize import prepare_source
    from cptkit.model.load import load_tokenizer

    prefix = tmp_path / "old"
    for ext in (".bin", ".idx"):
        Path(f"{prefix}{ext}").write_bytes(b"")
    Path(f"{prefix}.json").write_text('{"tokenizer": {"fingerprint": "x"}\n "key": 1}')
    with pytest.raises(CptError) as e:
        prepare_source("old", SourceCfg(prefix=prefix), load_tokenizer(stories), tmp_path)
    assert f"sources.old.prefix: {prefix}.json is not valid JSON (line 2, column 2: Expecting ',' delimiter)" in str(e.value)


# ---------------------------------------------------------------------------------------------
# broken model and tokenizer JSON, named as what it is


def model_copy(tmp_path: Path, stories: Path, name: str, text: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(stories, folder)
    (folder / name).write_text(text)
    return folder


def test_a_broken_model_config_is_named_at_load_not_as_the_tokenizer(tmp_path, stories):
    folder = model_copy(tmp_path, stories, "config.json", '{"hidden_size": 64,')
    path = recipe(tmp_path, stories, {"paths": [str(qa(tmp_path))], "template": "{question}"}, model=folder)
    message = refusal(path)
    assert f"model.path: the model's config {folder / 'config.json'} is not valid JSON (line 1, column 20:" in message
    assert "tokenizer" not in message
    from cptkit.model.load import load_tokenizer

    with pytest.raises(CptError, match=r"the model's config .*config.json is not valid JSON \(line 1, column 20"):
        load_tokenizer(folder)


@pytest.mark.parametrize("text,expected", [
    ('{"version": "1.0", "model": ', "is not valid JSON (line 1, column 29: Expecting value)"),
    ("[1, 2, 3]", "is not a JSON object (it holds a list)"),
])
def test_a_broken_tokenizer_json_is_one_line_naming_the_file(tmp_path, stories, capsys, text, expected):
    folder = model_copy(tmp_path, stories, "tokenizer.json", text)
    assert tokenize("--tokenizer", folder, "--output", tmp_path / "out", "--template", "{question}", qa(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--tokenizer: the tokenizer's tokenizer.json {folder / 'tokenizer.json'} {expected}" in err


def test_a_large_jsonl_reads_the_same_with_and_without_a_bom(tmp_path):
    rows = "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5000)).encode()
    plain, bom = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    plain.write_bytes(rows)
    bom.write_bytes(b"\xef\xbb\xbf" + rows)
    a, b = (list(iter_documents("m", SourceCfg(paths=[p]))) for p in (plain, bom))
    assert a == b and len(a) == 5000 and np.all([d.startswith("doc ") for d in b])
