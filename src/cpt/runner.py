"""`cpt run`: validate, build, train, finish."""

from __future__ import annotations

from pathlib import Path

from .build import build_run
from .plan import describe_plan
from .recipe import load_recipe


def run_recipe(recipe_path: Path, out: Path, resume: bool = False) -> Path:
    """Run (or resume) a recipe into `out`; returns the report path."""
    recipe = load_recipe(recipe_path)  # every recipe error surfaces here, before any work
    from .train.finish import finish
    from .train.loop import train

    run = build_run(recipe, Path(recipe_path).read_text(), Path(out), resume)
    print(describe_plan(recipe, run.segments), flush=True)
    train(run)
    finish(run)
    report = Path(out) / "report.md"
    print(f"done: report at {report}")
    return report
