"""The composition root: a validated recipe and an output folder become a `Run`."""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint.manager import CheckpointManager
from .data.prepare import RunData
from .data.lists import check_lists
from .data.tokenize import tokenizer_fingerprint
from .eval.passkey import check_lengths
from .eval.harness import check_harness
from .eval.tasks import load_items
from .distributed.batch import rank_accum, rank_slice
from .distributed.env import Dist, from_env
from .distributed.fsdp import shard_model
from .errors import CptError
from .notify import note
from .runfolder import RunFolder
from .fileio import recover_dirs, write_text_atomic
from .model.load import build_model, check_extension, load_tokenizer, new_token_ids
from .recipe import Recipe
from .schedules import Segment, plan_segments
from .model import relora
from .model.trainable import trainable_params
from .train.guard import NonFiniteGuard
from .train.relora import ReLoRA
from .train import inputs
from .train.merge import check_merges
from .train.upscale import check_upscales
from .train.forgetting import ForgettingGuard
from .train.monitor import StabilityMonitor
from .train.hooks import Hooks
from .train.saves import SealSaves
from .train.sinks import make_sinks
from .train.metrics import MetricsLog
from .train.state import TrainState
from .train.step import autocast_for, build_optimizer
from .train.throughput import Throughput, device_peak_tflops, flops_per_token


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
    validation: dict[str, torch.Tensor]  # windows of the recipe's seq_len: every stage's loss, alike
    segments: list[Segment]
    checkpoints: CheckpointManager
    metrics: MetricsLog
    state: TrainState
    recipe_hash: str
    new_ids: list[int] | None = None  # tokens added by a vocabulary extension (row-level `trainable:`)
    folder: RunFolder | None = None  # the claimed, locked --out (rank 0's)
    hooks: Hooks = field(default_factory=lambda: Hooks([]))
    dist: Dist = field(default_factory=Dist)
    throughput: Throughput = field(default_factory=lambda: Throughput(0.0, None, 1))
    rows: list = field(default_factory=list)  # the TrainableRows of the stage running now
    # the starting model's (rope parameters, positions): what each stage's `rope:` changes
    context: tuple[dict | None, int] = (None, 0)
    documents: object = None  # the inputs of stages with document_masking, once the model is seen to honour it
    # windows of the longest seq_len, when a stage trains longer than the recipe's: loss by position
    long_validation: dict[str, torch.Tensor] | None = None
    tokenizer_fingerprint: str = ""  # recorded in every checkpoint: a merge or init of another tokenizer is refused
    tasks: dict = field(default_factory=dict)  # `evals:`: name -> (its config, its items), read once
    last_eval: dict = field(default_factory=dict)  # the latest evaluation's losses and task scores

    def local(self, tokens: torch.Tensor, micro_batch: int) -> torch.Tensor:
        """This rank's part of a step's global batch, as (micro-batches, micro_batch, seq_len) on the device."""
        part = rank_slice(tokens, micro_batch, self.dist.rank, self.dist.world)
        return part.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Let go of the run before another is built in this process (a rollback's retry): the
        loggers flushed, the folder's lock, the save thread, and the model and moments' memory."""
        self.checkpoints.wait()
        self.checkpoints.shutdown()
        self.metrics.close()
        if self.folder is not None:
            self.folder.unlock()
        self.model = self.optimizer = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise CptError("device: cuda requested but no GPU is visible; use device: auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def recipe_fingerprint(recipe: Recipe) -> str:
    """The validated recipe, not its text: a comment or a reordered key does not change a run, and
    neither does how checkpoints are written (`checkpoint.async`) or where metrics go (`loggers`)."""
    what = recipe.model_dump_json(exclude={"checkpoint": {"asynchronous"}, "loggers": True})
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def build_run(recipe: Recipe, recipe_text: str, out: Path, resume: bool, recipe_path: Path | None = None,
              peak_tflops: float | None = None, fingerprint: str | None = None) -> Run:
    """Claim the output folder, then build tokenizer, model, data and bookkeeping, in that order.
    `fingerprint`: the recipe as written, when `recipe` is one of its guarded stages' attempts."""
    out = Path(out)
    recipe_hash = fingerprint or recipe_fingerprint(recipe)
    device = pick_device(recipe.device)
    d = from_env(device)
    check_world(recipe, d)
    checkpoints = CheckpointManager(out / "checkpoints", d, asynchronous=recipe.checkpoint.asynchronous)
    segments = plan_segments(recipe)  # reads the LR stored with any `init:` checkpoint folder
    torch.manual_seed(recipe.seed)  # the RNG state every checkpoint saves is the recipe's, not the clock's
    tokenizer = load_tokenizer(recipe.tokenizer_path)
    model = build_model(recipe, tokenizer)
    new_ids = new_token_ids(recipe.model.path)
    check_extension(model, tokenizer, new_ids, recipe.model.path)
    check_relora(recipe, model)
    fingerprint = tokenizer_fingerprint(tokenizer)
    check_merges(recipe, model, fingerprint)  # all before --out is touched: a refused run leaves it as it was
    check_lists(recipe, fingerprint, len(tokenizer))
    check_upscales(recipe, model, d.world)
    documents = check_documents(recipe, model, tokenizer)
    tasks = {name: (cfg, load_items(name, cfg, recipe.max_seq_len)) for name, cfg in recipe.evals.items()}  # bad files: one line, now
    check_harness(recipe, d.world)
    # refused here if not installed; one W&B run per run folder
    sinks = make_sinks(recipe.loggers, out, hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]) \
        if d.is_main else []
    if recipe.eval.passkey is not None:  # rotary models take any length; a learned table does not
        fixed = None if model_context(model)[0] else getattr(model.config, "max_position_embeddings", None)
        check_lengths(recipe.eval.passkey, tokenizer, fixed)
    folder = None
    if d.is_main:  # one process claims, locks and writes the folder; the others wait for it
        folder = claim_out_dir(out, resume, recipe_hash, checkpoints, recipe_path)
        write_text_atomic(out / "recipe.yaml", recipe_text)
    model.to(device).train()
    throughput = Throughput(flops_per_token(model, recipe.seq_len), device_peak_tflops(device, peak_tflops), d.world)
    shard_model(model, d, recipe.distributed, device)
    data = d.main_first(lambda: RunData(recipe, out, tokenizer, leader=d.is_main))  # made once, then read
    run = Run(
        recipe=recipe, out=out, tokenizer=tokenizer, model=model,
        optimizer=build_optimizer(model, recipe.optimizer), device=device, autocast=autocast_for(device),
        data=data, validation=data.validation(), segments=segments,
        checkpoints=checkpoints, metrics=MetricsLog(out / "metrics.jsonl", enabled=d.is_main, sinks=sinks),
        state=TrainState(),
        recipe_hash=recipe_hash, new_ids=new_ids, folder=folder, dist=d, throughput=throughput,
        hooks=build_hooks(recipe), context=model_context(model), documents=documents, tokenizer_fingerprint=fingerprint,
        tasks=tasks,
        long_validation=data.validation(recipe.max_seq_len) if recipe.max_seq_len > recipe.seq_len else None,
    )
    if d.is_main:
        checkpoints.check_space(model, run.optimizer)  # early: a week of training before the first save fails
        folder.record()  # what this run wrote so far: a restart before the first checkpoint removes only that
    return run


