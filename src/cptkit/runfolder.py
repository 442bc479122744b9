"""The run folder (`--out`): whose it is, who holds it, and what `cpt` may delete in it.

- `.cpt-run.json` marks a folder as a cpt run (run id, the recipe it started from). Only a marked
  folder is ever cleaned; anything else must be new or empty.
- `.cpt-files.json` lists the files the run wrote with their size and mtime. A run that died
  before its first checkpoint starts over by removing only those files, and only while unchanged.
- `.cpt-lock` is held with `flock` for the whole run: a second `cpt run` on the folder stops with
  the holder's PID. The OS drops the lock when its process dies, so a stale lock is simply taken.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path

from .errors import CptError
from .fileio import write_json_atomic

MARKER, FILES, LOCK = ".cpt-run.json", ".cpt-files.json", ".cpt-lock"
# what a run writes before its first checkpoint (the shard cache `shards/` is kept on purpose)
_HELD: dict[str, int] = {}  # lock file -> descriptor, for the locks this process holds
OWNED = ("recipe.yaml", "metrics.jsonl", "data", "buffer", "plots", "summary.json", "report.md", "tensorboard",
         "wandb")


class RunFolder:
    def __init__(self, out: Path):
        self.out = Path(out)
        self._lock_fd: int | None = None

    @property
    def marker(self) -> dict:
        try:
            data = json.loads((self.out / MARKER).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def is_run(self) -> bool:
        return bool(self.marker.get("run_id"))

    def foreign(self) -> list[str]:
        """Entries that make the folder not ours to use: anything, unless the folder is marked."""
        if not self.out.is_dir() or self.is_run():
            return []
        return sorted(p.name for p in self.out.iterdir() if p.name != LOCK)

    def check_placement(self, recipe_path: Path) -> None:
        """`--out` must not be (or contain) the folder of the recipe: a run folder is cpt's to clean."""
        if self.out.exists() and not self.out.is_dir():
            raise CptError(f"--out {self.out}: is a file; give a folder")
        out, home = self.out.resolve(), Path(recipe_path).resolve().parent
        if home == out or out in home.parents:
            raise CptError(f"--out {self.out}: holds the recipe {recipe_path}; give a new folder for the run "
                           "(e.g. --out runs/NAME)")

    def lock(self) -> None:
        """Hold the folder for this process; a one-line error naming the holder if another has it.
        Re-entrant within a process (flock would refuse a second descriptor of our own); only the
        `RunFolder` that took the lock lets it go."""
        self.out.mkdir(parents=True, exist_ok=True)
        key = str((self.out / LOCK).resolve())
        if key in _HELD:
            return
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CptError(f"--out {self.out}: another cpt process (PID {holder}) is running in this folder; "
                           "wait for it to finish or choose another --out") from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP: NFS without lockd, Lustre without -o flock
            os.close(fd)
            raise CptError(f"--out {self.out}: cannot lock the folder ({e.strerror}); put the run folder on a file "
                           "system that supports flock") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock_fd = _HELD[key] = fd  # held until this process exits (or `unlock`)

    def unlock(self) -> None:
        key = str((self.out / LOCK).resolve())
        if self._lock_fd is not None and _HELD.get(key) == self._lock_fd:
            os.close(_HELD.pop(key))
        self._lock_fd = None

    def mark(self, recipe_path: Path) -> None:
        write_json_atomic(self.out / MARKER, {"run_id": uuid.uuid4().hex, "created": time.time(),
                                              "recipe": str(Path(recipe_path).resolve())})
        self.record()

    def record(self) -> None:
        """Remember every file the run has written so far, with its size and mtime. Links are
        never followed: what a link points to is not the run's."""
        files = {}
        for name in OWNED:
            for p in _own_files(self.out / name):
                st = p.lstat()
                files[p.relative_to(self.out).as_posix()] = [st.st_size, st.st_mtime_ns]
        write_json_atomic(self.out / FILES, files)

    def clean(self) -> None:
        """Start over: remove the files this run wrote and that nobody changed since; keep the rest."""
        try:
            files = json.loads((self.out / FILES).read_text())
        except (OSError, ValueError):
            files = {}
        for rel, stat in files.items() if isinstance(files, dict) else ():
            p = self._inside(rel)
            if p is not None and isinstance(stat, list) and p.is_file() and not p.is_symlink():
                st = p.lstat()
                if [st.st_size, st.st_mtime_ns] == stat:
                    p.unlink()
        for name in OWNED:  # the folders, if nothing is left in them
            root = self.out / name
            if root.is_dir() and not root.is_symlink():
                for d in sorted((p for p in _own_dirs(root)), key=lambda p: -len(p.parts)) + [root]:
                    if not any(d.iterdir()):
                        d.rmdir()
        self.record()

    def _inside(self, rel) -> Path | None:
        """A manifest entry as a path, only if it names a file under one of the run's own folders
        (relative, no `..`, no link on the way): the manifest is a file anyone could edit."""
        if not isinstance(rel, str):
            return None
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts or parts[0] not in OWNED:
            return None
        path = self.out
        for part in parts[:-1]:
            path = path / part
            if path.is_symlink() or not path.is_dir():
                return None
        return path / parts[-1]


def _own_files(root: Path) -> list[Path]:
    """Regular files under `root` (or `root` itself), never through a link."""
    if root.is_symlink():
        return []
    if root.is_file():
        return [root]
    found = []
    for folder, _, names in os.walk(root, followlinks=False):
        found += [Path(folder) / n for n in names if (Path(folder) / n).is_file() and not (Path(folder) / n).is_symlink()]
    return found


def _own_dirs(root: Path) -> list[Path]:
    return [Path(folder) / d for folder, dirs, _ in os.walk(root, followlinks=False) for d in dirs
            if not (Path(folder) / d).is_symlink()]
