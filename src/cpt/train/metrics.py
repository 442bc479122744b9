"""metrics.jsonl: one JSON object per optimizer step and per evaluation, appended and flushed.

A checkpoint records the file's length; resuming truncates the file back to it, so the log of a
resumed run is the log of an uninterrupted one."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.touch()

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def size(self) -> int:
        return self.path.stat().st_size

    def truncate(self, size: int) -> None:
        os.truncate(self.path, size)

    def records(self) -> list[dict]:
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]
