"""Reading documents out of raw source files: text with a separator, lines, JSONL, Parquet, and
Hugging Face datasets saved with `save_to_disk` (read as Arrow, no `datasets` import needed).

Text, lines and JSONL are decoded as UTF-8: a byte that is not UTF-8 is an error naming the file
and its offset, unless the source says `errors: replace` (each bad byte becomes U+FFFD)."""

from __future__ import annotations

import codecs
import json
import string
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import CptError

if TYPE_CHECKING:
    from ..recipe import SourceCfg

DEFAULT_SEPARATOR = "\n\n"
DECODED = ("text", "lines", "jsonl")  # formats read from bytes, where `errors:` applies
RECORDS = ("jsonl", "parquet", "hf")  # formats of records, whose text is `text_field` or a template
_CONVERSIONS = (None, "r", "s", "a")


def iter_documents(name: str, src: SourceCfg) -> Iterator[str]:
    """Every non-empty document of a source, in file order. Errors name the file and line."""
    for path in src.paths:
        yield from file_documents(name, src, path)


def file_documents(name: str, src: SourceCfg, path: Path) -> Iterator[str]:
    """The non-empty documents of one input of a source."""
    fmt = src.resolved_format()
    try:
        if fmt == "text":
            yield from _text_docs(path, src.separator or DEFAULT_SEPARATOR, src.errors)
        elif fmt == "lines":
            with open(path, encoding="utf-8", errors=src.errors) as f:
                for line in f:
                    if line.strip():
                        yield line.rstrip("\r\n")
        else:
            render = renderer(name, src)
            for where, record in records(src, path):
                text = render(record, where)
                if text.strip():
                    yield text
    except UnicodeDecodeError:
        raise CptError(utf8_problem(path, name)) from None


def _text_docs(path: Path, separator: str, errors: str) -> Iterator[str]:
    """Split on `separator` while streaming, so a large file never sits in memory whole."""
    pending = ""
    with open(path, encoding="utf-8", errors=errors) as f:
        while chunk := f.read(1 << 20):
            pending += chunk
            *docs, pending = pending.split(separator)
            for d in docs:
                if d.strip():
                    yield d.strip()
    if pending.strip():
        yield pending.strip()


# ---------------------------------------------------------------------------------------------
# records (jsonl, parquet, hf) and the text made of each


def records(src: SourceCfg, path: Path) -> Iterator[tuple[str, dict]]:
    """(where, record) for every record of one input, `where` naming the file and line or row."""
    fmt = src.resolved_format()
    if fmt == "jsonl":
        return jsonl_records(path, src.errors)
    if fmt == "parquet":
        return _parquet_records(path)
    return _hf_records(path)


def template_fields(template: str) -> list[str]:
    """The record fields a template names (in format specs too): `{meta[title]}` names `meta`."""
    fields = []
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is not None:
            fields.append(field.split("[", 1)[0].split(".", 1)[0])
        if spec and "{" in spec:
            fields += template_fields(spec)
    return fields


