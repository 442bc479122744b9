"""Reading documents out of raw source files: text with a separator, lines, JSONL, Parquet, and
Hugging Face datasets saved with `save_to_disk` (read as Arrow, no `datasets` import needed)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Iterator

from ..errors import CptError
from ..recipe import SourceCfg

DEFAULT_SEPARATOR = "\n\n"


def iter_documents(name: str, src: SourceCfg) -> Iterator[str]:
    """Every non-empty document of a source, in file order. Errors name the file and line."""
    for path in src.paths:
        yield from file_documents(name, src, path)


def file_documents(name: str, src: SourceCfg, path: Path) -> Iterator[str]:
    """The non-empty documents of one input of a source."""
    fmt = src.resolved_format()
    render = _renderer(name, src)
    if fmt == "text":
        yield from _text_docs(path, src.separator or DEFAULT_SEPARATOR)
    elif fmt == "lines":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\r\n")
    elif fmt == "jsonl":
        yield from _jsonl_docs(path, render)
    elif fmt == "parquet":
        yield from _parquet_docs(path, render)
    else:
        yield from _hf_docs(path, render)


def _text_docs(path: Path, separator: str) -> Iterator[str]:
    """Split on `separator` while streaming, so a large file never sits in memory whole."""
    pending = ""
    with open(path, encoding="utf-8") as f:
        while chunk := f.read(1 << 20):
            pending += chunk
            *docs, pending = pending.split(separator)
            for d in docs:
                if d.strip():
                    yield d.strip()
    if pending.strip():
        yield pending.strip()


def _renderer(name: str, src: SourceCfg):
    """A function record -> text: the template over its fields, or its `text_field`."""
    if src.template is None:
        field = src.text_field

        def text_of(record: dict, where: str) -> str:
            if field not in record:
                raise CptError(f"{where}: no `{field}` field (source `{name}`: set text_field or template)")
            return str(record[field])

        return text_of
    fields = [f for _, f, _, _ in string.Formatter().parse(src.template) if f]

    def fill(record: dict, where: str) -> str:
        missing = [f for f in fields if f not in record]
        if missing:
            raise CptError(f"{where}: template field(s) {missing} not in the record (source `{name}`)")
        return src.template.format(**record)

    return fill


def _jsonl_docs(path: Path, render) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CptError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise CptError(f"{path}:{n}: expected a JSON object (one record per line), got {type(record).__name__}")
            text = render(record, f"{path}:{n}")
            if text.strip():
                yield text


def _parquet_docs(path: Path, render) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise CptError(f"{path}: cannot read as Parquet ({e})") from None
    yield from _record_docs(pf.iter_batches(batch_size=1024), path, render)


def _hf_docs(folder: Path, render) -> Iterator[str]:
    """A `Dataset.save_to_disk` folder: `state.json` lists Arrow stream files, read in order."""
    import pyarrow as pa

    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        raise CptError(f"{folder}: a DatasetDict; pass one split's folder ({', '.join(map(str, splits))})")
    try:
        files = [f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise CptError(f"{folder}: not a Hugging Face dataset folder (no readable state.json); "
                       "save it with Dataset.save_to_disk") from None
    for name in files:
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(folder / name)))
        except Exception as e:  # missing or corrupt Arrow file
            raise CptError(f"{folder / name}: cannot read as Arrow ({e})") from None
        yield from _record_docs(reader, folder / name, render)


def _record_docs(batches, path: Path, render) -> Iterator[str]:
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            row += 1
            text = render(record, f"{path} row {row}")
            if text.strip():
                yield text
