"""`cpt run`: validate, build, train, finish."""

from __future__ import annotations

from pathlib import Path

from .build import build_run
from .plan import SourceSize, format_plan, plan_stages, plan_warnings
from .recipe import load_recipe


def run_recipe(recipe_path: Path, out: Path, resume: bool = False, peak_tflops: float | None = None) -> Path:
    """Run (or resume) a recipe into `out`; returns the report path."""
    recipe = load_recipe(recipe_path)  # every recipe error surfaces here, before any work
    from .train.finish import finish
    from .train.loop import train

    run = build_run(recipe, Path(recipe_path).read_text(encoding="utf-8"), Path(out), resume, recipe_path=Path(recipe_path),
                    peak_tflops=peak_tflops)
    sizes = {n: SourceSize(d.stream.samples_per_epoch, d.stream.epoch_tokens, distinct=d.stream.distinct_tokens)
             for n, d in run.data.sources.items()}
    plans = plan_stages(recipe, run.segments, sizes)
    if run.dist.is_main:
        print(format_plan(recipe, plans, sizes, plan_warnings(recipe, run.segments, plans, sizes, recipe.max_epochs)),
              flush=True)
    train(run)
    finish(run)
    report = Path(out) / "report.md"
    if run.dist.is_main:
        print(f"done: report at {report}")
    return report
