"""The composition root: a validated recipe and an output folder become a `Run`."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint.manager import CheckpointManager
from .data.prepare import RunData
from .errors import CptError
from .fileio import write_text_atomic
from .model.load import build_model, check_extension, load_tokenizer, new_token_ids
from .recipe import Recipe
from .schedules import Segment, plan_segments
from .train.metrics import MetricsLog
from .train.state import TrainState
from .train.step import autocast_for, build_optimizer


@dataclass
class Run:
    recipe: Recipe
    out: Path
    tokenizer: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: object
    data: RunData
    validation: dict[str, torch.Tensor]
    segments: list[Segment]
    checkpoints: CheckpointManager
    metrics: MetricsLog
    state: TrainState
    recipe_hash: str
    new_ids: list[int] | None = None  # tokens added by a vocabulary extension (row-level `trainable:`)
    rows: list = field(default_factory=list)  # the TrainableRows of the stage running now


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise CptError("device: cuda requested but no GPU is visible; use device: auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def build_run(recipe: Recipe, recipe_text: str, out: Path, resume: bool) -> Run:
    """Check the output folder, then build tokenizer, model, data and bookkeeping, in that order."""
    out = Path(out)
    recipe_hash = hashlib.sha256(recipe_text.encode()).hexdigest()[:16]
    checkpoints = CheckpointManager(out / "checkpoints")
    segments = plan_segments(recipe)  # reads the LR stored with any `init:` checkpoint folder
    _prepare_out_dir(out, resume, recipe_hash, checkpoints)
    write_text_atomic(out / "recipe.yaml", recipe_text)

    device = pick_device(recipe.device)
    tokenizer = load_tokenizer(recipe.tokenizer_path)
    model = build_model(recipe, tokenizer).to(device)
    new_ids = new_token_ids(recipe.model.path)
    check_extension(model, tokenizer, new_ids, recipe.model.path)
    model.train()
    data = RunData(recipe, out, tokenizer)
    return Run(
        recipe=recipe, out=out, tokenizer=tokenizer, model=model,
        optimizer=build_optimizer(model, recipe.optimizer), device=device, autocast=autocast_for(device),
        data=data, validation=data.validation(), segments=segments,
        checkpoints=checkpoints, metrics=MetricsLog(out / "metrics.jsonl"), state=TrainState(),
        recipe_hash=recipe_hash, new_ids=new_ids,
    )


# what a run writes before its first checkpoint; safe to clear when no checkpoint exists
_RESTARTABLE = ("recipe.yaml", "metrics.jsonl", "data", "buffer", "plots", "summary.json", "report.md")


def _prepare_out_dir(out: Path, resume: bool, recipe_hash: str, checkpoints: CheckpointManager) -> None:
    """Never write over another run. With a checkpoint, only --resume with the same recipe goes on;
    a cpt folder without one (a run that failed or was killed early) starts over; anything else
    must be a new or empty folder."""
    if out.exists() and not out.is_dir():
        raise CptError(f"--out {out}: is a file; give a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    latest = checkpoints.latest() if checkpoints.root.is_dir() else None
    if latest is not None:
        if not resume:
            raise CptError(f"--out {out}: already holds a run; pass --resume to continue it, or choose a new folder")
        theirs = CheckpointManager.read_meta(latest).get("recipe_hash")
        if theirs != recipe_hash:
            raise CptError(f"--resume: the recipe differs from the one this run started with ({out / 'recipe.yaml'}); "
                           "resume with that recipe, or start a new --out")
        return
    if not (out / "recipe.yaml").is_file():
        raise CptError(f"--out {out}: holds files that are not a cpt run; choose a new or empty folder")
    for name in _RESTARTABLE:  # no checkpoint: nothing trained yet is kept; shards are a cache
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
