"""Encoding batches of documents into token arrays, in this process or in worker processes.

Each worker is a spawned process that rebuilds the tokenizer from its serialized JSON (no
`transformers` import, no fork of a process holding torch threads) and encodes single-threaded,
so `workers` is the number of cores used. Batches go out and come back in order, at most two per
worker in flight, so memory stays bounded whatever the corpus size. A batch comes back as one
flat token array plus the document lengths: far cheaper to pickle than lists of Python ints.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from itertools import chain
from typing import Iterable, Iterator

import numpy as np

_worker_tokenizer = None
_worker_eos: int = 0


def _encode(tokenizer, texts: list[str], eos: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every text with the tokenizer's own special tokens, then EOS, flattened.
    `encode_batch_fast` (tokenizers >= 0.20) gives the same ids without computing character
    offsets, which a shard does not store: about a quarter less time."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    ids = [e.ids for e in encode(texts, add_special_tokens=True)]
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids)) + 1
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    is_eos = np.zeros(len(flat), dtype=bool)
    is_eos[np.cumsum(lengths) - 1] = True
    flat[is_eos] = eos
    flat[~is_eos] = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=len(flat) - len(ids))
    return flat, lengths


def _init_worker(tokenizer_json: str, eos: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker; set before first use
    from tokenizers import Tokenizer

    global _worker_tokenizer, _worker_eos
    _worker_tokenizer, _worker_eos = Tokenizer.from_str(tokenizer_json), eos


def _work(job: tuple[list[str], str]) -> tuple[np.ndarray, np.ndarray]:
    texts, dtype = job
    return _encode(_worker_tokenizer, texts, _worker_eos, dtype)


class Encoder:
    """`encoder.map(batches)` takes (texts, tag) pairs and yields (tokens, lengths, tag), in order."""

    def __init__(self, backend, eos: int, dtype: np.dtype, workers: int = 1):
        self.backend, self.eos, self.dtype = backend, eos, np.dtype(dtype).name
        self.workers = max(1, int(workers))
        self._pool = None
        if self.workers > 1:
            ctx = mp.get_context("spawn")
            self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(backend.to_str(), eos))

    def map(self, batches: Iterable[tuple[list[str], object]]) -> Iterator[tuple[np.ndarray, np.ndarray, object]]:
        if self._pool is None:
            for texts, tag in batches:
                yield *_encode_single_thread(self.backend, texts, self.eos, self.dtype), tag
            return
        pending: deque = deque()
        for texts, tag in batches:
            pending.append((self._pool.apply_async(_work, ((texts, self.dtype),)), tag))
            if len(pending) >= 2 * self.workers:
                result, tag = pending.popleft()
                yield *result.get(), tag
        while pending:
            result, tag = pending.popleft()
            yield *result.get(), tag

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def _encode_single_thread(backend, texts: list[str], eos: int, dtype: str):
    """One worker means one core: keep the Rust thread pool out of it too."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return _encode(backend, texts, eos, dtype)
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
