"""metrics.jsonl: one JSON object per optimizer step and per evaluation, appended and flushed.

A checkpoint records the file's length; resuming truncates the file back to it, so the log of a
resumed run is the log of an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True, sinks: list | None = None):
        self.path = Path(path)
        self.enabled = enabled  # one writer: rank 0 of a multi-process run
        self.sinks = list(sinks or []) if enabled else []  # TensorBoard, W&B (train/sinks.py)
        if enabled:
            self.path.touch()

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        bad = sorted(_nonfinite_keys(record))
        if bad:  # JSON has no NaN: write null and say which fields were not finite
            record = {**_finite(record), "nonfinite": bad}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        for sink in self.sinks:
            sink.write(record)

    def size(self) -> int:
        return self.path.stat().st_size if self.enabled else 0

    def truncate(self, size: int) -> None:
        """Back to `size` bytes (a checkpoint's); the sinks rewind to the same records."""
        if self.enabled:
            os.truncate(self.path, size)
        if self.sinks:
            kept = self.records()
            for sink in self.sinks:
                sink.rewind(kept)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def records(self) -> list[dict]:
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


def _nonfinite_keys(obj, prefix: str = ""):
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, float) and not math.isfinite(v):
            yield key
        elif isinstance(v, (dict, list)):
            yield from _nonfinite_keys(v, key + ".")


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