def check_documents(recipe: Recipe, model, tokenizer):
    """Document masking, when a stage asks for it: refused unless this model's attention keeps two
    packed documents apart (train/inputs.py)."""
    asking = [i for i, st in enumerate(recipe.stages) if st.document_masking]
    if not asking:
        return None
    return inputs.check(model, tokenizer.eos_token_id, f"stages[{asking[0]}].document_masking")


def model_context(model) -> tuple[dict | None, int]:
    params = getattr(model.config, "rope_parameters", None)
    return (dict(params) if params else None), getattr(model.config, "max_position_embeddings", 0)


def build_hooks(recipe: Recipe) -> Hooks:
    hooks = [NonFiniteGuard(recipe.nonfinite)]
    if any(st.relora for st in recipe.stages):
        hooks.append(ReLoRA())
    if recipe.checkpoint.asynchronous:
        hooks.append(SealSaves())
    if recipe.monitor is not None:
        hooks.append(StabilityMonitor(recipe.monitor))
    if any(st.guard for st in recipe.stages):
        hooks.append(ForgettingGuard())
    return Hooks(hooks)


def check_relora(recipe: Recipe, model: torch.nn.Module) -> None:
    """Each ReLoRA stage's targets exist, fit its rank, and are layers the stage trains: before
    any training, not when the adapters go on after a warm start."""
    for i, st in enumerate(recipe.stages):
        if st.relora is None:
            continue
        where = f"stages[{i}] ({st.name}).relora"
        found = relora.chosen(model, st.relora, where)
        trained = trainable_params(model, st.trainable, f"stages[{i}].trainable")
        frozen = [n for n, m in found.items() if id(m.weight) not in trained]
        if frozen:
            raise CptError(f"{where}.targets: {frozen[0]} is frozen by the stage's trainable "
                           f"({', '.join(st.trainable)}); train it, or leave it out of targets")


