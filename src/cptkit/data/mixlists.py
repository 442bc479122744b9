"""`cpt mix`: combine Megatron-DeepSpeed / blendcorpus data-file lists into one, with group weights.

blendcorpus's utils/mix_datasets.py arithmetic, operation for operation, written with `repr(float)`
instead of `.6f`, whose rounding prints weights under 5e-7 as 0 (ALCF's dolma list at group weight
0.1 loses 3 of 2419 files) and drops relative precision everywhere else."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import CptError, describe_os_error
from ..fileio import write_text_atomic
from .shards import Shard

HELP = """Mix data-file lists (blendcorpus / Megatron-DeepSpeed format) into one list.

Each list has lines `weight prefix [corpus]` (blank lines and # comments skipped). For each pair
W_i LIST_i, with S_i the sum of LIST_i's weights and G the sum of all W, each entry becomes

    new_weight = (weight / S_i) * (W_i / G)

so each list gets the share W_i / G of the mix and keeps its internal proportions. Every entry is
kept, in order. Same formula as blendcorpus's utils/mix_datasets.py, but weights are written at
full precision (shortest round-trip float), where blendcorpus's 6 decimals print weights under
5e-7 as 0, silently dropping those files. --tokens replaces each listed weight by the token count
in <prefix>.idx (relative prefixes are resolved from the current directory, as Megatron does).

Example: cpt mix --inputs 0.7 dolma.txt 0.3 code.txt --output mix.txt"""


@dataclass(frozen=True)
class Entry:
    weight: float
    prefix: str
    corpus: str | None
    line: int  # 1-based line in the list it came from, for error messages


def read_list(path: Path, allow_zero: bool = False) -> list[Entry]:
    """The entries of one data-file list; `CptError` (one line, with file and line) on bad input.
    `allow_zero`: keep weights of 0 (a source list may hold lines that blendcorpus rounded to 0)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CptError(f"{path}: data-file list not found; check the path") from None
    except OSError as e:
        raise CptError(f"data-file list {describe_os_error(e)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CptError(f"{path}:{line}: not UTF-8 text; a data-file list is plain text") from None
    entries = []
    for n, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        # A comment starts at a field beginning with '#'; a '#' inside a path stays part of it.
        fields = fields[: next((i for i, f in enumerate(fields) if f.startswith("#")), len(fields))]
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise CptError(f"{path}:{n}: expected `weight prefix [corpus]`, found {len(fields)} fields; "
                           "fix the line or comment it out with #")
        try:
            weight = float(fields[0])
        except ValueError:
            weight = math.nan  # reported just below, with the other unusable weights
        if not (math.isfinite(weight) and (weight > 0 or (allow_zero and weight == 0))):
            raise CptError(f"{path}:{n}: weight {fields[0]!r} is not usable; weights must be positive "
                           "finite numbers (delete the line to drop a dataset)")
        entries.append(Entry(weight, fields[1], fields[2] if len(fields) == 3 else None, n))
    if not entries:
        raise CptError(f"{path}: no entries; a data-file list needs lines `weight prefix [corpus]`")
    return entries


def _tokens(path: Path, e: Entry) -> float:
    try:  # Shard validates .idx and .bin; a relative prefix opens from the cwd
        tokens = Shard(e.prefix).num_tokens
    except CptError as err:
        raise CptError(f"{path}:{e.line}: {err}") from None
    if tokens == 0:
        raise CptError(f"{path}:{e.line}: shard {e.prefix} has 0 tokens; remove it from the list")
    return float(tokens)


def mix(inputs: list[tuple[float, Path]], use_tokens: bool = False) -> list[Entry]:
    """Every entry of every list (list order, then line order) with weight (w / S_i) * (g_i / G).

    `inputs` are (group weight g_i, list path) pairs; S_i sums list i's weights, G sums the g.
    With `use_tokens`, w is the token count of `<prefix>.idx`; a relative prefix is resolved
    relative to the current directory, as Megatron does."""
    for i, (g, _) in enumerate(inputs, start=1):
        if not (math.isfinite(g) and g > 0):
            raise CptError(f"--inputs: weight {i} ('{g!r}') must be a positive number")
    total = sum(g for g, _ in inputs)
    if not math.isfinite(total):
        raise CptError(f"--inputs: the group weights sum past the largest float ({sys.float_info.max:.4g}); "
                       "scale them down (only their ratios matter)")
    mixed = []
    for g, path in inputs:
        entries = read_list(path)
        if use_tokens:
            entries = [replace(e, weight=_tokens(path, e)) for e in entries]
        list_sum = sum(e.weight for e in entries)  # left to right, as blendcorpus's running sum
        if not math.isfinite(list_sum):
            raise CptError(f"{path}: the weights sum past the largest float ({sys.float_info.max:.4g}); "
                           "scale them down (only their ratios matter)")
        fraction = g / total
        for e in entries:
            weight = (e.weight / list_sum) * fraction
            if not weight > 0:  # underflow: the entry would be written as 0 and silently dropped
                raise CptError(f"{path}:{e.line}: weight {e.weight!r} becomes {weight!r} in the mix (below the "
                               "smallest float); scale the list's weights up or drop the line")
            mixed.append(replace(e, weight=weight))
    return mixed


def format_entries(entries: list[Entry]) -> str:
    """A data-file list; `repr` is the shortest string that reads back as the same float."""
    lines = (" ".join([repr(e.weight), e.prefix] + ([e.corpus] if e.corpus else [])) for e in entries)
    return "".join(line + "\n" for line in lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("mix", help="mix data-file lists with group weights", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="+", required=True, metavar="W LIST",
                   help="pairs of group weight and data-file list: W1 LIST1 W2 LIST2 ...")
    p.add_argument("--tokens", action="store_true",
                   help="weigh each entry by the tokens in its <prefix>.idx instead of its listed weight")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="write the mixed list here (atomically); default: stdout")
    return p


def run(args) -> int:
    values = args.inputs
    if len(values) % 2:
        raise CptError(f"--inputs: got {len(values)} values; give pairs W1 LIST1 W2 LIST2 ...")
    inputs = []
    for i in range(0, len(values), 2):
        try:
            g = float(values[i])
        except ValueError:
            raise CptError(f"--inputs: weight {i // 2 + 1} ({values[i]!r}) is not a number; "
                           "give pairs W1 LIST1 W2 LIST2 ...") from None
        inputs.append((g, Path(values[i + 1])))
    text = format_entries(mix(inputs, use_tokens=args.tokens))
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(args.output, text)
    return 0
