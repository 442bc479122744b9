"""The text of an export: `common.sh`, each run's launch script, and the README.

The variables are the ones ALCF's `helpers.sh` really reads (`LR_WARMUP_FRAC`, not the
cookbook's `LR_WARMUP_FRACTION`; `GLOBAL_BATCH` wins over its own product; a set `TRAIN_TOKENS`
would win over `TRAIN_ITERS`, so it is unset). Extra arguments to `train_alcf.sh` land after
its LR flags and before its batch, path and interval flags, so only LR flags are passed that way."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..recipe import Recipe
from .runs import BASE, Run

DEEPSPEED_CONVERTER = "$DEEPSPEED_DIR/deepspeed/checkpoint/ds_to_universal.py"


def common_script(recipe: Recipe, out: Path) -> str:
    cfg, o = _model_config(recipe), recipe.optimizer
    shape = [("NLAYERS", "num_hidden_layers"), ("HIDDEN", "hidden_size"), ("HEADS", "num_attention_heads"),
             ("NUM_KV_HEAD", "num_key_value_heads"), ("FFN_HIDDEN_SIZE", "intermediate_size")]
    lines = [
        "#!/bin/bash",
        f"# Sourced by every script in {out}/runs (cpt export megatron-deepspeed, cpt {__version__}).",
        "# Set these before running (or export them in your job script):",
        ': "${MEGATRON_DEEPSPEED:?set MEGATRON_DEEPSPEED to your argonne-lcf/Megatron-DeepSpeed checkout}"',
        ': "${CKPT_ROOT:?set CKPT_ROOT to the folder where each run saves its checkpoints}"',
        ': "${BASE_CHECKPOINT:?set BASE_CHECKPOINT to the base model converted to a Megatron-DeepSpeed checkpoint}"'
        if recipe.model.path is not None else "# (the first run trains a new model: there is no base checkpoint)",
        "export DEEPSPEED_DIR=\"${DEEPSPEED_DIR:-$MEGATRON_DEEPSPEED/deps/DeepSpeed}\"  # for ds_to_universal.py",
        "# The base model's shape and tokenizer (helpers.sh's MODEL_ARCH presets may hard-code another shape):",
        f"export SEQ={recipe.seq_len} " + " ".join(f"{k}={cfg[v]}" for k, v in shape if v in cfg),
        f"export TOKENIZER_TYPE=HFTokenizer TOKENIZER_MODEL={recipe.tokenizer_path.resolve()}",
        "# The recipe's AdamW, for helpers.sh versions that read them (others hard-code 0.1, 0.9, 0.95, 1e-5, 1.0):",
        f"export WEIGHT_DECAY={o.weight_decay!r} ADAM_BETA1={o.betas[0]!r} ADAM_BETA2={o.betas[1]!r} ADAM_EPS={o.eps!r}"
        + (f" CLIP_GRAD={o.grad_clip!r}" if o.grad_clip is not None else ""),
        "",
    ]
    return "\n".join(lines)


def launch_script(recipe: Recipe, run: Run, loaded: Run | None, out: Path) -> str:
    st = recipe.stages[run.stage]
    a = run.lr
    scratch = run.load == BASE and recipe.model.path is None  # model.init: Megatron builds it, nothing to load
    load = f"$CKPT_ROOT/{run.name}" if scratch else "$BASE_CHECKPOINT" if run.load == BASE else f"$CKPT_ROOT/{run.load}"
    head = [
        "#!/bin/bash",
        f"# {run.name}: stage {st.name}, written by cpt export megatron-deepspeed (cpt {__version__})",
        f"# plan steps {run.plan_step + 1}-{run.plan_step + run.steps} (the rows of `cpt schedule --csv`) = "
        f"Megatron iterations {run.iter0 + 1}-{run.train_iters}",
        f"# starts from: {_start_words(recipe, run, loaded)}",
        "set -euo pipefail",
        f'source "{out}/common.sh"',
        f'export DATA_FILE_LIST="{out}/lists/{run.name}.txt"',
        f'export LOAD="{load}" SAVE="$CKPT_ROOT/{run.name}"',
        "unset TRAIN_TOKENS  # helpers.sh would derive TRAIN_ITERS from it",
        f"export TRAIN_ITERS={run.train_iters} LR_DECAY_ITERS={a['lr_decay_iters']}",
        f"export GLOBAL_BATCH={run.gbs} MICRO_BATCH={run.micro} GRAD_ACC_STEPS={run.accum}"
        f"  # on {run.gpus} GPU(s): {run.micro} x {run.accum} x {run.gpus} samples of {recipe.stage_len(st)} tokens",
        f"export LR={a['lr']!r} LR_DECAY_STYLE={a['lr_decay_style']} LR_WARMUP_FRAC={a['lr_warmup_fraction']!r}",
    ]
    flags = []
    if "min_lr" in a:
        flags.append(f"--min-lr {a['min_lr']!r}")
    if a.get("lr_constant_plus_cooldown"):
        flags += ["--lr_constant_plus_cooldown", f"--lr_constant_plus_cooldown_frac {a['lr_constant_plus_cooldown_frac']!r}"]
    if "constant_lr" in a:
        flags += [f"--constant-lr {a['constant_lr']!r}", f"--lr-cooldown-fraction {a['lr_cooldown_fraction']!r}",
                  f"--lr-constant-fraction {a['lr_constant_fraction']!r}", f"--timescale {a['timescale']!r}"]
    if run.overrides(loaded):
        head.append("export OVERRIDE_CKPT_OPT_PARAM=1  # drops --use-checkpoint-opt_param-scheduler: this run sets its LR")
        flags.append("--override-opt_param-scheduler")
    # a run spans many jobs: a later job continues from the run's own last save, as a plain resume
    first = (["--finetune"] if run.finetune and not scratch else []) + (["--universal-checkpoint"] if run.universal(loaded) else [])
    if first:
        head.append(f"FIRST=({' '.join(first)})  # on the run's first start only")
    if run.universal(loaded):
        step = f"$LOAD/global_step{loaded.train_iters}"
        head += [f"# {loaded.name} saved on {loaded.gpus} GPU(s), this run trains on {run.gpus}: load a universal checkpoint",
                 f'if [ ! -f "$SAVE/latest" ] && [ ! -d "{step}_universal" ]; then python3 "{DEEPSPEED_CONVERTER}" '
                 f'--input_folder "{step}" --output_folder "{step}_universal"; fi']
    head.append('if [ -f "$SAVE/latest" ]; then LOAD="$SAVE"' + (" FIRST=()" if first else "")
                + "; fi  # a later job of this run: continue from its own last save")
    if first:
        flags.append('"${FIRST[@]}"')
    head += ['cd "$MEGATRON_DEEPSPEED"', "bash train_alcf.sh" + "".join(f" \\\n  {f}" for f in flags), ""]
    return "\n".join(head)


def _start_words(recipe: Recipe, run: Run, loaded: Run | None) -> str:
    st = recipe.stages[run.stage]
    if loaded is None and recipe.model.path is None:
        return "a new model (model.init), trained from scratch"
    if loaded is None:
        what = "the base model ($BASE_CHECKPOINT)"
    else:
        what = f"{loaded.name}'s last save (iteration {loaded.train_iters})"
        if run.first == 0 and st.init_ref is not None:
            what += f" = {st.init}"
        elif run.first:
            what += f" = {st.name}@pre-cooldown"
    how = ("weights only (--finetune: iteration 0, a fresh optimizer, data from sample 0)" if run.finetune else
           "a plain resume (iteration, consumed samples, optimizer)")
    return f"{what}; {how}"


def readme(recipe: Recipe, recipe_path: Path, runs: list[Run], segments, data, lists: dict) -> str:
    by_name = {r.name: r for r in runs}
    rows = []
    for r in runs:
        st, loaded = recipe.stages[r.stage], by_name.get(r.load)
        how = "finetune" if r.finetune else ("resume, override" if r.overrides(loaded) else "resume")
        if r.universal(loaded):
            how += ", universal"
        mix = ", ".join(f"{e.corpus} {e.weight:.4g}" for e in lists[r.name])
        rows.append(f"| `{r.name}` | {st.name} | {r.plan_step + 1}-{r.plan_step + r.steps} | {r.iter0 + 1}-{r.train_iters} "
                    f"| {r.load} | {how} | `{r.lr['lr_decay_style']}` | {mix} |")
    held = ", ".join(f"{n} {len(s.val_ids):,} documents" for n, s in data.sources.items())
    parts = [
        f"# Megatron-DeepSpeed runs of `{recipe_path.name}`",
        "",
        f"Written by `cpt export megatron-deepspeed` (cpt {__version__}) for ALCF's `train_alcf.sh`. "
        "Run the scripts in `runs/` in order, with `MEGATRON_DEEPSPEED`, `CKPT_ROOT` and `BASE_CHECKPOINT` set "
        "(`common.sh` says what each is). Each run saves into `$CKPT_ROOT/<run>` and loads the folder of the run "
        "it starts from, whose `latest` is that run's last save.",
        "",
        "| run | stage | plan steps | iterations | loads | how | LR style | data (share) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Each run",
        "",
    ]
    for r, seg in zip(runs, [segments[r.stage] for r in runs]):
        st = recipe.stages[r.stage]
        parts.append(f"### `{r.name}`")
        parts.append("")
        parts.append(f"- Stage `{st.name}` ({seg.kind}): {seg.describe()}.")
        if st.strategy is not None and st.strategy.name == "strategy4":
            parts.append("- Strategy 4: `<stage>.base` decays on the old data alone; the new mix starts at the first "
                         "step whose LR is at or below LR_max / 5, which is where its two runs meet (Megatron cannot "
                         "change the data within a run).")
        parts.append(f"- Starts from {_start_words(recipe, r, by_name.get(r.load))}.")
        parts.append("- Megatron's LR matches the plan's at every iteration." if r.deviation <= 1e-6 else
                     f"- Megatron's LR is within {r.deviation:.2%} of the plan's.")
        parts += [f"- {n}." for n in r.notes]
        parts.append("")
    parts += [
        "## What Megatron does differently, everywhere",
        "",
        "- **The step's LR.** Megatron steps its scheduler after the optimizer: iteration k runs at the LR it logged "
        "at iteration k-1 (the first warmup iteration at 0), and logs the LR of the samples consumed. cpt runs each "
        "step at that logged LR. The curves above compare the logged LRs.",
        f"- **Validation.** cpt holds out a fixed slice of every source ({held}); the shards hold them too, so "
        "Megatron trains on them, and carves its own validation split (`--split 990,10,0`) from each file.",
        "- **Data order.** Megatron interleaves the corpora deterministically and shuffles each file's samples; a "
        "resumed run rebuilds the blend from its new list and reads it from the samples already consumed. cpt "
        "continues each source where the previous stage stopped, so Megatron may repeat or skip documents that "
        "cpt would not. The shares of the data are the same.",
        "- **Versions of the fork.** `--lr_constant_plus_cooldown` is in the fork's current code (with its "
        "cooldown tools); older checkouts lack it. Its frac is the *cooldown's* share of the decay iterations "
        "(the cooldown starts at LR_DECAY_ITERS x (1 - frac)), not the constant phase's as the cooldown "
        "generator's README says. Some versions of the infinite schedules (`infinite-cosine`) compare the style "
        "with underscores and fail; check the LR Megatron prints in the first iterations of each run.",
        "- **Parallelism.** The batch is split over data-parallel GPUs only (no tensor or pipeline parallelism).",
        *_optimizer_note(recipe),
        "",
    ]
    return "\n".join(parts)


def _model_config(recipe: Recipe) -> dict:
    if recipe.model.path is None:
        return dict(recipe.model.init or {})
    try:
        return json.loads((Path(recipe.model.path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _optimizer_note(recipe: Recipe) -> list[str]:
    """helpers.sh fixes AdamW's settings after the extra arguments: a recipe's others need an edit there."""
    o = recipe.optimizer
    ours = (o.weight_decay, tuple(o.betas), o.eps, o.grad_clip)
    if ours == (0.1, (0.9, 0.95), 1e-5, 1.0):
        return []
    return [f"- **The optimizer.** The recipe's AdamW (weight decay {o.weight_decay:g}, betas ({o.betas[0]:g}, "
            f"{o.betas[1]:g}), eps {o.eps:g}, clipping {o.grad_clip}) is exported in `common.sh` as WEIGHT_DECAY, "
            "ADAM_BETA1/2, ADAM_EPS and CLIP_GRAD; some versions of helpers.sh hard-code weight decay 0.1, betas "
            "(0.9, 0.95), eps 1e-5 and clipping 1.0 after any extra argument: check yours, and edit it there."]
