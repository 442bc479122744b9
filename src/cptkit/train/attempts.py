"""Attempts of a guarded stage: when its guard fails (train/forgetting.py), the stage goes back to
where it started and runs again with the next strategy of its ladder (ladder.py).

- `<out>/attempts.json`: per guarded stage, the attempt running now and each failed one (its
  strategy, why it failed, after how many of the stage's tokens, where it is kept);
- `<out>/attempts/<stage>-<k>/`: attempt k's records (`metrics.jsonl`, from the stage's start)
  and its checkpoints (the first and the last unless `guard.keep: all`).

A rollback has three steps, each safe to cut short: (1) `attempts.json` records it as pending,
with the checkpoints to move and where the stage's records start; (2) the records are copied
aside and the checkpoints moved (then pruned), so the newest checkpoint left is where the stage
started (the previous stage's `@final`; none for a first stage: the run starts over); (3)
`attempts.json` moves on to the next attempt. A run that stopped anywhere in between finishes the
pending rollback before it builds anything (`finish_pending`), from the same list: nothing of the
attempt is lost or redone. A resumed run then continues the attempt `attempts.json` names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..checkpoint.manager import CheckpointManager
from ..errors import CptError
from ..fileio import write_bytes_atomic, write_json_atomic
from ..ladder import ATTEMPTS_FILE, describe, group, ladders, written_names
from ..notify import warn

FOLDER = "attempts"


def read_attempts(out: Path, recipe_hash: str | None = None) -> dict:
    """Stage name -> its entry (`attempt`, `history`, maybe `pending`); {} before any rollback.
    With `recipe_hash`: refused when the record is another recipe's."""
    path = Path(out) / ATTEMPTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stages, theirs = data["stages"], data["recipe_hash"]
        for entry in stages.values():
            assert isinstance(entry["attempt"], int) and entry["attempt"] >= 0 and isinstance(entry["history"], list)
    except (ValueError, KeyError, TypeError, AssertionError, AttributeError):
        raise CptError(f"{path}: not the attempts record cpt writes; restore it, or start a new --out") from None
    if recipe_hash is not None and theirs != recipe_hash:
        raise CptError(f"--resume: the recipe differs from the one whose attempts {path} records; resume with that "
                       "recipe, or start a new --out")
    return stages


def _write(out: Path, stages: dict, recipe_hash: str) -> None:
    write_json_atomic(Path(out) / ATTEMPTS_FILE, {"recipe_hash": recipe_hash, "stages": stages})


def current(attempts: dict) -> dict[str, int]:
    """Stage name -> the attempt it runs now."""
    return {name: entry["attempt"] for name, entry in attempts.items()}


def forget(out: Path) -> None:
    """A run that starts over (no --resume) starts with every stage's first attempt."""
    (Path(out) / ATTEMPTS_FILE).unlink(missing_ok=True)
    shutil.rmtree(Path(out) / FOLDER, ignore_errors=True)


def rollback(run, failed, data: dict) -> None:
    """Set the failed attempt aside and put the run back at the stage's start (`data`: the recipe
    as written). Raise `CptError` when the ladder has no strategy left."""
    stage, written = failed.stage, written_names(data)
    names = {st.name for st in run.recipe.stages if group(st.name, [stage], written) == stage}
    run.checkpoints.wait()  # a save still being written belongs to the attempt too
    saved = list(reversed(run.checkpoints.candidates()))  # oldest first
    mine = [p.name for p in saved if run.checkpoints.read_meta(p).get("stage") in names]
    before = [p for p in saved if p.name not in mine]
    attempts = read_attempts(run.out, run.recipe_hash)
    entry = attempts.setdefault(stage, {"attempt": 0, "history": []})
    entry["pending"] = {"reason": failed.reason, "stage_tokens": failed.stage_tokens, "move": mine,
                        "keep_all": next(st.guard.keep == "all" for st in run.recipe.stages if st.name in names),
                        "records_from": run.checkpoints.read_meta(before[-1])["train_state"]["metrics_bytes"]
                        if before else 0}
    _write(run.out, attempts, run.recipe_hash)
    finish_pending(run.out, data, run.recipe_hash)


def finish_pending(out: Path, data: dict, recipe_hash: str) -> None:
    """Complete every rollback `attempts.json` records as pending (see the module's docstring)."""
    attempts = read_attempts(out, recipe_hash)
    table = ladders(data)
    for stage, entry in attempts.items():
        pending = entry.get("pending")
        if pending is None:
            continue
        k, rungs = entry["attempt"], table.get(stage, [None])
        folder = Path(out) / FOLDER / f"{stage}-{k}"
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        metrics = Path(out) / "metrics.jsonl"
        if metrics.is_file() and not (folder / "metrics.jsonl").is_file():  # the log is cut only on the next resume
            with open(metrics, "rb") as f:
                f.seek(pending["records_from"])
                write_bytes_atomic(folder / "metrics.jsonl", f.read())
        for name in pending["move"]:
            if (Path(out) / "checkpoints" / name).is_dir():
                (Path(out) / "checkpoints" / name).rename(folder / "checkpoints" / name)
        kept = sorted((p for p in (folder / "checkpoints").iterdir() if p.is_dir()),
                      key=lambda p: CheckpointManager.read_meta(p).get("seq", -1))
        for p in [] if pending["keep_all"] else kept[1:-1]:
            shutil.rmtree(p)
        entry["history"].append({"attempt": k, "strategy": describe(rungs[k]) if k < len(rungs) else "?",
                                 "failed": pending["reason"], "stage_tokens": pending["stage_tokens"],
                                 "folder": f"{FOLDER}/{stage}-{k}"})
        entry["attempt"] = k + 1
        del entry["pending"]
        _write(out, attempts, recipe_hash)
        if k + 1 < len(rungs):
            warn(f"guard: stage {stage}, attempt {k} ({describe(rungs[k])}) failed: {pending['reason']}; "
                 f"rolled back to the stage's start, next: {describe(rungs[k + 1])}")
        else:
            raise CptError(f"guard: stage {stage} failed with every strategy of its ladder "
                           f"({', '.join(describe(r) for r in rungs)}); the last: {pending['reason']}. Each attempt is "
                           f"kept in {Path(out) / FOLDER}; change the stage or its guard and start a new --out")
