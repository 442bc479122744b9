"""`cpt tokenize`: raw files to one Megatron shard (`PREFIX.bin/.idx`) plus `PREFIX.json`.

The same code `cpt run` uses for a recipe's sources, offered on its own for corpora prepared once
and named by `prefix:` in many recipes (or given to Megatron directly)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import CptError
from ..recipe import SourceCfg
from .parts import parse_part, size, split, write_list
from .sources import check_source
from .tokenize import input_record, complete_meta, content_key, tokenize_source, tokenizer_fingerprint

HELP = """Tokenize text, JSONL, Parquet or Hugging Face datasets (save_to_disk folders) into one
Megatron indexed dataset: PREFIX.bin (uint16 tokens when the vocabulary fits, else int32),
PREFIX.idx, and PREFIX.json (tokenizer fingerprint, documents, tokens, each input's size, hash
and document range). Every document ends with the tokenizer's EOS.

Documents are encoded by --workers processes, in order, with bounded memory. Progress is committed
every few seconds under temporary names: an interrupted run leaves no PREFIX.bin/.idx, and running
the same command again continues where it stopped. Rerunning a finished command does nothing.

Example: cpt tokenize --tokenizer models/smollm2 --output shards/wiki --workers 8 wiki/*.jsonl

More than one machine: --part I/N tokenizes the I-th of N parts of the files (balanced by bytes,
the same on every machine given the same files), one shard per array task; then
--list OUT.txt PREFIX... writes the data-file list that joins the shards, weighted by tokens:
  cpt tokenize --tokenizer T --output shards/web-$I --part $I/16 web/*.jsonl      # task I of 16
  cpt tokenize --list lists/web.txt shards/web-*                                  # once, at the end"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tokenize", help="tokenize files into a Megatron .bin/.idx shard", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help="input files (or dataset folders for hf); with --list, the shards' prefixes")
    p.add_argument("--tokenizer", type=Path, metavar="DIR", help="Hugging Face tokenizer folder")
    p.add_argument("--output", type=Path, metavar="PREFIX", help="writes PREFIX.bin, .idx, .json")
    p.add_argument("--part", metavar="I/N", help="tokenize only the I-th of N parts of the files (1 <= I <= N)")
    p.add_argument("--list", type=Path, metavar="OUT.txt",
                   help="write a data-file list joining the shards given as FILE..., weighted by tokens (no tokenizing)")
    p.add_argument("--corpus", help="--list: the corpus column (default: OUT's name)")
    p.add_argument("--format", choices=["text", "lines", "jsonl", "parquet", "hf"],
                   help="input format (default: from the file extensions; folders are hf datasets)")
    p.add_argument("--separator", help="text format: the string between documents (default: a blank line)")
    p.add_argument("--text-field", default="text", metavar="F", help="jsonl/parquet/hf: the text column")
    p.add_argument("--template", metavar="T", help='jsonl/parquet/hf: e.g. "{question}\\n{answer}"')
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="text/lines/jsonl: a byte that is not UTF-8 stops with an error (strict, the default) "
                        "or reads as U+FFFD (replace)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="tokenizing processes (default: one per CPU core)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard made from other inputs")
    return p


def run(args) -> int:
    if args.list is not None:  # join shards, tokenize nothing
        entries = write_list(args.list.expanduser(), [f.expanduser() for f in args.files], args.corpus)
        print(f"{args.list}: {len(entries)} shard(s), weighted by tokens")
        return 0
    for flag, value in (("--tokenizer", args.tokenizer), ("--output", args.output)):
        if value is None:
            raise CptError(f"{flag} is required (or --list OUT.txt to join shards)")
    if args.workers < 1:
        raise CptError(f"--workers: {args.workers}; give 1 or more")
    if args.part is not None:
        i, n = parse_part(args.part)
        args.files = split([f.expanduser() for f in args.files], n)[i - 1]
        print(f"part {i}/{n}: {len(args.files)} file(s), {sum(size(f) for f in args.files) / 1e6:.1f} MB")
    if args.output.expanduser().is_dir():
        raise CptError(f"--output {args.output}: is a folder; give a prefix such as {args.output / 'NAME'} "
                       "(cpt writes PREFIX.bin, PREFIX.idx and PREFIX.json)")
    src = SourceCfg(paths=[f.expanduser() for f in args.files], format=args.format, separator=args.separator,
                    text_field=args.text_field, template=args.template, errors=args.errors)
    problems = check_source(src)
    if problems:
        raise CptError("; ".join(problems))
    from ..model.load import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer, "--tokenizer")
    prefix = args.output.expanduser()
    inputs = [input_record(p) for p in src.paths]
    key = content_key(tokenizer_fingerprint(tokenizer), inputs, src)
    if complete_meta(prefix, key) is not None:
        print(f"{prefix}.bin/.idx are up to date (same inputs, options and tokenizer); nothing to do")
        return 0
    existing = [str(prefix) + ext for ext in (".bin", ".idx", ".json") if Path(str(prefix) + ext).exists()]
    if existing and not args.overwrite:
        raise CptError(f"--output: {existing[0]} exists and was made from other inputs or another tokenizer; "
                       "choose another PREFIX or pass --overwrite")
    Path(f"{prefix}.json").unlink(missing_ok=True)  # the old shard stops looking complete first
    prefix.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    meta = tokenize_source(prefix.name, src, tokenizer, prefix, key, inputs, args.workers)
    seconds = time.perf_counter() - t0
    mb = sum(i["bytes"] for i in inputs) / 1e6
    print(f"{prefix}.bin/.idx: {meta['documents']:,} documents, {meta['tokens']:,} tokens ({meta['dtype']}), "
          f"{mb:.1f} MB in {seconds:.1f} s ({mb / max(seconds, 1e-9):.2f} MB/s, {args.workers} worker(s))")
    return 0
