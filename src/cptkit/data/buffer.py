"""The replay buffer B: documents of earlier stages' new data, kept in the run directory.

Each `add` writes a new version `v<N>.bin/.idx` (the previous documents plus the new ones) and then
points `manifest.json` at it, so a crash mid-add leaves the previous buffer intact. A checkpoint
records the version it saw; resuming uses that version and an add is rewritten identically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CptError
from ..fileio import write_json_atomic
from .rng import generator
from .shards import Shard, ShardWriter


class ReplayBuffer:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _manifest(self) -> dict:
        path = self.root / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else {"version": 0, "additions": []}

    def stream_name(self, version: int) -> str:
        """Each version is its own stream, so its cursor starts at 0 when the buffer changes."""
        return f"buffer@v{version}"

    def shard(self, version: int) -> Shard:
        if version <= 0:
            raise CptError("the replay buffer is empty: an earlier stage needs `buffer_add`")
        return Shard(self.root / f"v{version}")

    def add(self, version: int, stage: str, source: str, shard: Shard, doc_ids: np.ndarray,
            tokens: int, seed: int, policy: str = "uniform", pool: float = 4.0,
            score: Callable[[list[np.ndarray]], np.ndarray] | None = None, write: bool = True) -> int:
        """Write version `version + 1`: the buffer at `version` plus `tokens` tokens of documents
        from `doc_ids` of `shard`, in the order `policy` gives (seeded by stage). `hard` needs
        `score` (documents -> mean loss each, e.g. `eval.document_loss.document_losses` bound
        to the model). With several ranks every rank chooses (scoring runs the model on each), and
        only the one with `write` writes the files.
        Returns the new version."""
        self.root.mkdir(parents=True, exist_ok=True)
        rng = generator(seed, "buffer", stage)
        scores = None
        if policy == "uniform":
            order = uniform_order(doc_ids, rng)
        elif policy == "representative":
            order = representative_order(doc_ids, shard.lengths[doc_ids], document_files(shard)[doc_ids], rng)
        elif policy == "hard":
            if score is None:
                raise CptError("buffer_add.policy `hard` needs the model to score documents")
            order, scores = hard_order(doc_ids, shard, tokens, pool, rng, score)
        else:
            raise CptError(f"buffer_add.policy: unknown policy `{policy}` (uniform, representative, hard)")
        cum = np.cumsum(shard.lengths[order].astype(np.int64))
        n = min(int(np.searchsorted(cum, tokens)) + 1, len(order))
        chosen = order[:n]
        new = version + 1
        if not write:
            return new
        with ShardWriter(self.root / f"v{new}", shard.dtype) as w:
            if version > 0:
                old = self.shard(version)
                for i in range(len(old)):
                    w.add(old[i])
            taken = 0
            for i in chosen:
                doc = shard[int(i)]
                room = tokens - taken
                if len(doc) > room:  # the last document is cut to the exact budget, keeping its EOS
                    doc = np.concatenate([doc[: room - 1], doc[-1:]])
                w.add(doc)
                taken += len(doc)
        manifest = self._manifest()
        manifest["additions"] = [a for a in manifest["additions"] if a["version"] <= version]
        addition = {"version": new, "stage": stage, "source": source, "policy": policy, "budget": int(tokens),
                    "tokens": taken, "documents": [int(i) for i in chosen], "shard": shard.prefix}
        if scores is not None:
            addition["scores"] = [float(x) for x in scores[:n]]
        manifest["additions"].append(addition)
        manifest["version"] = new
        write_json_atomic(self.root / "manifest.json", manifest)
        return new


# ---------------------------------------------------------------------------------------------
# policies: each orders `doc_ids`; the writer then takes a prefix up to the exact token budget


def uniform_order(doc_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of the documents."""
    return doc_ids[rng.permutation(len(doc_ids))]


def document_files(shard: Shard) -> np.ndarray:
    """Index of the input file each document of `shard` came from, from its `<prefix>.json`
    (`inputs`: `first_document`, `documents`); all 0 when the shard has no such record."""
    files = np.zeros(len(shard), dtype=np.int64)
    if hasattr(shard, "first"):  # a `list:` source (data/lists.py): its shards are its files
        return np.repeat(np.arange(len(shard.first) - 1), np.diff(shard.first))
    path = Path(shard.prefix + ".json")
    inputs = json.loads(path.read_text()).get("inputs") if path.is_file() else None
    for i, rec in enumerate(inputs or []):
        first = int(rec["first_document"])
        files[first : first + int(rec["documents"])] = i
    return files


def length_quartiles(lengths: np.ndarray) -> np.ndarray:
    """0..3: the quartile of each document's length among these documents."""
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(lengths, [0.25, 0.5, 0.75])
    return np.searchsorted(edges, lengths, side="right")


def representative_order(doc_ids: np.ndarray, lengths: np.ndarray, files: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """Stratified by (input file, length quartile): random order within each stratum, then the
    strata interleaved by (rank + 0.5) / stratum size, so every prefix takes the same fraction
    of each stratum and the buffer keeps the new data's mix of files and lengths."""
    strata = np.asarray(files, dtype=np.int64) * 4 + length_quartiles(np.asarray(lengths))
    perm = rng.permutation(len(doc_ids))
    grouped = perm[np.argsort(strata[perm], kind="stable")]  # by stratum, random within
    _, start, count = np.unique(strata[grouped], return_index=True, return_counts=True)
    rank = np.arange(len(grouped)) - np.repeat(start, count)
    key = (rank + 0.5) / np.repeat(count, count)
    return doc_ids[grouped[np.argsort(key, kind="stable")]]


def hard_order(doc_ids: np.ndarray, shard: Shard, tokens: int, pool: float, rng: np.random.Generator,
               score: Callable[[list[np.ndarray]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A random pool of documents holding ~`pool` x `tokens` tokens, ordered by descending
    `score` (their loss under the model); returns (order, scores in that order)."""
    order = uniform_order(doc_ids, rng)
    cum = np.cumsum(shard.lengths[order].astype(np.int64))
    candidates = order[: min(int(np.searchsorted(cum, pool * tokens)) + 1, len(order))]
    losses = np.asarray(score([shard[int(i)] for i in candidates]), dtype=np.float64)
    by_loss = np.argsort(-losses, kind="stable")
    return candidates[by_loss], losses[by_loss]
