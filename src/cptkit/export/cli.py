"""`cpt export megatron-deepspeed RECIPE --out DIR`: the plan as runs of another trainer."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.lists import add_trust_flag
from ..errors import CptError

HELP = """Write a recipe's plan as runs of ALCF's Megatron-DeepSpeed (train_alcf.sh): per run a
blendcorpus data-file list whose weights reproduce the stage's token shares, and a launch script
whose variables and flags reproduce its LR (LR_WARMUP_FRAC, --min-lr, --finetune only where the
plan re-warms from weights, OVERRIDE_CKPT_OPT_PARAM=1 with --override-opt_param-scheduler where a
resumed run changes its LR, LOAD at the checkpoint the plan starts from, --universal-checkpoint
and the conversion where the GPU count changes). A stage whose final decay follows a plateau is
two runs, split at its pre-cooldown point; a Strategy 4 stage is two runs, split at its switch.
The replay buffer is written as Megatron shards, the sources' shards are tokenized into the
recipe's data_dir (else OUT/shards), and OUT/README.md lists what Megatron cannot do exactly."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="write the plan as Megatron-DeepSpeed runs", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["megatron-deepspeed"], help="the trainer to write runs for")
    p.add_argument("recipe", type=Path, help="recipe YAML file")
    p.add_argument("--out", type=Path, required=True, help="folder for the export (new, empty, or an export of it)")
    p.add_argument("--gpus", action="append", default=[], metavar="[STAGE=]N",
                   help="GPUs each run trains on (default 1); STAGE=N for one stage; repeat as needed")
    add_trust_flag(p)
    p.add_argument("--force", action="store_true", help="replace another export in --out")
    return p


def parse_gpus(values: list[str]) -> dict[str, int]:
    gpus = {"*": 1}
    for v in values:
        stage, _, n = v.rpartition("=")
        try:
            count = int(n)
        except ValueError:
            count = 0
        if count < 1:
            raise CptError(f"--gpus {v}: give a GPU count (N or STAGE=N, N >= 1)")
        gpus[stage or "*"] = count
    return gpus


def run(args) -> int:
    from .megatron import export
    from ..recipe import load_recipe
    from .runs import BASE

    gpus = parse_gpus(args.gpus)
    runs = export(args.recipe, args.out, gpus, args.force)
    for r in runs:
        start = ("from a new model" if load_recipe(args.recipe).model.path is None else "from the base model's weights") \
            if r.load == BASE else (f"from {r.load}'s weights" if r.finetune else f"resumes {r.load}")
        print(f"{r.name}: iterations {r.iter0 + 1}-{r.train_iters}, {start}, LR {r.lr['lr_decay_style']}"
              + (f"; {len(r.notes)} note(s) in the README" if r.notes else ""))
        if r.deviation > 0.01:  # past what the export promises: say so here, not only in the README
            print(f"warning: {r.name}: Megatron's LR is up to {r.deviation:.1%} off the plan's (see the README)")
    print(f"wrote {len(runs)} runs to {args.out} (see {args.out / 'README.md'})")
    return 0
