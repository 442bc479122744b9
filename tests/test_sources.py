"""Behavioural tests for cptkit.data.sources: documents out of text, lines, JSONL and Parquet files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cptkit.data.sources import iter_documents
from cptkit.errors import CptError
from cptkit.recipe import SourceCfg

CHUNK = 1 << 20  # the streaming reader's chunk, in characters (ASCII here, so also bytes)


def docs(tmp_path: Path, name: str, content: str | bytes, **cfg) -> list[str]:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return list(iter_documents("src", SourceCfg(paths=[path], **cfg)))


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def filler(n: int, seed: str) -> str:
    """`n` ASCII characters of words, no whitespace at either end and no blank line inside."""
    return (f"{seed} lorem ipsum dolor sit amet " * (n // 20 + 2))[: n - 1] + "z"


# ---------------------------------------------------------------------------------------------
# text


def test_text_custom_separator_splits_only_on_it_and_drops_empty_docs(tmp_path):
    content = "doc one<|endoftext|>doc two\n\nstill two<|endoftext|>  \n<|endoftext|>doc three\n"
    got = docs(tmp_path, "a.txt", content, separator="<|endoftext|>")
    assert got == ["doc one", "doc two\n\nstill two", "doc three"]


def test_text_default_separator_is_a_blank_line(tmp_path):
    content = "first para\nline two\n\n\nsecond para\n\n\n\nthird para"
    got = docs(tmp_path, "a.txt", content)
    assert got == ["first para\nline two", "second para", "third para"]


def test_text_crlf_blank_lines_separate_documents(tmp_path):
    got = docs(tmp_path, "a.txt", b"one\r\nmore\r\n\r\ntwo\r\n")
    assert got == ["one\nmore", "two"]


@pytest.mark.parametrize("separator", ["<|endoftext|>", None])
@pytest.mark.parametrize("straddles", ["separator", "document"])
def test_text_chunk_boundary_inside_a_separator_or_a_document(tmp_path, separator, straddles):
    sep = separator or "\n\n"
    # the read chunk ends 1 character into the separator, or in the middle of the second document
    first = filler(CHUNK - 1 if straddles == "separator" else CHUNK - 500, "A")
    second = filler(CHUNK // 2, "B")
    third = filler(1000, "C")
    content = first + sep + second + sep + third
    if straddles == "separator":
        assert content.index(sep) < CHUNK < content.index(sep) + len(sep)
    else:
        assert content.index(sep) + len(sep) < CHUNK < content.index(sep, len(first) + 1)
    assert len(content) > CHUNK
    got = docs(tmp_path, "big.txt", content, separator=separator)
    assert got == [first, second, third]


# ---------------------------------------------------------------------------------------------
# lines


def test_lines_handles_crlf_and_skips_blank_lines(tmp_path):
    got = docs(tmp_path, "a.txt", b"alpha one\r\n\r\nbeta two\r\n   \r\n\ngamma three", format="lines")
    assert got == ["alpha one", "beta two", "gamma three"]


# ---------------------------------------------------------------------------------------------
# jsonl


def test_jsonl_text_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "first", "id": 1}, {"text": "second\nline"}, {"text": "  "}])
    path.write_text(path.read_text() + "\n")  # a trailing blank line is not a record
    got = list(iter_documents("src", SourceCfg(paths=[path])))
    assert got == ["first", "second\nline"]


def test_jsonl_custom_text_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"body": "x y"}, {"body": 42}])
    assert list(iter_documents("src", SourceCfg(paths=[path], text_field="body"))) == ["x y", "42"]


def test_jsonl_template_over_fields(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "1+1?", "answer": "2"}, {"question": "2+3?", "answer": 5}])
    got = list(iter_documents("src", SourceCfg(paths=[path], template="Q: {question}\nA: {answer}")))
    assert got == ["Q: 1+1?\nA: 2", "Q: 2+3?\nA: 5"]


def test_jsonl_missing_template_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "a", "answer": "b"}, {"question": "c", "answer": "d"},
                                              {"question": "e"}])
    with pytest.raises(CptError) as e:
        list(iter_documents("math", SourceCfg(paths=[path], template="{question}\n{answer}")))
    assert f"{path}:3" in str(e.value)
    assert "answer" in str(e.value)


def test_jsonl_missing_text_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}, {"content": "no text here"}])
    with pytest.raises(CptError) as e:
        list(iter_documents("src", SourceCfg(paths=[path])))
    assert f"{path}:2" in str(e.value)
    assert "text" in str(e.value)


def test_jsonl_invalid_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}, "", '{"text": "broken', {"text": "after"}])
    with pytest.raises(CptError) as e:
        list(iter_documents("src", SourceCfg(paths=[path])))
    assert f"{path}:3" in str(e.value)
    assert "JSON" in str(e.value)


def test_jsonl_record_that_is_not_an_object_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}, "42"])
    with pytest.raises(CptError) as e:
        list(iter_documents("src", SourceCfg(paths=[path])))
    assert f"{path}:2" in str(e.value)


# ---------------------------------------------------------------------------------------------
# parquet


def test_parquet_text_column(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["alpha", "", "gamma delta"], "n": [1, 2, 3]}), path, row_group_size=2)
    assert list(iter_documents("src", SourceCfg(paths=[path]))) == ["alpha", "gamma delta"]


def test_parquet_template(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"question": ["1+1?", "2+2?"], "answer": ["2", "4"]}), path)
    got = list(iter_documents("src", SourceCfg(paths=[path], template="{question} => {answer}")))
    assert got == ["1+1? => 2", "2+2? => 4"]


def test_parquet_missing_column_is_a_cpt_error_naming_the_file(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"question": ["1+1?"]}), path)
    with pytest.raises(CptError) as e:
        list(iter_documents("src", SourceCfg(paths=[path], template="{question} => {answer}")))
    assert str(path) in str(e.value)


def test_not_parquet_is_a_cpt_error(tmp_path):
    path = tmp_path / "a.parquet"
    path.write_text("not parquet at all")
    with pytest.raises(CptError, match="Parquet"):
        list(iter_documents("src", SourceCfg(paths=[path])))


# ---------------------------------------------------------------------------------------------
# format inference


@pytest.mark.parametrize(("names", "fmt"), [
    (["a.jsonl"], "jsonl"),
    (["a.JSON"], "jsonl"),
    (["a.jsonl", "b.json"], "jsonl"),
    (["a.parquet"], "parquet"),
    (["a.txt"], "text"),
    (["a.md"], "text"),
    (["a.jsonl", "b.txt"], "text"),
])
def test_format_is_inferred_from_extension(names, fmt):
    assert SourceCfg(paths=[Path(n) for n in names]).resolved_format() == fmt


def test_explicit_format_wins_over_extension():
    assert SourceCfg(paths=[Path("a.jsonl")], format="lines").resolved_format() == "lines"


def test_inferred_format_drives_parsing(tmp_path):
    """The same bytes read as JSONL by extension, and as raw lines when told so."""
    line = json.dumps({"text": "inside"})
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(line + "\n")
    assert list(iter_documents("s", SourceCfg(paths=[jsonl]))) == ["inside"]
    assert list(iter_documents("s", SourceCfg(paths=[jsonl], format="lines"))) == [line]


def test_documents_of_several_files_come_in_file_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a1\n\na2")
    b.write_text("b1")
    assert list(iter_documents("s", SourceCfg(paths=[b, a]))) == ["b1", "a1", "a2"]
