"""A source given as a data-file list (`list: FILE.txt`, blendcorpus / Megatron-DeepSpeed format):
existing `.bin/.idx` shards read in place, never copied or re-tokenized.

The shards are seen as one: `ListShard` numbers their documents one after another (document i of
the second shard is len(first) + i), and its token array maps a slice to the shard that holds
it (a document never spans two shards). Within the source, the list's weights are the shares of
its samples: each shard's documents are read `factors[k]` = its weight / its share of the tokens
times an epoch (a fraction: that share of them, fixed per stream), so that a list weighted by
tokens, as ALCF's are, reads every document once an epoch.

Each shard is checked where it is: magic, version, dtype (all the same), sizes (Shard), and its
largest token id against the tokenizer's vocabulary (a scan, remembered by path, size and mtime in
the shard folder's `list-checks.json`). Which tokenizer wrote a shard is known only from the
`<prefix>.json` that `cpt tokenize` writes beside it; for any other shard the user declares it,
with the source's `tokenizer_fingerprint:` or `--trust-shards`."""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import CptError
from ..fileio import write_json_atomic
from .mixlists import read_list
from .shards import Documents, Shard

TRUST_ENV = "CPT_TRUST_SHARDS"  # set by --trust-shards (inherited by torchrun's ranks and a sweep's runs)


def add_trust_flag(parser) -> None:
    """`--trust-shards`, on every command that opens a recipe's `list:` sources (cli.main reads it)."""
    parser.add_argument("--trust-shards", action="store_true",
                        help="take the shards of `list:` sources that carry no record of their tokenizer as the "
                             "recipe tokenizer's (or declare tokenizer_fingerprint: on the source)")
_CHUNK = 1 << 26  # tokens per read of the vocabulary scan


class _Tokens:
    """The shards' token arrays as one: `tokens[a:b]` inside one shard, by global offsets."""

    def __init__(self, shards: list[Shard]):
        self.shards = shards
        self.arrays = [s.tokens for s in shards]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self._bounds = self.offsets.tolist()  # Python ints: bisect on them beats numpy on a scalar

    def __getitem__(self, key: slice) -> np.ndarray:
        i = bisect.bisect_right(self._bounds, key.start) - 1
        base = self._bounds[i]
        return self.arrays[i][key.start - base : key.stop - base]

    def __len__(self) -> int:
        return int(self.offsets[-1])


class ListShard(Documents):
    """Several Megatron shards as one Shard (documents, lengths, starts, tokens, dtype)."""

    def __init__(self, prefixes: list[str], weights: list[float], label: str):
        self.prefix = label  # a name for messages and the buffer's manifest (the list file)
        self.parts = [Shard(p) for p in prefixes]
        self.dtype = self.parts[0].dtype
        self.tokens = _Tokens(self.parts)
        self.lengths = np.concatenate([s.lengths for s in self.parts])
        self.starts = np.concatenate([s.starts + int(off) for s, off in zip(self.parts, self.tokens.offsets)])
        self.first = np.cumsum([0] + [len(s) for s in self.parts])  # each shard's first document
        tokens = np.array([s.num_tokens for s in self.parts], dtype=np.float64)
        empty = [p.prefix for p, t in zip(self.parts, tokens) if t == 0]
        if empty:
            raise CptError(f"{empty[0]}: holds no tokens but has a weight in {label}; drop it from the list")
        want = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.weights = [float(w) for w in want]  # each shard's share of the source's samples
        # reads of each shard's documents an epoch: its weight over its share of the tokens. Lists
        # weighted by tokens are printed to 6-10 digits: within 0.1% of 1, a shard is read once
        ratio = want / (tokens / tokens.sum())
        self.factors = None if np.all(np.abs(ratio - 1) < 1e-3) else np.where(np.abs(ratio - 1) < 1e-3, 1.0, ratio)


def list_entries(name: str, path: Path) -> list[tuple[str, float]]:
    """(prefix, weight) of each line with a positive weight; a relative prefix is relative to the
    list's folder. Zero weights (mix_datasets.py rounds small ones to 0.000000) are skipped."""
    entries = read_list(path, allow_zero=True)
    kept = [(e.prefix if os.path.isabs(e.prefix) else str(Path(path).parent / e.prefix), e.weight, e.line)
            for e in entries if e.weight > 0]
    if not kept:
        raise CptError(f"sources.{name}.list: {path}: every weight is 0; give the shards positive weights")
    seen: dict[str, int] = {}
    for prefix, _, line in kept:
        real = os.path.realpath(prefix)
        if real in seen:  # its documents twice: a validation document would also be trained on
            raise CptError(f"{path}:{line}: {prefix} is listed already (line {seen[real]}); list each shard once, "
                           "with the weight of both lines")
        seen[real] = line
    for prefix, _, line in kept:
        missing = [ext for ext in (".bin", ".idx") if not Path(prefix + ext).is_file()]
        if missing:
            raise CptError(f"{path}:{line}: {prefix}{' and '.join(missing)} not found; a list names shard prefixes "
                           "(the path without .bin/.idx)")
    return [(p, w) for p, w, _ in kept]


