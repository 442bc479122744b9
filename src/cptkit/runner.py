"""`cpt run`: validate, build, train, finish; a guarded stage that fails rolls back and runs its
next strategy (train/attempts.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .build import build_run, recipe_fingerprint
from .config import RecipeLoader
from .errors import CptError
from .plan import SourceSize, format_plan, plan_stages, plan_warnings
from .recipe import load_recipe


def run_recipe(recipe_path: Path, out: Path, resume: bool = False, peak_tflops: float | None = None) -> Path:
    """Run (or resume) a recipe into `out`; returns the report path."""
    from .train.attempts import current, finish_pending, forget, read_attempts, rollback
    from .train.finish import finish
    from .train.forgetting import GuardFailed
    from .train.loop import train

    recipe = load_recipe(recipe_path)  # every recipe error surfaces here, before any work (every rung too)
    fingerprint = recipe_fingerprint(recipe)  # the recipe as written, whichever attempt runs
    text = Path(recipe_path).read_text(encoding="utf-8")
    data = yaml.load(text, Loader=RecipeLoader)
    while True:
        attempts = {}
        if resume:  # a rollback cut short is finished first; then each guarded stage's attempt
            finish_pending(Path(out), data, fingerprint)
            attempts = current(read_attempts(Path(out), fingerprint))
        if attempts:
            if Path(recipe_path).read_text(encoding="utf-8") != text:
                raise CptError(f"{recipe_path}: changed while the run was going; put it back, or start a new --out")
            recipe = load_recipe(recipe_path, attempts)
        run = build_run(recipe, text, Path(out), resume, recipe_path=Path(recipe_path), peak_tflops=peak_tflops,
                        fingerprint=fingerprint)
        if not resume and run.dist.is_main:
            forget(out)  # a run started over starts every stage at its first attempt
        _print_plan(run)
        try:
            train(run)
            break
        except GuardFailed as failed:
            rollback(run, failed, data)  # one process (build refuses a guard under torchrun)
            run.close()  # the retry builds everything again: the old model, moments and threads go first
            run, resume = None, True
    finish(run)
    report = Path(out) / "report.md"
    if run.dist.is_main:
        print(f"done: report at {report}")
    return report


def _print_plan(run) -> None:
    sizes = {n: SourceSize(d.stream.samples_per_epoch, d.stream.epoch_tokens, distinct=d.stream.distinct_tokens)
             for n, d in run.data.sources.items()}
    plans = plan_stages(run.recipe, run.segments, sizes)
    if run.dist.is_main:
        print(format_plan(run.recipe, plans, sizes, plan_warnings(run.recipe, run.segments, plans, sizes,
                                                                  run.recipe.max_epochs)), flush=True)