def template_problem(template: str) -> str | None:
    """What is wrong with a template on its face (before any record is seen), or None."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"not a valid template ({e}); fields look like {{question}}, a literal brace is {{{{ or }}}}"
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        name = field.split("[", 1)[0].split(".", 1)[0]
        if name == "" or name.isdigit():
            return f"`{{{field}}}` is positional; name a record field, like {{question}}"
        if "." in field:  # attribute access would reach into Python objects, never into a record
            return f"`{{{field}}}` reads an attribute; name a record field (or a key inside one: {{meta[title]}})"
        if conversion not in _CONVERSIONS:
            return f"`!{conversion}` in `{{{field}!{conversion}}}` is not a conversion (use !s, !r, !a or none)"
        if spec and "{" in spec and (nested := template_problem(spec)):
            return nested
    return None


def renderer(name: str, src: SourceCfg) -> Callable[[dict, str], str]:
    """A function (record, where) -> text: the template over its fields, or its `text_field`."""
    of = f" (source `{name}`)" if name else ""
    if src.template is None:
        field = src.text_field

        def text_of(record: dict, where: str) -> str:
            if field not in record:
                raise CptError(f"{where}: no `{field}` field{of}; its fields are {_fields(record)}: set "
                               "text_field to one of them, or give a template")
            return str(record[field])

        return text_of
    template = src.template
    fields = template_fields(template)

    def fill(record: dict, where: str) -> str:
        missing = [f for f in fields if f not in record]
        if missing:
            raise CptError(f"{where}: the template {template!r} names {', '.join(map(repr, missing))}, not a field "
                           f"of this record{of}; its fields are {_fields(record)}")
        try:
            return template.format(**record)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise CptError(f"{where}: the template {template!r} cannot format this record{of} "
                           f"({type(e).__name__}: {e}); fix the template") from None

    return fill


def _fields(record: dict) -> str:
    names = [repr(k) for k in list(record)[:12]]
    return (", ".join(names) + (", ..." if len(record) > 12 else "")) or "none"


def first_record_problem(name: str, src: SourceCfg, path: Path) -> str | None:
    """Why the first record of a record input cannot be read or turned into text (its
    `text_field` missing, a template that does not fit it), or None. Run when the recipe loads,
    so that a typo in a field name is not found only when tokenizing starts."""
    try:
        with closing(records(src, path)) as it:
            first = next(it, None)
        if first is not None:
            renderer(name, src)(first[1], first[0])
    except UnicodeDecodeError:
        return utf8_problem(path, name)
    except CptError as e:
        return str(e)
    return None


def jsonl_records(path: Path, errors: str) -> Iterator[tuple[str, dict]]:
    # utf-8-sig: a byte-order mark before the first record (as some Windows tools write) is not data
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CptError(f"{path}:{n}: not valid JSON at column {e.colno} ({e.msg})") from None
            except RecursionError:
                raise CptError(f"{path}:{n}: JSON nested too deeply to read") from None
            if not isinstance(record, dict):
                raise CptError(f"{path}:{n}: expected a JSON object (one record per line), got {type(record).__name__}")
            yield f"{path}:{n}", record


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise CptError(f"{path}: cannot read as Parquet ({e})") from None
    yield from _batch_records(pf.iter_batches(batch_size=1024), path)


def _hf_records(folder: Path) -> Iterator[tuple[str, dict]]:
    """A `Dataset.save_to_disk` folder: `state.json` lists Arrow stream files, read in order."""
    import pyarrow as pa

    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        except (ValueError, AttributeError):
            splits = []
        raise CptError(f"{folder}: a DatasetDict; pass one split's folder ({', '.join(map(str, splits))})")
    try:
        files = [f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CptError(f"{folder}: not a Hugging Face dataset folder (no readable state.json: {type(e).__name__}: "
                       f"{e}); save it with Dataset.save_to_disk") from None
    for name in files:
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(folder / name)))
        except Exception as e:  # missing or corrupt Arrow file
            raise CptError(f"{folder / name}: cannot read as Arrow ({e})") from None
        yield from _batch_records(reader, folder / name)


def _batch_records(batches, path: Path) -> Iterator[tuple[str, dict]]:
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            row += 1
            yield f"{path} row {row}", record


# ---------------------------------------------------------------------------------------------
# invalid UTF-8


def utf8_problem(path: Path, name: str = "") -> str:
    """The one-line error for a file that is not UTF-8: where the first bad byte is, and the fix."""
    where = _first_invalid_utf8(path)
    at = f" at byte {where[0]} (line {where[1]}, byte 0x{where[2]:02x})" if where else ""
    of = f" (source `{name}`)" if name else ""
    return (f"{path}: not valid UTF-8{at}{of}; fix the file, or read bad bytes as U+FFFD with `errors: replace` on "
            "the source (cpt tokenize: --errors replace)")


def _first_invalid_utf8(path: Path) -> tuple[int, int, int] | None:
    """(offset, line, value) of the first byte of `path` that is not part of valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done, lines = 0, 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            held = len(decoder.getstate()[0])  # the start of a character split across chunks
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:  # e.object is the held bytes, then the chunk
                return done - held + e.start, lines + e.object[:e.start].count(b"\n"), e.object[e.start]
            if not chunk:
                return None
            done += len(chunk)
            lines += chunk.count(b"\n")


def check_source(src, where: str = "") -> list[str]:
    """Problems with a source's input files and parsing options. `where` is its recipe field
    (`sources.wiki`); empty for `cpt tokenize`, whose messages name the flags instead."""
    def label(key: str) -> str:
        return f"{where}.{key}" if where else "--" + key.replace("_", "-")

    problems = []
    p = problems.append
    if src.template is not None and (problem := template_problem(src.template)):
        p(f"{label('template')}: {problem}; the template is {src.template!r}")
    fmt = src.resolved_format() if src.paths else None
    for i, f in enumerate(src.paths):
        if not (f.is_file() or (f.is_dir() and fmt == "hf")):
            p(f"{where}.paths[{i}]: file not found: {f}" if where else f"{f}: file not found")
    if src.separator is not None and fmt != "text":
        p(f"{label('separator')}: only the `text` format has a separator (this source is {fmt})")
    if src.template is not None and fmt not in RECORDS:
        p(f"{label('template')}: only jsonl, parquet and hf sources have fields to template (this source is {fmt})")
    if src.errors != "strict" and fmt not in DECODED:
        p(f"{label('errors')}: only text, lines and jsonl files are decoded from bytes (this source is "
          f"{fmt or 'a shard'}); remove `errors`")
    if not problems and fmt in RECORDS:  # the first record of each input must give a text
        name = where.removeprefix("sources.")
        for f in src.paths:
            if problem := first_record_problem(name, src, f):
                p(f"{where}: {problem}" if where else problem)
    return problems
