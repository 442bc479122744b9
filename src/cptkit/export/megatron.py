"""`cpt export megatron-deepspeed`: a plan as runs of ALCF's Megatron-DeepSpeed (`train_alcf.sh`).

OUT gets, per run (export/runs.py), a data-file list `lists/NN-stage.txt` and a launch script
`runs/NN-stage.sh`; the replay buffer's versions as Megatron shards (`buffer/vN.bin/.idx`, the
documents `cpt run` puts there, chosen the same way); `common.sh` (paths and the model's shape);
`README.md` (each run, and what Megatron cannot do exactly); and `export.json` (the runs, for
tools and tests). The sources' shards are tokenized into the recipe's `data_dir`, else
OUT/shards, and referenced in place.

Everything that can be refused is checked before anything is written; the files are written into
a staging folder and moved into OUT at the end, so an error leaves OUT as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import __version__
from ..data.mixlists import Entry, format_entries
from ..errors import CptError, unknown_name
from ..fileio import write_json_atomic
from ..recipe import BUFFER, Recipe, budget_tokens, load_recipe
from ..schedules import plan_segments
from .blend import achieved_shares
from .runs import BASE, Run, plan_runs
from .scripts import common_script, launch_script, readme

KIND = "megatron-deepspeed"
WRITTEN = ("README.md", "export.json", "common.sh", "runs", "lists", "buffer")


def export(recipe_path: Path, out: Path, gpus: dict[str, int], force: bool = False) -> list[Run]:
    recipe = load_recipe(recipe_path)
    names = {n for st in recipe.stages for n in (st.name, st.name.split(".")[0])}
    for stage in set(gpus) - names - {"*"}:
        raise CptError(f"--gpus {stage}={gpus[stage]}: {unknown_name('stage', stage, sorted(names))}")
    segments = plan_segments(recipe)
    runs = plan_runs(recipe, gpus, segments)
    for run in runs:
        _split_batch(recipe, run)
    key = {"kind": KIND, "recipe": str(Path(recipe_path).resolve()), "gpus": gpus}
    _check_out(out, key, force)

    from ..data.lists import check_lists
    from ..data.tokenize import tokenizer_fingerprint
    from ..model.load import load_tokenizer

    tokenizer = load_tokenizer(recipe.tokenizer_path)
    check_lists(recipe, tokenizer_fingerprint(tokenizer), len(tokenizer))
    for run in runs:
        run.notes.extend(_unexpressed(recipe, run))
    existed = out.is_dir()
    staging = out / ".export.tmp"
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        _stage(recipe, Path(recipe_path), runs, segments, tokenizer, out, staging, key)
    except BaseException:  # a refusal found while reading the data: OUT as it was (its shard cache aside)
        shutil.rmtree(staging, ignore_errors=True)
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    _move_in(staging, out)
    return runs


def _stage(recipe: Recipe, recipe_path: Path, runs: list[Run], segments, tokenizer, out: Path, staging: Path,
           key: dict) -> None:
    """Every file of the export, written into `staging`."""
    from ..data.prepare import RunData

    shards = recipe.data_dir or out / "shards"
    data = RunData(recipe.model_copy(update={"data_dir": shards}), staging / "cpt", tokenizer)
    versions = _buffer(recipe, data)
    buffer_prefix = {v: str((out / "buffer" / f"v{v}").resolve()) for v in set(versions) if v}
    lists = {}
    for run in runs:
        entries = _entries(recipe, run, data, buffer_prefix.get(versions[run.stage]))
        lists[run.name] = entries
        text = f"# {run.name}: stage {recipe.stages[run.stage].name} of {recipe_path.name}; written by cpt export\n"
        _write(staging / "lists" / f"{run.name}.txt", text + format_entries(entries))
        run.notes.extend(_blend_notes(run, entries))
    by_name = {r.name: r for r in runs}
    for run in runs:
        script = launch_script(recipe, run, by_name.get(run.load), out.resolve())
        _write(staging / "runs" / f"{run.name}.sh", script, executable=True)
    _write(staging / "common.sh", common_script(recipe, out.resolve()), executable=True)
    _write(staging / "README.md", readme(recipe, recipe_path, runs, segments, data, lists))
    if (staging / "cpt" / "buffer").is_dir():
        shutil.move(staging / "cpt" / "buffer", staging / "buffer")
    write_json_atomic(staging / "export.json", key | {"cpt_version": __version__, "runs": [_record(r) for r in runs]})


def _unexpressed(recipe: Recipe, run: Run) -> list[str]:
    """What cpt would do in this run that Megatron's run does not."""
    st, notes = recipe.stages[run.stage], []
    for name, w in (st.mix or {}).items():
        src = recipe.sources.get(name)
        if w > 0 and src is not None and src.upsample_long is not None:
            notes.append(f"`{name}`'s upsample_long (x{src.upsample_long.factor:g} for documents over "
                         f"{src.upsample_long.min_tokens:,} tokens) is not expressed: Megatron reads each document "
                         "at its file's weight")
    if st.guard is not None:
        notes.append("the stage's guard does not run under Megatron (this is the ladder's first rung): watch "
                     f"`{st.guard.source or st.guard.task}` yourself, and fall back by hand")
    return notes


