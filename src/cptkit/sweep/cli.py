"""`cpt sweep` and `cpt compare`: thin wrappers over sweep/run.py and sweep/compare.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CptError

SWEEP_HELP = """Proxy runs over recipe keys: one normal, resumable run per combination of the grids'
values, then a comparison (forgetting per old source, adaptation, downstream scores, tokens/s) with
a forgetting-vs-adaptation scatter and its Pareto front. KEY is a dotted path into the recipe,
a stage addressed by its name: stages.wiki.strategy.alpha0=0,0.05,0.25  stages.wiki.schedule.lr=1e-3,3e-3.
Running the same command again skips finished runs and resumes the others."""

COMPARE_HELP = """The comparison `cpt sweep` writes, for any finished runs: forgetting per old source,
adaptation per new source, downstream scores, tokens/s, and the Pareto front of forgetting against
adaptation (comparison.md, comparison.json, plots/pareto.png in --out)."""


def add_parsers(subparsers) -> None:
    s = subparsers.add_parser("sweep", help="runs over a grid of recipe values, compared",
                              description=SWEEP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("recipe", type=Path)
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a recipe key and its values (repeat for more keys: every combination runs)")
    s.add_argument("--out", type=Path, required=True, help="the sweep folder (new, or this sweep's to finish)")
    s.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs at a time, each in its own process (on its own GPU when there are N)")
    c = subparsers.add_parser("compare", help="compare finished runs (forgetting, adaptation, Pareto front)",
                              description=COMPARE_HELP)
    c.add_argument("runs", type=Path, nargs="+", help="run folders (each with summary.json)")
    c.add_argument("--out", type=Path, required=True, help="where comparison.md and plots/ go")


def run(args) -> int:
    if args.command == "sweep":
        from .run import sweep

        if not 1 <= args.parallel <= 1024:
            raise CptError(f"--parallel: {args.parallel}; give the number of runs at a time (1 or more)")
        sweep(args.recipe, args.grid, args.out, args.parallel)
        return 0
    from .compare import run_row, write_comparison

    names = [p.name for p in args.runs]
    labels = [str(p) if names.count(p.name) > 1 else p.name for p in args.runs]  # folders named alike: full path
    rows = [run_row(p, label) for p, label in zip(args.runs, labels)]
    print(f"comparison at {write_comparison(rows, args.out, 'Comparison of ' + ', '.join(labels))}")
    return 0