def open_list(name: str, src, fingerprint: str, vocab_size: int, check_dir: Path | None) -> tuple[ListShard, str, dict]:
    """The list source's shards, checked; its content key and metadata."""
    entries = list_entries(name, src.list_file)
    try:
        shard = ListShard([p for p, _ in entries], [w for _, w in entries], str(src.list_file))
    except CptError as e:
        raise CptError(f"sources.{name}.list: {e}") from None
    dtypes = {s.dtype.name for s in shard.parts}
    if len(dtypes) > 1:
        raise CptError(f"sources.{name}.list: its shards hold tokens of several dtypes ({', '.join(sorted(dtypes))}); "
                       "one tokenizer writes one dtype, so they are not one source")
    for (prefix, _), part in zip(entries, shard.parts):
        _check_tokenizer(name, src, prefix, fingerprint)
        if np.iinfo(part.dtype).max < vocab_size:  # every id the dtype holds is in the vocabulary
            continue
        top = _largest_id(part, check_dir)
        if top >= vocab_size:
            raise CptError(f"sources.{name}.list: {prefix}.bin holds token id {top:,}, past the tokenizer's "
                           f"{vocab_size:,} ids; it was tokenized with another tokenizer: re-tokenize it")
    # what the shards are, not where: a resume survives a move to another file system
    stats = [(Path(p).name, w, os.path.getsize(p + ".bin"), os.path.getsize(p + ".idx"), _record(p).get("key"))
             for p, w in entries]
    key = hashlib.sha256(json.dumps([fingerprint, stats]).encode()).hexdigest()[:12]
    meta = {"list": str(src.list_file), "shards": [p for p, _ in entries], "documents": len(shard), "tokens": shard.num_tokens}
    return shard, key, meta


def _record(prefix: str) -> dict:
    """The `<prefix>.json` that `cpt tokenize` writes beside a shard; {} for any other shard."""
    try:
        record = json.loads(Path(prefix + ".json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _check_tokenizer(name: str, src, prefix: str, fingerprint: str) -> None:
    record = Path(prefix + ".json")
    tok = _record(prefix).get("tokenizer")
    theirs = tok.get("fingerprint") if isinstance(tok, dict) else None
    if theirs is not None:
        if theirs != fingerprint:
            raise CptError(f"sources.{name}.list: {prefix} was tokenized with another tokenizer (fingerprint {theirs}, "
                           f"the recipe's is {fingerprint}); re-tokenize it")
        return
    declared = src.tokenizer_fingerprint
    if declared is not None and declared != fingerprint:
        raise CptError(f"sources.{name}.tokenizer_fingerprint: {declared} is not the recipe tokenizer's ({fingerprint}); "
                       "these shards were written by another tokenizer: re-tokenize them")
    if declared is None and not os.environ.get(TRUST_ENV):
        raise CptError(f"sources.{name}.list: {prefix} has no record of the tokenizer that wrote it (no {record.name}), "
                       "and a mismatch its token ids cannot reveal would train on garbage; if the recipe's tokenizer "
                       f"wrote it, declare `tokenizer_fingerprint: {fingerprint}` on the source, or pass --trust-shards")


_SCANNED: dict[tuple[str, str], int] = {}  # this process's scans: the run checks before it claims --out, then opens


def check_lists(recipe, fingerprint: str, vocab_size: int) -> None:
    """Every `list:` source checked, before a run touches --out (a bad shard leaves it as it was)."""
    for name, src in recipe.sources.items():
        if src.list_file is not None:
            open_list(name, src, fingerprint, vocab_size, recipe.data_dir)


def _largest_id(shard: Shard, check_dir: Path | None) -> int:
    """The shard's largest token id, remembered by path, size and mtime (a scan of every token)."""
    bin_path = Path(shard.prefix + ".bin").resolve()
    st = bin_path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    if (str(bin_path), stamp) in _SCANNED:
        return _SCANNED[(str(bin_path), stamp)]
    cache = check_dir / "list-checks.json" if check_dir is not None else None
    seen = {}
    if cache is not None and cache.is_file():
        try:
            seen = json.loads(cache.read_text())
        except ValueError:
            seen = {}
    hit = seen.get(str(bin_path))
    if isinstance(hit, dict) and hit.get("stamp") == stamp:
        return _SCANNED.setdefault((str(bin_path), stamp), int(hit["max_id"]))
    tokens = shard.tokens
    top = max((int(tokens[i : i + _CHUNK].max()) for i in range(0, len(tokens), _CHUNK)), default=-1)
    _SCANNED[(str(bin_path), stamp)] = top
    if cache is not None:
        seen[str(bin_path)] = {"stamp": stamp, "max_id": top}
        write_json_atomic(cache, seen)
    return top
