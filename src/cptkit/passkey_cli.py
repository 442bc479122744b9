"""`cpt passkey`: passkey-retrieval accuracy of a model folder by length and depth (eval/passkey.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import CptError

HELP = """Hide a random number at a chosen depth of filler text and ask for it back (greedy
decoding); print the share of trials answered right, by prompt length (tokens) and depth (0: the
start of the filler, 1: its end). The prompts are generated here, seeded: the same on any machine."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("passkey", help="passkey-retrieval accuracy by length and depth", description=HELP)
    p.add_argument("--model", type=Path, required=True, help="Hugging Face model folder (with its tokenizer)")
    p.add_argument("--lengths", default="256,512,1024", help="prompt lengths in tokens (default 256,512,1024)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1]")
    p.add_argument("--trials", type=int, default=5, help="prompts per cell (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the table as JSON here")
    return p


def _numbers(text: str, flag: str, kind):
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CptError(f"{flag}: {text!r}; give a comma-separated list of numbers") from None


def run(args) -> int:
    import torch
    from pydantic import ValidationError

    from .eval.passkey import PasskeyCfg, format_table, passkey_accuracy
    from .model.load import load_tokenizer, quiet_transformers

    try:
        cfg = PasskeyCfg(lengths=_numbers(args.lengths, "--lengths", int), depths=_numbers(args.depths, "--depths", float),
                         trials=args.trials, seed=args.seed)
    except ValidationError as e:
        err = e.errors()[0]
        raise CptError(f"--{err['loc'][0]}: {err['msg']} (got {err.get('input')!r})") from None
    if not (args.model / "config.json").is_file():
        raise CptError(f"--model {args.model}: no config.json; give a Hugging Face model folder")
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    tokenizer = load_tokenizer(args.model, "--model")
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32)
    acc = passkey_accuracy(model, tokenizer, cfg, torch.device("cpu"))
    print(format_table(acc))
    if args.json:
        args.json.write_text(json.dumps(acc, indent=1) + "\n")
    return 0
