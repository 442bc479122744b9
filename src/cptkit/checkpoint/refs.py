"""Checkpoints a recipe names (`init:`, a merge's `checkpoints:`), checked when it loads: a stage
of this run that writes them before the stage that reads them, or a complete, intact folder."""

from __future__ import annotations

from pathlib import Path

from .. import merging
from ..config import MAX_LR, read_json_object
from ..errors import CptError
from ..schedules import decays
from .integrity import verify as verify_checkpoint


def parse_ref(init: str) -> tuple[str, str] | None:
    """(stage, tag) when `init` names a checkpoint of this run (`a@final`); a folder path (which
    may contain `@` too, like `checkpoints/a@final`) always contains a `/`."""
    if "@" in init and "/" not in init and "\\" not in init:
        stage, tag = init.split("@", 1)
        return stage, tag
    return None


def check_point(r, i: int, init: str, where: str, merge: bool = False, max_batch: int = 2**30) -> list[str]:
    """A checkpoint that stage i of recipe `r` starts from (`init:`) or merges (`checkpoints:`)."""
    ref = parse_ref(init)
    if init == "base" or (init == "previous" and not merge):
        return []
    if merge and merging.STEP.match(init):
        problem = merging.step_problem(r, i, init)
        return [f"{where}: {problem}"] if problem else []
    if ref is not None:
        stage, tag = ref
        earlier = [s.name for s in r.stages[:i]]
        if stage not in earlier:
            return [f"{where}: `{init}` names no earlier stage (earlier: {', '.join(earlier) or 'none'})"]
        if tag == "final":
            return []
        if tag == "pre-cooldown":
            if not decays(r.stages[r.stage_index(stage)].schedule):
                return [f"{where}: stage `{stage}` never decays its LR, so it has no pre-cooldown checkpoint"]
            return []
        return [f"{where}: unknown checkpoint tag `@{tag}` (use @final or @pre-cooldown)"]
    folder = Path(init)
    if not (folder / "meta.json").is_file():
        kinds = "base, <stage>@final, <stage>@pre-cooldown, step-N" if merge else \
            "previous, base, <stage>@final, <stage>@pre-cooldown"
        return [f"{where}: `{init}` is not {kinds} or a checkpoint folder (one with meta.json)"]
    # what the stage will read from the folder, checked now rather than after earlier stages trained
    try:
        meta = read_json_object(folder / "meta.json")
    except (OSError, ValueError) as e:
        return [f"{where}: {folder / 'meta.json'} is {e}; not a readable cpt checkpoint"]
    problems = []
    if not (folder / "state").is_dir():
        problems.append(f"{where}: {folder} has no state/ folder (the saved weights); not a complete cpt checkpoint")
    else:
        try:  # its checksums too: a corrupted copy is found before earlier stages train
            verify_checkpoint(folder)
        except CptError as e:
            problems.append(f"{where}: {e}")
    lr, batch = meta.get("lr"), meta.get("batch_tokens")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr <= MAX_LR):
        problems.append(f"{where}: {folder / 'meta.json'} records lr {lr!r}; an LR is a number in [0, {MAX_LR:g}]")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 0 < batch <= max_batch):
        problems.append(f"{where}: {folder / 'meta.json'} records batch_tokens {batch!r}; a positive whole number")
    return problems
