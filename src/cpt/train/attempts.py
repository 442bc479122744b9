"""Attempts of a guarded stage: when its guard fails (train/forgetting.py), the stage goes back to
where it started and runs again with the next strategy of its ladder (ladder.py).

- `<out>/attempts.json`: per guarded stage, the attempt running now and each failed one (its
  strategy, why it failed, after how many of the stage's tokens, where it is kept);
- `<out>/attempts/<stage>-<k>/`: attempt k's records (`metrics.jsonl`, from the stage's start)
  and its checkpoints (the first and the last unless `guard.keep: all`).

A rollback moves the stage's checkpoints out of `checkpoints/`, so the newest one left is where
the stage started (the previous stage's `@final`; none for a first stage: the run starts over),
then writes `attempts.json` last. A rollback cut short is redone whole: the attempt resumes from
its own newest checkpoint, fails at the same check, and rolls back again. A resumed run reads
`attempts.json` and continues the attempt it names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..config import RecipeLoader, read_json_object
from ..errors import CptError
from ..fileio import write_bytes_atomic, write_json_atomic
from ..ladder import describe, group, ladders
from ..notify import warn

ATTEMPTS, FOLDER = "attempts.json", "attempts"


def read_attempts(out: Path) -> dict:
    path = Path(out) / ATTEMPTS
    if not path.is_file():
        return {}
    try:
        return read_json_object(path)
    except ValueError as e:
        raise CptError(f"{path}: {e}; restore it, or start a new --out") from None


def current(attempts: dict) -> dict[str, int]:
    """Stage name -> the attempt it runs now."""
    return {name: int(entry["attempt"]) for name, entry in attempts.items()}


def forget(out: Path) -> None:
    """A run that starts over (no --resume) starts with every stage's first attempt."""
    (Path(out) / ATTEMPTS).unlink(missing_ok=True)
    shutil.rmtree(Path(out) / FOLDER, ignore_errors=True)


def rollback(run, failed, recipe_path: Path) -> None:
    """Keep the failed attempt aside, put the run back at the stage's start, and record it. Raise
    `CptError` when the ladder has no strategy left."""
    table = ladders(yaml.load(Path(recipe_path).read_text(encoding="utf-8"), Loader=RecipeLoader))
    stage = group(failed.stage, table)
    names = {st.name for st in run.recipe.stages if group(st.name, [stage])}
    attempts = read_attempts(run.out)
    entry = attempts.setdefault(stage, {"attempt": 0, "history": []})
    k, rungs = entry["attempt"], table[stage]
    run.checkpoints.wait()  # a save still being written belongs to the attempt too
    saved = list(reversed(run.checkpoints.candidates()))  # oldest first
    mine = [p for p in saved if run.checkpoints.read_meta(p).get("stage") in names]
    before = [p for p in saved if p not in mine]
    start = run.checkpoints.read_meta(before[-1])["train_state"]["metrics_bytes"] if before else 0

    folder = run.out / FOLDER / f"{stage}-{k}"
    shutil.rmtree(folder, ignore_errors=True)  # a rollback cut short, redone
    (folder / "checkpoints").mkdir(parents=True)
    with open(run.metrics.path, "rb") as f:
        f.seek(start)
        write_bytes_atomic(folder / "metrics.jsonl", f.read())
    keep_all = run.recipe.stages[_index(run, failed.stage)].guard.keep == "all"
    keep = mine if keep_all or len(mine) <= 2 else [mine[0], mine[-1]]
    for p in mine:
        if p in keep:
            p.rename(folder / "checkpoints" / p.name)
        else:
            shutil.rmtree(p)
    entry["history"].append({"attempt": k, "strategy": describe(rungs[k]), "failed": failed.reason,
                             "stage_tokens": failed.stage_tokens, "folder": str(folder.relative_to(run.out))})
    entry["attempt"] = k + 1
    write_json_atomic(run.out / ATTEMPTS, attempts)
    if k + 1 >= len(rungs):
        raise CptError(f"guard: stage {stage} failed with every strategy of its ladder "
                       f"({', '.join(describe(r) for r in rungs)}); the last: {failed.reason}. Each attempt is kept "
                       f"in {run.out / FOLDER}; change the stage or its guard and start a new --out")
    warn(f"guard: stage {stage}, attempt {k} ({describe(rungs[k])}) failed: {failed.reason}; "
         f"rolled back to the stage's start, next: {describe(rungs[k + 1])}")


def _index(run, name: str) -> int:
    return next(i for i, st in enumerate(run.recipe.stages) if st.name == name)
