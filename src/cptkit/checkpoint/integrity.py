"""Checksums of a checkpoint's files, written with it and verified before it is loaded.

`manifest.json` lists every other file of the checkpoint folder (DCP's `.metadata` and `.distcp`
shards, `meta.json`) with its size and SHA-256. It is written last, after the files are flushed,
so a folder without it is incomplete. With several ranks, each writes its own shards into the
shared folder and the coordinator hashes the finished folder after DCP's final barrier; loading
verifies on the coordinator before any rank reads. Bit rot, a truncated copy or 4 KB of garbage
in a shard is caught here instead of poisoning a run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import CptError
from ..fileio import write_json_atomic

MANIFEST = "manifest.json"
VERSION = 1
_CHUNK = 1 << 22


class CorruptCheckpoint(CptError):
    """A checkpoint folder that is incomplete or whose files do not match their checksums."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)} for p in _files(folder)}
    write_json_atomic(folder / MANIFEST, {"version": VERSION, "files": files})


def verify(folder: Path) -> None:
    """Raise `CorruptCheckpoint` naming the first file that is missing, extra or changed."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("version") != VERSION or not isinstance(files, dict):
            raise ValueError("unknown manifest version")
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{folder}: incomplete checkpoint (no {MANIFEST})") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{folder}: unreadable {MANIFEST} ({e})") from None
    if "state/.metadata" not in files:
        raise CorruptCheckpoint(f"{folder}: incomplete checkpoint (no state/.metadata listed)")
    for rel, want in files.items():
        if not isinstance(want, dict) or not isinstance(rel, str) or ".." in Path(rel).parts or Path(rel).is_absolute():
            raise CorruptCheckpoint(f"{folder}: {MANIFEST} has a malformed entry {rel!r}")
        path = folder / rel
        if not path.is_file():
            raise CorruptCheckpoint(f"{folder}: incomplete checkpoint ({rel} is missing)")
        if path.stat().st_size != want.get("size") or sha256(path) != want.get("sha256"):
            raise CorruptCheckpoint(f"{folder}: {rel} does not match its checksum (corrupted)")
    extra = [p.relative_to(folder).as_posix() for p in _files(folder) if p.relative_to(folder).as_posix() not in files]
    if any(e.startswith("state/") for e in extra):
        raise CorruptCheckpoint(f"{folder}: unexpected file {extra[0]} in the checkpoint")
