"""The `cpt` command. Thin: parse flags, call the library, turn a `CptError` into one line, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .data import mixlists, tokenize_cli
from .data.lists import TRUST_ENV, add_trust_flag
from .export import cli as export_cli
from . import passkey_cli, plan_cli, schedule_cli, upscale_cli
from .sweep import cli as sweep_cli
from .vocab import cli as vocab_cli
from .errors import CptError, describe_decode_error, describe_os_error

RUN_HELP = """Run a whole multi-stage continual pre-training plan from one recipe.

Tokenizes every source into Megatron .bin/.idx shards (reused while unchanged), carves a fixed
validation slice per source, then trains stage by stage on each stage's exact mixture with its LR
segment, replay buffer and checkpoints. The run folder gets metrics.jsonl, summary.json,
checkpoints/, model/ (Hugging Face export) and report.md with plots."""

DEMO_HELP = """A self-contained demo in under 5 minutes on 2 CPU cores, with no download.

Builds four small corpora (generated English-like stories, the Python standard library's code,
step-by-step arithmetic, algorithm traces), trains a tokenizer, pretrains a tiny Llama from
scratch (stage 1, WSD schedule), then runs the cookbook's transitions from stage 1's pre-cooldown
checkpoint: 5% replay, a D0/D2/buffer mix, and a cooldown with a mix. Prints where the report is."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpt", description="Continual pre-training of language models.")
    p.add_argument("--version", action="version", version=f"cpt {__version__} (cptkit)")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a multi-stage CPT recipe", description=RUN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("recipe", type=Path, help="recipe YAML file (see README: Recipe reference)")
    run.add_argument("--out", type=Path, required=True, help="run folder: new or empty, or a run to continue with --resume")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    run.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="train on N processes of this machine (launches torchrun; one per GPU, or CPU ranks)")
    add_trust_flag(run)
    run.add_argument("--peak-tflops", type=float, default=None, metavar="T",
                     help="the device's dense bf16 peak in TFLOP/s, for MFU (known GPUs are looked up)")
    demo = sub.add_parser("demo", help="a 5-minute self-contained demo on CPU", description=DEMO_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    demo.add_argument("--scale", type=float, default=1.0, help="a share of the demo's data and steps, down to "
                      "0.05 (a 30-second smoke test, as the install check runs it)")
    plan_cli.add_parser(sub)
    schedule_cli.add_parser(sub)
    tokenize_cli.add_parser(sub)
    mixlists.add_parser(sub)
    vocab_cli.add_parser(sub)
    upscale_cli.add_parser(sub)
    passkey_cli.add_parser(sub)
    sweep_cli.add_parsers(sub)
    export_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    before = os.environ.get(TRUST_ENV)
    if getattr(args, "trust_shards", False):  # read where the shards are opened, by every rank and sweep run
        os.environ[TRUST_ENV] = "1"
    try:
        return _command(args)
    finally:  # for this command only (main may be called again in the same process)
        if before is None:
            os.environ.pop(TRUST_ENV, None)


def _command(args) -> int:
    try:
        if args.command == "run" and args.nproc != 1:
            from .distributed.launch import launch

            return launch(args.recipe, args.out, args.resume, args.nproc, args.peak_tflops)
        if args.command == "run":
            from .runner import run_recipe

            if args.peak_tflops is not None and not 0 < args.peak_tflops < 1e6:
                raise CptError(f"--peak-tflops: {args.peak_tflops} is not a positive TFLOP/s figure")
            run_recipe(args.recipe, args.out, resume=args.resume, peak_tflops=args.peak_tflops)
        elif args.command == "demo":
            from .demo.run import run_demo

            if not 0.05 <= args.scale <= 1:  # smaller: stages shorter than one step
                raise CptError(f"--scale: {args.scale}; give a share from 0.05 to 1")
            run_demo(args.out, args.scale)
        else:
            return {"plan": plan_cli, "schedule": schedule_cli, "tokenize": tokenize_cli, "mix": mixlists,
                    "vocab": vocab_cli, "upscale": upscale_cli, "passkey": passkey_cli, "sweep": sweep_cli,
                    "compare": sweep_cli, "export": export_cli}[args.command].run(args)
    except CptError as e:
        print("cpt: error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, always
        return 2
    except OSError as e:  # any command, any depth (fileio, numpy, matplotlib): the path and the fix
        given = [f"--{k} {v}" for k in ("csv", "plot", "json", "output", "out") if (v := getattr(args, k, None))]
        where = given[0] if len(given) == 1 else f"cpt {args.command}" + (f" ({', '.join(given)})" if given else "")
        print("cpt: error: " + " ".join(describe_os_error(e, where).split()), file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:  # a text input read past a reader that does not name its file
        print("cpt: error: " + " ".join(describe_decode_error(e, f"an input of cpt {args.command}").split()),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "continue with --resume" if args.command == "run" else "run the same command again to continue"
        print(f"cpt: interrupted; {hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