def check_world(recipe: Recipe, d: Dist) -> None:
    """What several ranks need of the recipe, checked before any work."""
    if d.world == 1:
        return
    guarded = [st.name for st in recipe.stages if st.guard is not None]
    if guarded:
        raise CptError(f"stage {guarded[0]}: guard: a rollback runs in one process for now, not under {d.world} "
                       "ranks; run the guarded stage on one process, or drop its guard")
    for i, st in enumerate(recipe.stages):
        rank_accum(recipe.stage_samples(st), recipe.stage_micro(st), d.world, f"stages[{i}] ({st.name}): batch_tokens")


def claim_out_dir(out: Path, resume: bool, recipe_hash: str, checkpoints: CheckpointManager,
                  recipe_path: Path | None = None) -> RunFolder:
    """Never write over anything that is not this run's. A folder is new or empty, or marked as a
    cpt run (runfolder.py); it is locked for this process. With a checkpoint, only --resume with
    the same recipe goes on; a run without one (failed or killed early) starts over, removing only
    the files it wrote."""
    folder = RunFolder(out)
    if recipe_path is not None:
        folder.check_placement(recipe_path)
    elif out.exists() and not out.is_dir():
        raise CptError(f"--out {out}: is a file; give a folder")
    latest = checkpoints.latest()
    if folder.foreign():
        raise CptError(f"--out {out}: holds files that are not a cpt run ({', '.join(folder.foreign()[:3])}); "
                       "choose a new or empty folder")
    folder.lock()
    recover_dirs(checkpoints.root)  # a checkpoint swapped out by a save that died mid-rename
    checkpoints.clear_unsealed()  # and the writes that never finished
    if not folder.is_run():
        if resume:
            note(f"--resume: nothing to resume in {out}; a new run starts")
        folder.mark(recipe_path or out / "recipe.yaml")
        return folder
    if latest is not None:
        if not resume:
            folder.unlock()
            raise CptError(f"--out {out}: already holds a run; pass --resume to continue it, or choose a new folder")
        theirs = CheckpointManager.read_meta(latest).get("recipe_hash")
        if theirs != recipe_hash:
            folder.unlock()
            raise CptError(f"--resume: the recipe differs from the one this run started with "
                           f"({folder.marker.get('recipe', out / 'recipe.yaml')}); resume with that recipe, or start a new --out")
        return folder
    if resume:
        note(f"--resume: no checkpoint in {out} yet; the run starts over")
    folder.clean()  # no checkpoint: nothing trained yet is kept; shards are a cache
    return folder
