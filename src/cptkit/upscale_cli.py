"""`cpt upscale`: depth up-scaling (SOLAR) of a Hugging Face model folder (model/upscale.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """Make a deeper model from a model's own decoder layers (SOLAR depth up-scaling, Kim et al.
2024): --drop M keeps layers 0..n-M-1 of one copy and M..n-1 of another and stacks them (2(n-M)
layers; SOLAR: n=32, M=8, 48 layers); --layers takes any list of source layers, numbers and
inclusive ranges (0-23,8-31 is SOLAR's). Each layer is a deep copy with its attention's layer index
renumbered; num_hidden_layers is updated; embeddings, final norm, head and tokenizer are the base's.
The output loads with AutoModelForCausalLM. Its loss right after is higher than the base's: train
it (continued pre-training) before use."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("upscale", help="depth up-scaling (SOLAR) of a model folder", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    p.add_argument("--out", type=Path, required=True, help="new folder for the up-scaled model")
    p.add_argument("--drop", type=int, metavar="M", help="SOLAR: layers dropped at the seam")
    p.add_argument("--layers", metavar="LIST", help="source layers, e.g. 0-23,8-31 (inclusive ranges)")
    return p


def run(args) -> int:
    from .model.upscale import parse_layers, upscale

    layers = parse_layers(args.layers) if args.layers is not None else None
    done = upscale(args.model, args.out, drop=args.drop, layers=layers)
    print(f"wrote {args.out}: {done['layers_before']} -> {done['layers_after']} layers "
          f"(source layers {_ranges(done['source_layers'])}), {done['parameters_before']:,} -> "
          f"{done['parameters_after']:,} parameters")
    return 0


def _ranges(layers: list[int]) -> str:
    parts, start = [], 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or layers[i] != layers[i - 1] + 1:
            a, b = layers[start], layers[i - 1]
            parts.append(f"{a}" if a == b else f"{a}-{b}")
            start = i
    return ",".join(parts)
