"""The training loop: for each stage, for each step, batch -> step -> hooks. Nothing else."""

from __future__ import annotations

import time
from functools import partial

from tqdm import tqdm

from ..data.prefetch import Prefetcher
from ..errors import CptError
from .stages import after_step, batch, begin_stage, end_stage, log_save, plan_stage, run_eval, set_context, start_rows
from .step import train_step
from .upscale import restore_depth


def train(run) -> None:
    r, s = run.recipe, run.state
    if not resume(run):
        run_eval(run, plan_stage(run, 0), "base")
    for index in range(s.stage_index, len(r.stages)):
        stage = plan_stage(run, index)
        begin_stage(run, stage)
        batch_tokens = r.stage_batch(stage.cfg)
        # a bar closed on the way out: an error that stops the run gets a line of its own
        with tqdm(total=stage.steps, initial=s.stage_step, desc=f"stage {stage.name}", unit="step",
                  disable=not run.dist.is_main) as bar, \
                Prefetcher(partial(batch, run, stage), stage.steps, pin=run.device.type == "cuda") as batches:
            while s.stage_step < stage.steps:
                t0 = time.perf_counter()
                lr = stage.lr(s.stage_step, batch_tokens)
                tokens = batches.get(s.stage_step)  # read during the previous step
                waited = time.perf_counter() - t0
                run.hooks.on_step_begin(run, stage)
                result = train_step(run.model, run.optimizer, run.local(tokens, r.stage_micro(stage.cfg)), lr,
                                    r.optimizer.grad_clip, run.autocast, run.dist, stage.inputs)
                s.stage_step, s.global_step, s.tokens = s.stage_step + 1, s.global_step + 1, s.tokens + batch_tokens
                seconds = time.perf_counter() - t0
                after_step(run, stage, result, lr, seconds, tokens, waited)
                run.hooks.on_step_end(run, stage, result)
                bar.update()
                bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{batch_tokens / seconds:,.0f}")
        end_stage(run, stage)
    run.checkpoints.wait()  # an asynchronous save still in flight


def resume(run) -> bool:
    """Continue from the newest intact checkpoint in the run folder, if any; True when resumed.
    A checkpoint that fails its checksums is skipped (with a warning) for the one before it."""
    path = run.checkpoints.newest_intact()
    if path is None and run.checkpoints.candidates():
        raise CptError(f"{run.checkpoints.root}: no checkpoint is intact (each is named above); "
                       "restore one from a copy, or start a new --out")
    if path is None:
        run.metrics.truncate(0)  # no checkpoint: any log is from a run that died before its first
        return False
    try:  # counters first, checked: a checkpoint from elsewhere may hold anything
        meta = run.checkpoints.read_meta(path)
        run.state.load_state_dict(meta.get("train_state"))
        run.hooks.load_state_dict(meta.get("hooks") if isinstance(meta.get("hooks"), dict) else {})
    except (ValueError, TypeError, AttributeError) as e:
        raise CptError(f"{path / 'meta.json'}: {e}; resume from another checkpoint or start a new --out") from None
    restore_depth(run)  # the layers the checkpoint's model had, before anything takes their parameters
    set_context(run, min(run.state.stage_index, len(run.recipe.stages) - 1), log=False)  # the export's, after the last
    if run.state.entered:  # saved inside a stage: its trainable rows are part of what was saved
        start_rows(run, run.state.stage_index)
    run.hooks.on_resume(run)  # a hook that changes the model (ReLoRA's adapters) rebuilds it first
    run.checkpoints.load(path, run.model, run.optimizer, verified=True, dist=run.dist)
    run.checkpoints.last_good = path
    run.metrics.truncate(run.state.metrics_bytes)
    log_save(run, path.name, None)
    s, names = run.state, [st.name for st in run.recipe.stages]
    where = names[s.stage_index] if s.stage_index < len(names) else "done"
    tqdm.write(f"resuming from {path} (stage {where}, step {s.global_step}, {s.tokens:,} tokens)")
    return True
