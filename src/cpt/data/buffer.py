"""The replay buffer B: documents of earlier stages' new data, kept in the run directory.

Each `add` writes a new version `v<N>.bin/.idx` (the previous documents plus the new ones) and then
points `manifest.json` at it, so a crash mid-add leaves the previous buffer intact. A checkpoint
records the version it saw; resuming uses that version and an add is rewritten identically.
"""

from __future__ import annotations

import json
from pathlib import Path

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
            tokens: int, seed: int) -> int:
        """Write version `version + 1`: the buffer at `version` plus `tokens` tokens of random
        documents (seeded by stage) from `doc_ids` of `shard`. Returns the new version."""
        self.root.mkdir(parents=True, exist_ok=True)
        order = doc_ids[generator(seed, "buffer", stage).permutation(len(doc_ids))]
        cum = np.cumsum(shard.lengths[order].astype(np.int64))
        n = min(int(np.searchsorted(cum, tokens)) + 1, len(order))
        chosen = order[:n]
        new = version + 1
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
        manifest["additions"].append({"version": new, "stage": stage, "source": source, "tokens": taken,
                                      "documents": [int(i) for i in chosen], "shard": shard.prefix})
        manifest["version"] = new
        write_json_atomic(self.root / "manifest.json", manifest)
        return new
