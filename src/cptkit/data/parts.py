"""Tokenizing more than one machine can: `cpt tokenize --part I/N` takes the I-th of N parts of the
input files, balanced by bytes, the same on every machine given the same files; `cpt tokenize --list
OUT.txt PREFIX...` writes the data-file list that joins the parts' shards, each weighted by its
tokens (so the list reads the corpus in its natural proportions).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CptError
from ..fileio import write_text_atomic
from .mixlists import Entry, format_entries
from .shards import Shard


def parse_part(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not found or not 1 <= int(found.group(1)) <= int(found.group(2)):
        raise CptError(f"--part {text}: give I/N with 1 <= I <= N, e.g. --part 3/8 (array task 3 of 8)")
    return int(found.group(1)), int(found.group(2))


def size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (a `save_to_disk` dataset)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def split(files: list[Path], n: int) -> list[list[Path]]:
    """N parts of the files, balanced by bytes: largest first, each to the lightest part so far
    (ties: the lower part). Sorted by path first, so the order the files are given in does not
    matter; each part lists its files in path order."""
    unique = sorted(set(files), key=str)
    if n > len(unique):
        raise CptError(f"--part: {n} parts of {len(unique)} file(s); a part is at least one file, so give at most "
                       f"{len(unique)} parts (or split the files first)")
    parts: list[list[Path]] = [[] for _ in range(n)]
    loads = [0] * n
    for path in sorted(unique, key=lambda p: (-size(p), str(p))):
        k = min(range(n), key=lambda i: (loads[i], i))
        parts[k].append(path)
        loads[k] += size(path)
    return [sorted(p, key=str) for p in parts]


def write_list(out: Path, prefixes: list[Path], corpus: str | None) -> list[Entry]:
    """`out`: one line per shard, `tokens/total prefix corpus` (absolute prefix), at full precision."""
    if not prefixes:
        raise CptError("--list: give the shards' prefixes (PREFIX for PREFIX.bin/.idx)")
    tokens = []
    for prefix in prefixes:
        shard = Shard(prefix)  # checks .idx and .bin
        if shard.num_tokens == 0:
            raise CptError(f"{prefix}: the shard has 0 tokens; leave it out")
        tokens.append(shard.num_tokens)
    total = sum(tokens)
    corpus = corpus or Path(out).stem
    # absolute: Megatron reads a relative prefix from its working directory, a `list:` source from
    # the list's folder; a path from the root means the same shard to both, wherever they run
    entries = [Entry(t / total, str(Path(p).resolve()), corpus, i + 1) for i, (p, t) in enumerate(zip(prefixes, tokens))]
    write_text_atomic(Path(out), format_entries(entries))
    return entries
