"""Token shards in Megatron's indexed format (`<prefix>.bin` + `<prefix>.idx`), read through memmaps.

The layout matches Megatron-LM's `IndexedDataset` (and Megatron-DeepSpeed / blendcorpus), so shards
move freely between `cpt` and those tools:

    .idx: b"MMIDIDX\\x00\\x00" | u64 version=1 | u8 dtype code | u64 sequence count | u64 document count
          | i32 sequence lengths[n] | i64 byte pointers[n] | i64 document indices[n + 1]
    .bin: the tokens of every sequence back to back, in the dtype named by the header.

We write one sequence per document, so the document indices are simply 0..n.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import CptError
from ..fileio import write_json_atomic

_MAGIC = b"MMIDIDX\x00\x00"
_VERSION = 1
# Megatron's DType codes
_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8}
_DTYPES = {code: np.dtype(t) for t, code in _CODES.items()}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (halves disk and page cache), else int32 — as Megatron does."""
    return np.dtype(np.uint16) if vocab_size <= 65_536 else np.dtype(np.int32)


class ShardWriter:
    """Appends documents to `<prefix>.bin` and writes the `.idx` on `close()`.

    Tokens and document lengths go to temporary files (`.bin.tmp`, `.lengths.tmp`) and only
    `close()` renames a finished `.bin`/`.idx` into place, so an interrupted write never leaves a
    shard that looks complete. `commit(progress)` makes the output so far durable together with a
    note of where the input stood; `ShardWriter.resume(prefix)` reopens it there, so a rerun of a
    long tokenization continues instead of starting over. Memory stays flat: lengths are on disk.
    """

    def __init__(self, prefix: str | Path, dtype: np.dtype, *, _resume: dict | None = None):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        self._limit = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None
        mode = "r+b" if _resume else "wb"
        self._bin = open(self.prefix + ".bin.tmp", mode)
        self._len = open(self.prefix + ".lengths.tmp", mode)
        self.documents = self.tokens = 0
        if _resume:  # drop whatever was written after the last commit
            self.documents, self.tokens = _resume["documents"], _resume["tokens"]
            for f, size in ((self._bin, self.tokens * self.dtype.itemsize), (self._len, 4 * self.documents)):
                f.truncate(size)
                f.seek(size)

    @classmethod
    def resume(cls, prefix: str | Path, dtype: np.dtype, key: str) -> tuple["ShardWriter", dict] | None:
        """Reopen an interrupted write of the same content (`key`); None if there is none."""
        note = Path(str(prefix) + ".progress.json")
        try:
            progress = json.loads(note.read_text())
        except (OSError, ValueError):
            return None
        if progress.get("key") != key or progress.get("dtype") != np.dtype(dtype).name:
            return None
        if not all(Path(str(prefix) + ext).is_file() for ext in (".bin.tmp", ".lengths.tmp")):
            return None
        return cls(prefix, dtype, _resume=progress), progress

    def add(self, tokens) -> None:
        arr = np.asarray(tokens)
        if self._limit is not None and arr.size and (arr.max() > self._limit or arr.min() < 0):
            raise CptError(f"{self.prefix}.bin: token id {int(arr.max())} does not fit {self.dtype.name}; "
                           "the tokenizer's vocabulary is larger than this shard's dtype (use int32)")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self._len.write(struct.pack("<i", arr.size))
        self.documents += 1
        self.tokens += arr.size

    def add_many(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Several documents at once: their tokens back to back, and each one's length."""
        if self._limit is not None and tokens.size and (tokens.max() > self._limit or tokens.min() < 0):
            raise CptError(f"{self.prefix}.bin: token id {int(tokens.max())} does not fit {self.dtype.name}; "
                           "the tokenizer's vocabulary is larger than this shard's dtype (use int32)")
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        self._len.write(lengths.astype("<i4", copy=False).tobytes())
        self.documents += len(lengths)
        self.tokens += int(tokens.size)

    def commit(self, key: str, **position) -> None:
        """Everything added so far survives a crash; a resume restarts from `position`."""
        for f in (self._bin, self._len):
            f.flush()
            os.fsync(f.fileno())
        write_json_atomic(Path(self.prefix + ".progress.json"),
                          {"key": key, "dtype": self.dtype.name, "documents": self.documents,
                           "tokens": self.tokens, **position})

    def close(self) -> None:
        for f in (self._bin, self._len):
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes the shard visible
            f.close()
        lengths = np.fromfile(self.prefix + ".lengths.tmp", dtype="<i4", count=self.documents)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(self.prefix + ".idx.tmp", "wb") as f:
            f.write(_MAGIC)
            f.write(struct.pack("<Q", _VERSION))
            f.write(struct.pack("<B", _CODES[self.dtype.type]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(doc_idx)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(doc_idx.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.prefix + ".bin.tmp", self.prefix + ".bin")
        os.replace(self.prefix + ".idx.tmp", self.prefix + ".idx")
        self.discard(keep_shard=True)

    def discard(self, keep_shard: bool = False) -> None:
        """Remove the temporary files (all of them unless the shard was just completed)."""
        for f in (self._bin, self._len):
            f.close()
        for ext in (".lengths.tmp", ".progress.json") + (() if keep_shard else (".bin.tmp", ".idx.tmp")):
            Path(self.prefix + ext).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):  # keep what was committed: a rerun resumes
            for f in (self._bin, self._len):
                f.close()
        else:  # bad input or a bug: leave nothing behind that could be mistaken for output
            self.discard()


class Documents:
    """Documents over a token array: `lengths`, `starts` (token offsets) and `tokens` (sliceable)."""

    lengths: np.ndarray
    starts: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.starts[i])
        return self.tokens[start : start + int(self.lengths[i])]

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.astype(np.int64).sum())


