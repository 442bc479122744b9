"""Batches read one step ahead, in a thread, while the device trains on the current one.

A step's batch is a pure function of its index (the stage's exact mixture), so reading it early
changes nothing but the wait: the loop asks for step k and gets the batch the thread started
reading during step k-1. On CUDA the batch lands in pinned memory, so that its copy to the GPU
(`Run.local`, non_blocking) overlaps the work already queued there."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch


class Prefetcher:
    def __init__(self, make: Callable[[int], torch.Tensor], end: int, pin: bool = False):
        self.make, self.end, self.pin = make, end, pin
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpt-batches")
        self.ahead: tuple[int, Future] | None = None

    def _read(self, k: int) -> torch.Tensor:
        tokens = self.make(k)
        return tokens.pin_memory() if self.pin else tokens

    def get(self, k: int) -> torch.Tensor:
        """Step k's batch (read now unless it was read ahead); step k+1's starts reading."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead[0] != k:
            ahead[1].cancel()  # read for a step that was not asked for
            ahead = None
        tokens = ahead[1].result() if ahead is not None else self._read(k)
        if k + 1 < self.end:
            self.ahead = (k + 1, self.pool.submit(self._read, k + 1))
        return tokens

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        if self.ahead is not None:
            self.ahead[1].cancel()
        self.pool.shutdown(wait=True)  # nothing reads the shards after the stage
