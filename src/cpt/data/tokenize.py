"""Tokenize a source once into a Megatron shard plus a metadata file, and reuse it while valid.

A shard is keyed by everything that determines its content — the tokenizer's fingerprint, the
input files' hashes and the parsing options — so a changed input or tokenizer gets a new shard
and an unchanged one is reused. A pre-tokenized shard (`prefix:`) made with another tokenizer is
refused, because its token ids would silently mean different text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import CptError
from ..fileio import write_json_atomic
from ..recipe import SourceCfg
from .shards import Shard, ShardWriter, token_dtype
from .rng import generator
from .sources import iter_documents

META_VERSION = 1
_BATCH_DOCS = 256


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does: its full serialized pipeline and special tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    # the ids a document is wrapped in are part of what a shard means
    h.update(repr((tokenizer("a")["input_ids"], tokenizer.eos_token_id)).encode())
    return h.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TokenizedSource:
    name: str
    prefix: str  # Megatron prefix, without .bin/.idx
    key: str  # content key; a run records it to notice a changed source on resume
    meta: dict

    def open(self) -> Shard:
        return Shard(self.prefix)


def prepare_source(name: str, src: SourceCfg, tokenizer, data_dir: Path,
                   expect_key: str | None = None) -> TokenizedSource:
    """The shard of a source: an existing `prefix:` (checked), the cached one, or a new one.
    With `expect_key` (a resumed run), a source whose content changed is refused before any work."""
    fp = tokenizer_fingerprint(tokenizer)
    if src.prefix is not None:
        shard = _existing_shard(name, src.prefix, fp)
        _check_key(name, shard.key, expect_key)
        return shard
    inputs = [{"path": str(p), "bytes": p.stat().st_size, "sha256": _file_sha256(p)} for p in src.paths]
    options = src.model_dump(mode="json", exclude={"paths", "prefix"})
    options["format"] = src.resolved_format()
    key = hashlib.sha256(json.dumps([fp, [i["sha256"] for i in inputs], options], sort_keys=True).encode())
    key = key.hexdigest()[:12]
    _check_key(name, key, expect_key)
    prefix = data_dir / f"{name}.{key}"
    meta_path = Path(f"{prefix}.json")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        files_there = all(Path(f"{prefix}{ext}").is_file() for ext in (".bin", ".idx"))
        if meta.get("complete") and meta.get("tokenizer", {}).get("fingerprint") == fp and files_there:
            return TokenizedSource(name, str(prefix), key, meta)
    data_dir.mkdir(parents=True, exist_ok=True)
    meta = _tokenize(name, src, tokenizer, prefix)
    meta.update(format="cpt-shard", version=META_VERSION, complete=True, source=name, key=key,
                inputs=inputs, options=options,
                tokenizer={"fingerprint": fp, "vocab_size": len(tokenizer), "eos_id": tokenizer.eos_token_id,
                           "name_or_path": str(getattr(tokenizer, "name_or_path", ""))})
    write_json_atomic(meta_path, meta)
    return TokenizedSource(name, str(prefix), key, meta)


def _check_key(name: str, key: str, expect_key: str | None) -> None:
    if expect_key is not None and key != expect_key:
        raise CptError(f"sources.{name}: its files or tokenizer changed since this run carved its validation "
                       f"slice (shard key {expect_key} -> {key}); restore them, or start a new --out")


def _tokenize(name: str, src: SourceCfg, tokenizer, prefix: Path) -> dict:
    """Stream documents through the tokenizer in batches; each document ends with EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CptError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')}: has no EOS token, needed between documents")
    dtype = token_dtype(len(tokenizer))
    encode = _batch_encoder(tokenizer)
    docs = tokens = 0
    total_bytes = sum(p.stat().st_size for p in src.paths)
    with ShardWriter(prefix, dtype) as writer, tqdm(total=total_bytes, unit="B", unit_scale=True,
                                                     desc=f"tokenize {name}", leave=False) as bar:
        batch: list[str] = []

        def flush():
            nonlocal docs, tokens
            for ids in encode(batch):
                ids.append(eos)
                writer.add(ids)
                docs += 1
                tokens += len(ids)
            bar.update(sum(len(t.encode("utf-8")) for t in batch))
            batch.clear()

        for text in iter_documents(name, src):
            batch.append(text)
            if len(batch) >= _BATCH_DOCS:
                flush()
        if batch:
            flush()
    if docs == 0:
        raise CptError(f"sources.{name}: no documents found in {', '.join(map(str, src.paths))}")
    return {"documents": docs, "tokens": tokens, "dtype": dtype.name}


def _batch_encoder(tokenizer):
    """The Rust `tokenizers` pipeline directly when there is one (same ids, with the tokenizer's
    own special tokens, minus the Python overhead and the model-length warnings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]
    return lambda texts: tokenizer(texts, add_special_tokens=True)["input_ids"]


def _existing_shard(name: str, prefix: Path, fingerprint: str) -> TokenizedSource:
    meta_path = Path(f"{prefix}.json")
    if not meta_path.is_file():
        raise CptError(f"sources.{name}.prefix: {meta_path} not found; cpt needs the shard's metadata "
                       "(tokenizer fingerprint) to check it matches the recipe's tokenizer")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CptError(f"sources.{name}.prefix: {meta_path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    theirs = meta.get("tokenizer", {}).get("fingerprint")
    if theirs != fingerprint:
        raise CptError(f"sources.{name}.prefix: {prefix} was tokenized with another tokenizer "
                       f"(fingerprint {theirs}, recipe's is {fingerprint}); re-tokenize it or use `paths:`")
    Shard(prefix)  # validates the files
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

