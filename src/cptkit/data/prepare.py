"""Everything data a run needs, prepared once before stage one: shards, validation slices, streams.

The validation slice of every source is carved once and stored in the run directory
(`data/<source>.val.npy`); training streams use the remaining documents only, and a resume reuses
the stored slices, so evaluation sets never change across stages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fileio import write_json_atomic
from ..errors import CptError
from ..eval.validation import validation_windows
from ..recipe import BUFFER, Recipe, budget_tokens
from .buffer import ReplayBuffer
from .packing import PackedStream
from .tokenize import TokenizedSource, carve_validation, prepare_source, recorded_source


@dataclass
class SourceData:
    tokenized: TokenizedSource
    train_ids: np.ndarray
    val_ids: np.ndarray
    stream: PackedStream


class RunData:
    """Per-source shards and streams, the fixed validation windows, and the replay buffer."""

    def __init__(self, recipe: Recipe, out: Path, tokenizer, leader: bool = True):
        """`leader`: prepares every shard and records their keys (rank 0); the other ranks open
        what it recorded, and write nothing."""
        self.recipe, self.leader = recipe, leader
        self.dir = out / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        shard_dir = recipe.data_dir or out / "shards"
        keys_path = self.dir / "sources.json"
        recorded = json.loads(keys_path.read_text()) if keys_path.is_file() else {}
        self.sources: dict[str, SourceData] = {}
        for name, cfg in recipe.sources.items():
            if leader:
                tok = prepare_source(name, cfg, tokenizer, shard_dir, expect_key=recorded.get(name),
                                     workers=recipe.tokenize_workers or os.cpu_count() or 1)
            else:
                tok = recorded_source(name, cfg, tokenizer, shard_dir, recorded.get(name))
            self.sources[name] = self._split(name, tok)
        self._check_buffer_budgets()
        if leader:
            write_json_atomic(keys_path, {n: s.tokenized.key for n, s in self.sources.items()})
        self.buffer = ReplayBuffer(out / "buffer")
        self._streams: dict[tuple[str, int], PackedStream] = {}  # (stream, seq_len): other lengths, buffers
        self._check_lengths()

    def _check_lengths(self) -> None:
        """A source shorter than one sample of any stage from the first that reads it (a cursor is
        carried to every later stage's length, read or not): refused now, not then."""
        first: dict[str, int] = {}
        for i, st in enumerate(self.recipe.stages):
            first |= {n: i for n in st.mix or {} if n != BUFFER and n not in first}
            for name in first:
                try:
                    self.stream(name, self.recipe.stage_len(st))
                except CptError as e:
                    raise CptError(f"{e} (stage {st.name} runs at seq_len {self.recipe.stage_len(st):,}, and every "
                                   "source read before carries its position to that length)") from None

    def _check_buffer_budgets(self) -> None:
        """A buffer_add larger than its source would be capped silently at the stage's end."""
        for i, st in enumerate(self.recipe.stages):
            if st.buffer_add is None:
                continue
            available = self.sources[st.buffer_add.source].stream.distinct_tokens  # not upsampled copies
            tokens = budget_tokens(st.buffer_add, available)
            if st.buffer_add.tokens is not None and tokens > available:
                raise CptError(f"stages[{i}].buffer_add.tokens: {tokens:,} is more than the "
                               f"{available:,} training tokens of source `{st.buffer_add.source}`")
            if st.buffer_add.fraction is not None and tokens < self.recipe.max_seq_len:
                raise CptError(f"stages[{i}].buffer_add.fraction: {st.buffer_add.fraction:g} of the {available:,} "
                               f"training tokens of source `{st.buffer_add.source}` is {tokens:,} tokens, less "
                               f"than one sample (seq_len = {self.recipe.max_seq_len}); raise it or give `tokens`")

    def _split(self, name: str, tok: TokenizedSource) -> SourceData:
        shard = tok.open()
        val_path = self.dir / f"{name}.val.npy"
        if val_path.is_file():
            val_ids = np.load(val_path)
        elif not self.leader:
            raise CptError(f"{val_path}: the validation slice rank 0 carved is not here; --out must be on a "
                           "file system that every node shares")
        else:
            val_ids = carve_validation(shard, self.recipe.validation.tokens_per_source, self.recipe.seed, name)
            tmp = self.dir / f"{name}.val.tmp.npy"
            np.save(tmp, val_ids)
            os.replace(tmp, val_path)
        train_ids = np.setdiff1d(np.arange(len(shard)), val_ids)
        up = self.recipe.sources[name].upsample_long
        stream = PackedStream(name, shard, train_ids, self.recipe.seq_len, self.recipe.seed,
                              upsample=None if up is None else (up.min_tokens, up.factor))
        return SourceData(tok, train_ids, val_ids, stream)

    def validation(self, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """Each source's fixed validation slice as windows of `seq_len` tokens (default: the
        recipe's, so that every stage's loss is measured alike)."""
        r = self.recipe
        return {n: validation_windows(s.stream.shard, s.val_ids, r.validation.tokens_per_source, seq_len or r.seq_len)
                for n, s in self.sources.items()}

    def stream_name(self, mix_name: str, buffer_version: int) -> str:
        return self.buffer.stream_name(buffer_version) if mix_name == BUFFER else mix_name

    def stream(self, name: str, seq_len: int | None = None) -> PackedStream:
        """A source's (or a buffer version's, `buffer@v2`) samples of `seq_len` tokens (default:
        the recipe's). Every length cuts the same epochs (packing.carry moves between them)."""
        seq_len = seq_len or self.recipe.seq_len
        if name in self.sources and seq_len == self.recipe.seq_len:
            return self.sources[name].stream
        if (name, seq_len) not in self._streams:
            if name in self.sources:
                src, up = self.sources[name], self.recipe.sources[name].upsample_long
                stream = PackedStream(name, src.stream.shard, src.train_ids, seq_len, self.recipe.seed,
                                      upsample=None if up is None else (up.min_tokens, up.factor))
            else:
                shard = self.buffer.shard(int(name.rsplit("@v", 1)[1]))
                stream = PackedStream(name, shard, np.arange(len(shard)), seq_len, self.recipe.seed)
            self._streams[(name, seq_len)] = stream
        return self._streams[(name, seq_len)]
