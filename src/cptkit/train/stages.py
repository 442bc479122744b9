"""What happens at a stage's edges: entering (init, mixture, start eval) and ending (eval,
buffer_add, final checkpoint); plus the per-step hooks (log, periodic eval and checkpoints)."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..distributed.fsdp import load_full_state
from ..eval.document_loss import document_losses
from ..data.mixture import StageMixture
from ..data.packing import carry
from ..eval.passkey import passkey_accuracy
from ..eval.tasks import run_task
from ..eval.validation import evaluate_positions, position_edges
from ..model.load import build_model
from ..model.rope import apply_context, context_at
from ..model.trainable import set_trainable, train_rows, trainable_params
from ..plan import SourceSize, seen
from ..recipe import StageCfg, budget_tokens
from ..schedules import Segment, step_lr
from .inputs import plain
from .merge import merge_checkpoints
from .relora import load_plain
from .upscale import upscale_stage
from .step import StepResult, build_optimizer


@dataclass
class Stage:
    index: int
    cfg: StageCfg
    segment: Segment
    steps: int
    mixture: StageMixture
    inputs: object = plain  # a micro-batch's model inputs (train/inputs.py)

    @property
    def name(self) -> str:
        return self.cfg.name

    def lr(self, step: int, step_tokens: int) -> float:
        return step_lr(self.segment, step, step_tokens)


def plan_stage(run, index: int) -> Stage:
    """The stage's schedule segment and its exact sample plan, from the cursors at its start."""
    r, st = run.recipe, run.recipe.stages[index]
    names = [run.data.stream_name(n, run.state.buffer_version) for n in st.mix]
    mixture = StageMixture(names, list(st.mix.values()), r.stage_steps(st), r.stage_samples(st), run.state.cursors)
    inputs = run.documents if st.document_masking else plain
    return Stage(index, st, run.segments[index], r.stage_steps(st), mixture, inputs)


def batch(run, stage: Stage, step: int) -> torch.Tensor:
    """Token ids of step `step`, the global batch (samples, seq_len) in mixture order, on the CPU:
    the same for any number of ranks (`run.local` takes this rank's part)."""
    length = run.recipe.stage_len(stage.cfg)
    rows = [run.data.stream(name, length).sample(s) for name, s in stage.mixture.step(step)]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def run_eval(run, stage: Stage, tag: str) -> dict[str, float]:
    """Per-source validation loss, and by token position (buckets of `position_edges`): over
    windows of the longest seq_len when the plan extends the context (at the base and each
    stage's start and end), else over the same windows."""
    r = run.recipe
    losses, positions = evaluate_positions(run.model, run.validation, r.micro_batch, run.device, run.autocast, run.dist)
    record = {"kind": "eval", "stage": stage.name, "tag": tag, "step": run.state.global_step,
              "tokens": run.state.tokens, "val_loss": losses}
    if run.long_validation is not None and tag != "periodic":
        longest = max(r.stages, key=r.stage_len)  # long windows go through as that stage's samples do
        positions = evaluate_positions(run.model, run.long_validation, r.stage_micro(longest), run.device,
                                       run.autocast, run.dist)[1]
    if run.long_validation is None or tag != "periodic":
        record |= {"position_loss": positions, "position_edges": position_edges(r.max_seq_len)}
    run.metrics.write(record)
    run.last_eval = {"val_loss": losses, "tasks": {}}  # what hooks check at a stage's end (train/forgetting.py)
    if run.tasks and (tag != "periodic" or r.eval.tasks == "every"):
        scores = {name: run_task(run.model, run.tokenizer, cfg, items, r.max_seq_len, r.micro_batch, run.device,
                                 run.autocast, run.dist) for name, (cfg, items) in run.tasks.items()}
        run.last_eval["tasks"] = scores
        run.metrics.write({"kind": "tasks", "stage": stage.name, "tag": tag, "step": run.state.global_step,
                           "tokens": run.state.tokens, "scores": scores})
    passkey = run.recipe.eval.passkey
    if passkey is not None and tag != "periodic":
        acc = passkey_accuracy(run.model, run.tokenizer, passkey, run.device, run.autocast)
        run.metrics.write({"kind": "passkey", "stage": stage.name, "tag": tag, "step": run.state.global_step,
                           "tokens": run.state.tokens, "accuracy": acc})
    return losses