def _check_out(out: Path, key: dict, force: bool) -> None:
    """OUT: new, empty, this export again, or (with --force) another export; nothing else."""
    if out.exists() and not out.is_dir():
        raise CptError(f"--out {out}: is a file; give a folder")
    if not out.is_dir():
        return
    manifest = out / "export.json"
    theirs = None
    if manifest.is_file():
        try:
            theirs = json.loads(manifest.read_text())
        except ValueError:
            theirs = {}
    if theirs is None:
        others = sorted(p.name for p in out.iterdir() if p.name not in ("shards", ".export.tmp"))
        if others:
            raise CptError(f"--out {out}: holds {others[0]} and is not a cpt export; give a new or empty folder")
        return
    same = {k: theirs.get(k) for k in key} == key
    if not same and not force:
        raise CptError(f"--out {out}: holds another export (of {theirs.get('recipe', '?')}); give another folder, "
                       "or --force to replace it")


def _split_batch(recipe: Recipe, run: Run) -> None:
    """MICRO_BATCH x GRAD_ACC_STEPS x GPUs = the run's global batch (no tensor or pipeline split)."""
    st = recipe.stages[run.stage]
    if run.gbs % run.gpus:
        raise CptError(f"--gpus: stage {st.name} trains {run.gbs} samples a step, which {run.gpus} GPUs cannot "
                       "share evenly; give a GPU count that divides it")
    per_gpu = run.gbs // run.gpus
    run.micro = max(m for m in range(1, min(recipe.stage_micro(st), per_gpu) + 1) if per_gpu % m == 0)
    run.accum = per_gpu // run.micro


def _buffer(recipe: Recipe, data) -> list[int]:
    """The buffer version each stage reads, writing each version as `cpt run` does at stage ends."""
    version, versions = 0, []
    for st in recipe.stages:
        versions.append(version)
        add = st.buffer_add
        if add is not None:
            src = data.sources[add.source]
            version = data.buffer.add(version, st.name, add.source, src.stream.shard, src.train_ids,
                                      budget_tokens(add, src.stream.distinct_tokens), recipe.seed,
                                      policy=add.policy, pool=add.pool)
    return versions


def _entries(recipe: Recipe, run: Run, data, buffer: str | None) -> list[Entry]:
    """The stage's mix as a data-file list: each source's share of the samples, split over its
    shards as cpt reads them (a `list:` source by its list's weights); the corpus column is the
    source's name."""
    mix = {k: w for k, w in recipe.stages[run.stage].mix.items() if w > 0}
    total = sum(mix.values())
    entries = []
    for name, w in mix.items():
        tok = None if name == BUFFER else data.sources[name].tokenized
        if tok is None:
            shards = [(buffer, 1.0)]
        elif tok.shards is not None:  # a `list:` source: its shards with the list's weights
            shards = [(str(Path(p.prefix).resolve()), w) for p, w in zip(tok.shards.parts, tok.shards.weights)]
        else:
            shards = [(str(Path(tok.prefix).resolve()), 1.0)]
        tokens = sum(t for _, t in shards)
        entries += [Entry(w / total * t / tokens, prefix, name, 0) for prefix, t in shards]
    return entries


def _blend_notes(run: Run, entries: list[Entry]) -> list[str]:
    """How far Megatron's blend lands from the shares: it gives each file ceil(N w 1.005) samples."""
    shares = achieved_shares(entries, run.gbs * run.train_iters)
    target: dict[str, float] = {}
    for e in entries:
        target[e.corpus] = target.get(e.corpus, 0.0) + e.weight
    total = sum(target.values())
    worst = max(abs(shares[c] - w / total) for c, w in target.items())
    run.blend_error = worst
    return [f"Megatron's blend gives each corpus its share within {worst:.2g} (each file gets "
            "ceil(N x weight x 1.005) samples)"] if worst > 1e-12 else []


def _record(run: Run) -> dict:
    return {"name": run.name, "stage": run.stage, "plan_steps": [run.plan_step + 1, run.plan_step + run.steps],
            "iterations": [run.iter0 + 1, run.train_iters], "samples_before": run.samples0, "global_batch": run.gbs,
            "gpus": run.gpus, "load": run.load, "finetune": run.finetune, "lr": run.lr,
            "lr_deviation": run.deviation, "notes": run.notes}


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(0o755)


def _move_in(staging: Path, out: Path) -> None:
    """Replace the export's files in OUT by the staged ones (the old ones go first)."""
    shutil.rmtree(staging / "cpt", ignore_errors=True)
    for name in WRITTEN:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if (staging / name).exists():
            (staging / name).rename(old)
    shutil.rmtree(staging)


__all__ = ["BASE", "KIND", "export"]
