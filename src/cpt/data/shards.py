"""Token shards in Megatron's indexed format (`<prefix>.bin` + `<prefix>.idx`), read through memmaps.

The layout matches Megatron-LM's `IndexedDataset` (and Megatron-DeepSpeed / blendcorpus), so shards
move freely between `cpt` and those tools:

    .idx: b"MMIDIDX\\x00\\x00" | u64 version=1 | u8 dtype code | u64 sequence count | u64 document count
          | i32 sequence lengths[n] | i64 byte pointers[n] | i64 document indices[n + 1]
    .bin: the tokens of every sequence back to back, in the dtype named by the header.

We write one sequence per document, so the document indices are simply 0..n.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..errors import CptError

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

    Both files are written under temporary names and renamed at the end, so an interrupted write
    never leaves a shard that looks complete."""

    def __init__(self, prefix: str | Path, dtype: np.dtype):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        self._lengths: list[int] = []
        self._bin = open(self.prefix + ".bin.tmp", "wb")

    def add(self, tokens) -> None:
        arr = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(arr.tobytes(order="C"))
        self._lengths.append(arr.size)

    def close(self) -> None:
        self._bin.flush()
        os.fsync(self._bin.fileno())  # data on disk before the rename makes the shard visible
        self._bin.close()
        lengths = np.asarray(self._lengths, dtype=np.int32)
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

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:  # leave nothing behind that could be mistaken for a shard
            self._bin.close()
            for ext in (".bin.tmp", ".idx.tmp"):
                Path(self.prefix + ext).unlink(missing_ok=True)


class Shard:
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
        bin_path = self.prefix + ".bin"
        expected = int(self.lengths.astype(np.int64).sum()) * self.dtype.itemsize
        size = os.path.getsize(bin_path) if os.path.exists(bin_path) else -1
        if size != expected:
            raise CptError(f"{bin_path}: expected {expected} bytes from the index, found {size}; re-tokenize the source")
        self.tokens = np.memmap(bin_path, mode="r", dtype=self.dtype) if expected else np.zeros(0, self.dtype)
        self.starts = self.pointers // self.dtype.itemsize  # token offset of each document

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.starts[i])
        return self.tokens[start : start + int(self.lengths[i])]

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.astype(np.int64).sum())
