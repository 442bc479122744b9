"""Tokenize a source once into a Megatron shard plus a metadata file, and reuse it while valid.

A shard is keyed by everything that determines its content — the tokenizer's fingerprint, the
input files' hashes and the parsing options — so a changed input or tokenizer gets a new shard
and an unchanged one is reused. A pre-tokenized shard (`prefix:`) made with another tokenizer is
refused, because its token ids would silently mean different text.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from ..config import read_json_object
from ..errors import CptError
from ..fileio import write_json_atomic
from ..recipe import SourceCfg
from .encode import Encoder
from .lists import ListShard, list_entries, open_list
from .rng import generator
from .shards import Shard, ShardWriter, token_dtype
from .sources import file_documents

META_VERSION = 1
_BATCH_DOCS = 1024
_BATCH_CHARS = 256 * 1024
_COMMIT_SECONDS = 10.0  # how much work an interruption may cost


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does: its full serialized pipeline and special tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    # the ids a document is wrapped in are part of what a shard means
    h.update(repr((tokenizer("a")["input_ids"], tokenizer.eos_token_id)).encode())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TokenizedSource:
    name: str
    prefix: str  # Megatron prefix, without .bin/.idx (a `list:` source: the list file)
    key: str  # content key; a run records it to notice a changed source on resume
    meta: dict
    shards: ListShard | None = None  # a `list:` source's shards, opened (data/lists.py)

    def open(self) -> Shard | ListShard:
        return self.shards if self.shards is not None else Shard(self.prefix)


def prepare_source(name: str, src: SourceCfg, tokenizer, data_dir: Path,
                   expect_key: str | None = None, workers: int = 1) -> TokenizedSource:
    """The shard of a source: an existing `prefix:` (checked), the cached one, or a new one.
    With `expect_key` (a resumed run), a source whose content changed is refused before any work."""
    fp = tokenizer_fingerprint(tokenizer)
    if src.list_file is not None:  # checked here (rank 0); recorded_source opens it as it is
        shards, key, meta = open_list(name, src, fp, len(tokenizer), data_dir)
        _check_key(name, key, expect_key)
        return TokenizedSource(name, str(src.list_file), key, meta, shards)
    if src.prefix is not None:
        shard = _existing_shard(name, src.prefix, fp, len(tokenizer))
        _check_key(name, shard.key, expect_key)
        return shard
    inputs = [input_record(p) for p in src.paths]
    key = content_key(fp, inputs, src)
    _check_key(name, key, expect_key)
    prefix = data_dir / f"{name}.{key}"
    meta = complete_meta(prefix, key)
    if meta is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        meta = tokenize_source(name, src, tokenizer, prefix, key, inputs, workers)
    return TokenizedSource(name, str(prefix), key, meta)


def recorded_source(name: str, src: SourceCfg, tokenizer, data_dir: Path, key: str | None) -> TokenizedSource:
    """The shard another process (rank 0) prepared and recorded under `key`: opened as it is,
    without hashing the inputs again (every rank hashing terabytes of corpus would be the cost)."""
    if src.list_file is not None:
        entries = list_entries(name, src.list_file)
        shards = ListShard([p for p, _ in entries], [w for _, w in entries], str(src.list_file))
        return TokenizedSource(name, str(src.list_file), key or "", {}, shards)
    if src.prefix is not None:
        return prepare_source(name, src, tokenizer, data_dir)  # reads the shard's own metadata only
    prefix = data_dir / f"{name}.{key}"
    meta = complete_meta(prefix, key) if key else None
    if meta is None:
        raise CptError(f"{prefix}: the shard rank 0 prepared for source `{name}` is not here; --out (and "
                       "data_dir) must be on a file system that every node shares")
    return TokenizedSource(name, str(prefix), key, meta)


def content_key(fingerprint: str, inputs: list[dict], src: SourceCfg) -> str:
    """What determines a shard's bytes: the tokenizer, the inputs' hashes, the parsing options."""
    options = _parsing_options(src)
    blob = json.dumps([fingerprint, [i["sha256"] for i in inputs], options], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _parsing_options(src: SourceCfg) -> dict:
    options = src.model_dump(mode="json", include={"format", "separator", "text_field", "template"})
    options["format"] = src.resolved_format()
    if src.errors != "strict":  # replaced bytes change the tokens; absent when strict, so that the
        options["errors"] = src.errors  # keys of shards made before the option stay the same
    return options


def complete_meta(prefix: Path, key: str | None = None) -> dict | None:
    """The metadata of a finished shard at `prefix` (of content `key`, if given), else None."""
    meta_path = Path(f"{prefix}.json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(meta, dict):
        return None
    files_there = all(Path(f"{prefix}{ext}").is_file() for ext in (".bin", ".idx"))
    if not (meta.get("complete") and files_there and (key is None or meta.get("key") == key)):
        return None
    return meta


def _check_key(name: str, key: str, expect_key: str | None) -> None:
    if expect_key is not None and key != expect_key:
        raise CptError(f"sources.{name}: its files or tokenizer changed since this run carved its validation "
                       f"slice (shard key {expect_key} -> {key}); restore them, or start a new --out")


def input_record(path: Path) -> dict:
    """Path, size and content hash of an input file (or of every file of a dataset folder)."""
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(file_sha256(f).encode())
    return {"path": str(path), "bytes": sum(f.stat().st_size for f in files), "sha256": h.hexdigest()}


def tokenize_source(name: str, src: SourceCfg, tokenizer, prefix: Path, key: str, inputs: list[dict],
                    workers: int = 1) -> dict:
    """Tokenize every document of `src` into the Megatron shard `prefix` and write its metadata
    (`prefix.json`, last: its presence with `complete` means the shard is whole). Each document
    ends with EOS. Progress is committed every few seconds; a rerun after an interruption
    continues from the last commit."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CptError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')}: has no EOS token, needed between documents")
    dtype = token_dtype(len(tokenizer))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CptError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')}: only fast (Rust `tokenizers`) "
                       "tokenizers are supported; save it with a tokenizer.json")
    resumed = ShardWriter.resume(prefix, dtype, key)
    writer, progress = resumed if resumed else (ShardWriter(prefix, dtype), {"file": 0, "in_file": 0, "files": []})
    ends = np.cumsum([i["bytes"] for i in inputs]).tolist()  # input bytes done after each file
    files: list[dict] = progress["files"]  # the document range of each finished input
    start = progress["file"]
    with writer, Encoder(backend, eos, dtype, workers) as encoder, \
            tqdm(total=ends[-1], initial=ends[start - 1] if start else 0, unit="B", unit_scale=True,
                 desc=f"tokenize {name}") as bar:
        for i in range(start, len(inputs)):
            skip = progress["in_file"] if i == start else 0
            first_doc = writer.documents - skip
            docs = islice(file_documents(name, src, src.paths[i]), skip, None)
            last_commit = time.monotonic()
            for tokens, lengths, size in encoder.map(_batches(docs)):
                writer.add_many(tokens, lengths)
                bar.update(max(0, min(size, ends[i] - bar.n)))  # characters: an estimate of bytes
                if time.monotonic() - last_commit > _COMMIT_SECONDS:
                    writer.commit(key, file=i, in_file=writer.documents - first_doc, files=files)
                    last_commit = time.monotonic()
            files.append({"path": str(src.paths[i]), "first_document": first_doc,
                          "documents": writer.documents - first_doc})
            bar.update(ends[i] - bar.n)
            writer.commit(key, file=i + 1, in_file=0, files=files)
        if writer.documents == 0:
            raise CptError(f"{', '.join(map(str, src.paths))}: no documents found (source `{name}`); "
                           "check the format and separator")
    meta = {"format": "cpt-shard", "version": META_VERSION, "complete": True, "source": name, "key": key,
            "documents": writer.documents, "tokens": writer.tokens, "dtype": dtype.name,
            "inputs": [dict(rec, **f) for rec, f in zip(inputs, files)], "options": _parsing_options(src),
            "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer),
                          "eos_id": eos, "name_or_path": str(getattr(tokenizer, "name_or_path", ""))}}
    write_json_atomic(Path(f"{prefix}.json"), meta)
    return meta