class Shard(Documents):
    """Read-only view of a Megatron shard: `len()` documents, `shard[i]` a token array (memmap view)."""

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        idx_path = self.prefix + ".idx"
        try:
            with open(idx_path, "rb") as f:
                header = f.read(len(_MAGIC) + 8 + 1 + 8 + 8)
        except FileNotFoundError:
            raise CptError(f"{idx_path}: shard index not found") from None
        if len(header) < 34 or header[: len(_MAGIC)] != _MAGIC:
            raise CptError(f"{idx_path}: not a Megatron indexed-dataset index (bad header); re-tokenize the source")
        version, code, n, n_docs = struct.unpack("<QBQQ", header[len(_MAGIC):])
        if version != _VERSION or code not in _DTYPES:
            raise CptError(f"{idx_path}: unsupported index version {version} or dtype code {code}")
        self.dtype = _DTYPES[code]
        offset = len(header)
        need = offset + 4 * n + 8 * n + 8 * n_docs
        if os.path.getsize(idx_path) < need:
            raise CptError(f"{idx_path}: truncated (its header needs {need} bytes); re-tokenize the source")
        idx = np.memmap(idx_path, mode="r", dtype=np.uint8)
        self.lengths = np.frombuffer(idx, dtype=np.int32, count=n, offset=offset)
        offset += 4 * n
        self.pointers = np.frombuffer(idx, dtype=np.int64, count=n, offset=offset)
        offset += 8 * n
        self.doc_idx = np.frombuffer(idx, dtype=np.int64, count=n_docs, offset=offset)
        self._check_consistent(idx_path)
        bin_path = self.prefix + ".bin"
        expected = int(self.lengths.astype(np.int64).sum()) * self.dtype.itemsize
        size = os.path.getsize(bin_path) if os.path.exists(bin_path) else -1
        if size != expected:
            raise CptError(f"{bin_path}: expected {expected} bytes from the index, found {size}; re-tokenize the source")
        # a plain ndarray over the mapping: slicing an np.memmap subclass costs several times more
        tokens = np.memmap(bin_path, mode="r", dtype=self.dtype) if expected else np.zeros(0, self.dtype)
        self.tokens = tokens.view(np.ndarray)
        self.starts = self.pointers // self.dtype.itemsize  # token offset of each document

    def _check_consistent(self, idx_path: str) -> None:
        """The arrays must describe one contiguous run of tokens, as Megatron's writer makes them;
        anything else is a corrupt or foreign index that would read the wrong tokens."""
        item = self.dtype.itemsize
        n = len(self.lengths)
        expected = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(self.lengths[:-1].astype(np.int64) * item, out=expected[1:])
        bad = (np.any(self.lengths < 0) or not np.array_equal(self.pointers, expected)
               or len(self.doc_idx) == 0 or self.doc_idx[0] != 0 or self.doc_idx[-1] != n
               or np.any(np.diff(self.doc_idx) < 0))
        if bad:
            raise CptError(f"{idx_path}: sequence sizes, pointers and document indices do not add up "
                           "(corrupt index); re-tokenize the source")


