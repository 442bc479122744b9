"""`cpt plan RECIPE`: the dry run. Loads the tokenizer, never the model; sources already tokenized
(a `prefix:`, the recipe's `data_dir`, or the shards of `--out`) are counted exactly, the others
estimated from their first megabyte."""

from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path

import numpy as np

from .data.packing import PackedStream
from .data.lists import add_trust_flag, open_list
from .data.shards import Shard
from .data.sources import file_documents
from .data.tokenize import (_existing_shard, carve_validation, complete_meta, content_key, input_record,
                            tokenizer_fingerprint)
from .errors import CptError
from .plan import SourceSize, format_plan, plan_stages, plan_warnings
from .recipe import Recipe, SourceCfg, load_recipe
from .schedules import plan_segments

HELP = """Print what a recipe will run, without training or loading the model: per stage its steps,
tokens and LR at start and end; per source its tokens, unique and repeated tokens and epochs
(from the exact mixture and the per-source cursors training uses). Warns when a source would be
read more than --max-epochs times, and when a stage's new data is much smaller than the data
before it while carrying most of the weight (the cookbook: then put more weight on old data)."""

SAMPLE_CHARS = 1_000_000


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="dry run: tokens, epochs, unique/repeated tokens, LR per stage",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path, help="recipe YAML file")
    p.add_argument("--out", type=Path, help="a run folder whose shards/ already hold the tokenized sources")
    add_trust_flag(p)
    p.add_argument("--max-epochs", type=float, metavar="E",
                   help="warn when a source is read more than E times (default: the recipe's max_epochs, 4)")
    return p


def run(args) -> int:
    if args.max_epochs is not None and not args.max_epochs > 0:  # nan too; inf (never warn) is as the recipe's
        raise CptError(f"--max-epochs: {args.max_epochs}; give a positive number of epochs, e.g. 4")
    recipe = load_recipe(args.recipe)
    for path, what in ((args.out, "--out"), (recipe.data_dir, "data_dir")):
        _check_folder(path, what)
    sizes = source_sizes(recipe, args.out)
    segments = plan_segments(recipe)
    plans = plan_stages(recipe, segments, sizes)
    max_epochs = recipe.max_epochs if args.max_epochs is None else args.max_epochs
    warnings = plan_warnings(recipe, segments, plans, sizes, max_epochs)
    print(format_plan(recipe, plans, sizes, warnings))
    return 0


def _check_folder(path: Path | None, what: str) -> None:
    """A folder the run reads or fills: a file at it or above it is refused now, not mid-run."""
    for p in ([path, *path.parents] if path is not None else []):
        if p.is_dir():
            return
        if p.exists() or p.is_symlink():
            where = "is not a folder" if p == path else f"its parent {p} is not a folder"
            raise CptError(f"{what} {path}: {where}; choose another path")


def source_sizes(recipe: Recipe, out: Path | None) -> dict[str, SourceSize]:
    from .model.load import load_tokenizer

    tokenizer = load_tokenizer(recipe.tokenizer_path)
    fp = tokenizer_fingerprint(tokenizer)
    shard_dir = recipe.data_dir or (out / "shards" if out else None)
    sizes = {}
    for name, src in recipe.sources.items():
        if src.list_file is not None:  # counted from the shards' .idx files (and checked, as a run checks them)
            shard = open_list(name, src, fp, len(tokenizer), recipe.data_dir)[0]  # a dry run writes no --out
        elif src.prefix is not None:
            shard = Shard(_existing_shard(name, src.prefix, fp, len(tokenizer)).prefix)
        elif shard_dir is not None:  # hashing the inputs finds their cached shard
            key = content_key(fp, [input_record(p) for p in src.paths], src)
            prefix = shard_dir / f"{name}.{key}"
            shard = Shard(prefix) if complete_meta(prefix, key) else None
        else:
            shard = None
        if shard is None:
            sizes[name] = _estimate(name, src, tokenizer, recipe)
            continue
        val = carve_validation(shard, recipe.validation.tokens_per_source, recipe.seed, name)
        up = src.upsample_long
        stream = PackedStream(name, shard, np.setdiff1d(np.arange(len(shard)), val), recipe.seq_len, recipe.seed,
                              None if up is None else (up.min_tokens, up.factor))  # as RunData builds it
        sizes[name] = SourceSize(stream.samples_per_epoch, stream.epoch_tokens, distinct=stream.distinct_tokens)
    return sizes


def _estimate(name: str, src: SourceCfg, tokenizer, recipe: Recipe) -> SourceSize:
    """Tokens per byte of the first ~1M characters, times the inputs' bytes, minus validation."""
    chars = tokens = 0
    for text in islice(file_documents(name, src, src.paths[0]), 100_000):
        tokens += len(tokenizer(text)["input_ids"]) + 1
        chars += len(text.encode("utf-8"))
        if chars > SAMPLE_CHARS:
            break
    size = sum(f.stat().st_size for p in src.paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    total = int(size * tokens / max(chars, 1))
    train = max(0, total - recipe.validation.tokens_per_source)
    return SourceSize(max(1, train // recipe.seq_len), train, exact=False)