def _batches(docs: Iterator[str]) -> Iterator[tuple[list[str], int]]:
    """Documents in batches of about `_BATCH_CHARS` characters (small enough to keep every worker
    busy on a file of a few long documents), each tagged with its size for the progress bar.
    Characters, not UTF-8 bytes: counting bytes would cost an encode of every document."""
    batch: list[str] = []
    size = 0
    for text in docs:
        batch.append(text)
        size += len(text)
        if size >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
            yield batch, size
            batch, size = [], 0
    if batch:
        yield batch, size


def _existing_shard(name: str, prefix: Path, fingerprint: str, vocab_size: int | None = None) -> TokenizedSource:
    meta_path = Path(f"{prefix}.json")
    if not meta_path.is_file():
        raise CptError(f"sources.{name}.prefix: {meta_path} not found; cpt needs the shard's metadata "
                       "(tokenizer fingerprint) to check it matches the recipe's tokenizer")
    try:
        meta = read_json_object(meta_path)
    except ValueError as e:
        raise CptError(f"sources.{name}.prefix: {meta_path} is {e}; it should be the shard's metadata, "
                       "written by cpt tokenize") from None
    theirs = meta["tokenizer"].get("fingerprint") if isinstance(meta.get("tokenizer"), dict) else None
    if theirs != fingerprint:
        raise CptError(f"sources.{name}.prefix: {prefix} was tokenized with another tokenizer "
                       f"(fingerprint {theirs}, recipe's is {fingerprint}); re-tokenize it or use `paths:`")
    shard = Shard(prefix)  # validates the files
    if vocab_size is not None and shard.dtype.kind == "u" and vocab_size - 1 > np.iinfo(shard.dtype).max:
        raise CptError(f"sources.{name}.prefix: {prefix}.bin holds {shard.dtype.name} tokens but the tokenizer has "
                       f"{vocab_size:,} ids; its ids cannot fit, so the shard is not this tokenizer's: re-tokenize it")
    return TokenizedSource(name, str(prefix), meta.get("key", fingerprint), meta)


def carve_validation(shard: Shard, tokens: int, seed: int, name: str) -> np.ndarray:
    """Document ids of a fixed validation slice: whole documents, in a seeded random order, until
    they hold at least `tokens` tokens. Refuses to take more than half of a source."""
    rng = generator(seed, "validation", name)
    order = rng.permutation(len(shard))
    cum = np.cumsum(shard.lengths[order].astype(np.int64))
    n = int(np.searchsorted(cum, tokens)) + 1  # first prefix with >= tokens
    if n > len(order) or cum[n - 1] * 2 > shard.num_tokens:
        raise CptError(f"sources.{name}: {shard.num_tokens} tokens are too few to carve a validation slice of "
                       f"{tokens} and still train on the rest; lower validation.tokens_per_source or add data")
    return np.sort(order[:n])