def save_checkpoint(run, stage: Stage, name: str, lr: float, stage_tokens: int) -> None:
    """Counters, LR and schedule phase go beside the tensors; the metrics length makes resume exact."""
    s = run.state
    s.metrics_bytes = run.metrics.size()
    s.checkpoints_saved += 1
    t = stage_tokens
    cursors = stage.mixture.cursors_after(s.stage_step) if s.stage_index == stage.index else s.cursors
    meta = {"seq": s.checkpoints_saved, "stage": stage.name, "stage_tokens": t, "tokens": s.tokens,
            "global_step": s.global_step, "lr": lr, "phase": stage.segment.phase(t),
            "batch_tokens": run.recipe.stage_batch(stage.cfg),
            "data_seen": data_seen(run, cursors), "recipe_hash": run.recipe_hash, "tokenizer": run.tokenizer_fingerprint,
            "train_state": s.state_dict(),
            "hooks": run.hooks.state_dict()}
    t0 = time.perf_counter()
    run.checkpoints.save(name, run.model, run.optimizer, meta)
    log_save(run, name, time.perf_counter() - t0)


def log_save(run, name: str, blocked: float | None) -> None:
    """What the save cost training: the whole write, or (async) the copy to CPU memory. The log
    is cut back to before this record on a resume from this checkpoint, which then writes it
    again with the time unknown (None)."""
    run.metrics.write({"kind": "checkpoint", "name": name, "step": run.state.global_step, "tokens": run.state.tokens,
                       "async": run.checkpoints.asynchronous, "blocked_s": blocked})


def cursor_len(run) -> int:
    """The sample length the run's cursors count in: the current stage's (end_stage carries them
    to the next stage's; after the last, the last's)."""
    stages = run.recipe.stages
    return run.recipe.stage_len(stages[min(run.state.stage_index, len(stages) - 1)])


def data_seen(run, cursors: dict[str, int]) -> dict[str, dict]:
    """Per stream, what training has read so far: samples, tokens, unique and repeated tokens,
    epochs. A buffer version is its own stream (`buffer@v2`). Samples count at `cursor_len`."""
    out, length = {}, cursor_len(run)
    for name, n in sorted(cursors.items()):
        stream = run.data.stream(name, length)
        size = SourceSize(stream.samples_per_epoch, stream.epoch_tokens, distinct=stream.distinct_tokens)
        unique, repeated = seen(n, size, length)
        out[name] = {"samples": n, "tokens": unique + repeated, "unique_tokens": unique,
                     "repeated_tokens": repeated, "epochs": n / stream.samples_per_epoch}
    return out


def begin_stage(run, stage: Stage) -> None:
    """Freeze what the stage does not train (again after a resume), then enter it once."""
    set_trainable(run.model, stage.cfg.trainable, f"stages[{stage.index}].trainable")
    set_context(run, stage.index)
    if not run.state.entered:
        enter_stage(run, stage)
    start_rows(run, stage.index)
    run.hooks.on_stage_begin(run, stage)


def set_context(run, index: int, log: bool = True) -> None:
    """The RoPE parameters and positions stage `index` trains with (model/rope.py), before its
    start eval: that eval measures the change itself. Recomputed on a resume (they are not saved);
    recorded when a stage with `rope:` is entered, so a resumed run's log reads as an unbroken one."""
    params, positions = run.context
    if params is None:  # no rotary embeddings (the recipe refused any `rope:`)
        return
    params, positions = context_at(params, positions, run.recipe.stages, index)
    st = run.recipe.stages[index]
    apply_context(run.model, params, positions)
    if log and st.rope is not None and not run.state.entered:
        run.metrics.write({"kind": "context", "stage": st.name, "seq_len": run.recipe.stage_len(st),
                           "max_position_embeddings": positions, "rope_parameters": params})


def start_rows(run, index: int) -> None:
    """Row-level training (`new_input_rows`, ...) for the stage; kept when already running, as after
    a resume, which starts it before loading the checkpoint that holds the rows and their moments."""
    if not run.rows:
        run.rows = train_rows(run.model, run.optimizer, run.recipe.stages[index].trainable, run.new_ids,
                              f"stages[{index}].trainable")


def stop_rows(run) -> None:
    for rows in run.rows:
        rows.release()
    run.rows = []


