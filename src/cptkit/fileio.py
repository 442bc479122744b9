"""Atomic file writes: a temporary file in the same folder, then a rename. A reader (or a run
that crashed mid-write) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    if path.exists() and not path.is_file():  # /dev/stdout, a FIFO, a device: write into it, never replace it
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(path))
        with open(path, "wb") as f:
            f.write(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the data
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Flush every file in a folder (and the folder itself) before it is renamed into place."""
    for f in Path(path).rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def recover_dirs(root: Path) -> None:
    """Put back any folder `replace_dir` had swapped out when its process died between renames."""
    for old in Path(root).glob(".old-*") if Path(root).is_dir() else []:
        final = old.with_name(old.name[len(".old-"):])
        if old.is_dir() and not final.exists():
            os.replace(old, final)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place. An existing one is swapped out first and removed only
    after, so at every instant `final` is the old complete folder or the new one."""
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)  # the old complete folder goes back where it was
            raise
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
