"""The composition root: a validated recipe and an output folder become a `Run`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint.manager import CheckpointManager
from .data.prepare import RunData
from .errors import CptError
from .model.load import build_model, load_tokenizer
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
    _check_out_dir(out, resume, recipe_hash, checkpoints)
    init_lrs = _init_lrs(recipe)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "recipe.yaml").is_file():
        (out / "recipe.yaml").write_text(recipe_text)

    device = pick_device(recipe.device)
    tokenizer = load_tokenizer(recipe)
    model = build_model(recipe, tokenizer).to(device)
    model.train()
    data = RunData(recipe, out, tokenizer)
    return Run(
        recipe=recipe, out=out, tokenizer=tokenizer, model=model,
        optimizer=build_optimizer(model, recipe.optimizer), device=device, autocast=autocast_for(device),
        data=data, validation=data.validation(), segments=plan_segments(recipe, init_lrs),
        checkpoints=checkpoints, metrics=MetricsLog(out / "metrics.jsonl"), state=TrainState(),
        recipe_hash=recipe_hash,
    )


def _check_out_dir(out: Path, resume: bool, recipe_hash: str, checkpoints: CheckpointManager) -> None:
    """Never write over another run: a fresh run needs an empty folder; a resume needs the same recipe."""
    if not out.exists():
        return
    saved = out / "recipe.yaml"
    if not resume:
        if any(out.iterdir()):
            raise CptError(f"--out {out}: already holds a run; pass --resume to continue it, or choose a new folder")
        return
    if saved.is_file():
        theirs = hashlib.sha256(saved.read_text().encode()).hexdigest()[:16]
        if theirs != recipe_hash:
            raise CptError(f"--resume: the recipe differs from the one this run started with ({saved}); "
                           "resume with that recipe, or start a new --out")


def _init_lrs(recipe: Recipe) -> dict[int, float]:
    """The LR stored with every checkpoint folder named by an `init:`: its stage continues from it."""
    lrs = {}
    for i, st in enumerate(recipe.stages):
        if st.init not in ("previous", "base") and "@" not in st.init:
            lrs[i] = CheckpointManager.read_meta(Path(st.init)).get("lr", recipe.optimizer.lr)
    return lrs