def enter_stage(run, stage: Stage) -> None:
    """Load the stage's starting weights (`init:`), then measure where it starts."""
    init = stage.cfg.init
    if stage.cfg.kind == "merge":  # the average of its checkpoints, with fresh moments
        merge_checkpoints(run, stage)
    elif init == "base":  # "start from these weights": the base model, a fresh optimizer
        load_full_state(run.model, build_model(run.recipe, run.tokenizer).state_dict(), run.dist)
        run.optimizer = build_optimizer(run.model, run.recipe.optimizer)
    elif init != "previous":
        path = run.checkpoints.path(init) if stage.cfg.init_ref else stage.cfg.init_path
        run.checkpoints.wait()  # it may be the save still being written
        load_plain(run, path)  # also one written inside a ReLoRA cycle
    if stage.cfg.upscale is not None:  # SOLAR: the starting point's layers, stacked deeper; fresh moments
        upscale_stage(run, stage.index)
    policy = stage.cfg.optimizer_state
    if policy == "reset":  # fresh AdamW moments and step count
        run.optimizer = build_optimizer(run.model, run.recipe.optimizer)
    elif policy == "reset-new":  # fresh moments for what the starting point kept frozen
        before = trainable_params(run.model, run.recipe.start_trainable(stage.index))
        for p in run.model.parameters():
            if p.requires_grad and id(p) not in before:
                run.optimizer.state.pop(p, None)
    start_rows(run, stage.index)  # fresh moments: rows train as their own parameter, for this stage only
    run.state.entered = True
    run_eval(run, stage, "start")
    if stage.segment.decay_start == 0:  # a stage that decays from its first step
        save_checkpoint(run, stage, f"{stage.name}@pre-cooldown", stage.segment.lr(0), 0)


def after_step(run, stage: Stage, result: StepResult, lr: float, seconds: float, tokens: torch.Tensor,
               waited: float = 0.0) -> None:
    r, s, batch_tokens = run.recipe, run.state, run.recipe.stage_batch(stage.cfg)
    # a fingerprint of the batch: two runs saw the same samples in the same order iff these agree
    crc = zlib.crc32(tokens.cpu().numpy().tobytes())
    run.metrics.write({"kind": "train", "stage": stage.name, "step": s.global_step, "tokens": s.tokens,
                       "batch_crc32": crc, "lr": lr, "loss": result.loss, "grad_norm": result.grad_norm,
                       "tokens_per_s": batch_tokens / max(seconds, 1e-9), **({"skipped": True} if result.skipped else {}),
                       "perf": run.throughput.record(batch_tokens, seconds, waited, run.device)})  # wall clock
    last = s.stage_step == stage.steps
    if r.eval.every_tokens and crossed(s.tokens, batch_tokens, r.eval.every_tokens) and not last:
        run_eval(run, stage, "periodic")
    t = s.stage_step * batch_tokens
    at = stage.segment.base_lr(t)  # the schedule's LR, which a stage starting here inherits (no ReLoRA jag)
    if t == stage.segment.decay_start:
        save_checkpoint(run, stage, f"{stage.name}@pre-cooldown", at, t)
    elif r.checkpoint.every_tokens and crossed(s.tokens, batch_tokens, r.checkpoint.every_tokens) and not last:
        save_checkpoint(run, stage, f"step-{s.global_step:07d}", at, t)


def end_stage(run, stage: Stage) -> None:
    """End-of-stage eval, then the buffer addition (data joins B only now), then `@final`."""
    run_eval(run, stage, "end")
    run.hooks.on_stage_end(run, stage)  # ReLoRA's last merge: what follows sees the plain model
    s = run.state
    s.cursors = stage.mixture.cursors_after()
    run.metrics.write({"kind": "data", "stage": stage.name, "tokens": s.tokens, "data_seen": data_seen(run, s.cursors)})
    add = stage.cfg.buffer_add
    if add is not None:
        src, r = run.data.sources[add.source], run.recipe
        score = partial(document_losses, run.model, seq_len=r.stage_len(stage.cfg), device=run.device,
                        batch_size=r.stage_micro(stage.cfg), autocast=run.autocast)
        s.buffer_version = run.data.buffer.add(s.buffer_version, stage.name, add.source, src.stream.shard,
                                               src.train_ids, budget_tokens(add, src.stream.distinct_tokens), r.seed,
                                               policy=add.policy, pool=add.pool, score=score, write=run.dist.is_main)
        run.dist.barrier()  # the new version is on disk before any rank reads it
    s.stage_index, s.stage_step, s.entered = stage.index + 1, 0, False
    s.cursors = carry_cursors(run, s.cursors, run.recipe.stage_len(stage.cfg), cursor_len(run))
    stop_rows(run)  # the rows go back into their matrix: `@final` holds the plain model
    save_checkpoint(run, stage, f"{stage.name}@final", stage.segment.end_lr, stage.segment.total)


def carry_cursors(run, cursors: dict[str, int], from_len: int, to_len: int) -> dict[str, int]:
    """Every stream's cursor in samples of the next stage's length (tokens are the unit)."""
    return {name: carry(n, run.data.stream(name, from_len).epoch_tokens, from_len, to_len) for name, n in cursors.items()}


def crossed(tokens: int, step_tokens: int, every: int) -> bool:
    """Did the last step carry the cumulative token count across a multiple of `every`?"""
    return tokens // every > (tokens - step_tokens) // every
