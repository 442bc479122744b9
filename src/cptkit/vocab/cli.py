"""`cpt vocab`: extend a tokenizer's vocabulary for a new language, measure what it changed, and give a
model rows for the new tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CptError
from ..notify import warn
from ..fileio import write_json_atomic

METHODS = ("mean", "first", "random", "multivariate")  # vocab/init.py; here so --help needs no torch

EXTEND_HELP = """Add N tokens learned on a new-language corpus to a BPE tokenizer (byte-level: GPT-2,
SmolLM2, Llama-3; SentencePiece-style: Llama-2 tokenizer.json and tokenizer.model). BPE training
continues from the base tokenizer's own segmentation; new merges are appended after the old ones
and new ids follow the largest old id, so every old id, merge and special token stays put.
SentencePiece-style bases first get the corpus's missing characters (up to --character-coverage),
which count toward N.

New tokens follow the base's own piece rules: never whitespace or control characters (line
breaks, CRLF), and for SentencePiece-style bases the trainer_spec of tokenizer.model (else
Llama-2's): one Unicode script per piece (no `'s` or `i,`), digits alone, `▁` only first, no
longer than max_sentencepiece_length (Llama-2: 16). Pieces that break them are never learned
and cost no slot.

--protect FILE: base-language text whose tokenization must stay as it was: merges on pairs it
holds are never learned, and new characters may touch at most 1% of its documents; the command
prints the share of its documents that still changed. Without it, a warning: base-language text
may change. Measured with 1,000 tokens from viwiki: GPT-2 keeps 99.8% of English paragraphs
without it; stories260K's 512-token SentencePiece-style vocab keeps 7% without it and 99.8% with
it. Pass it for small vocabularies; it costs the new language a part of its gain (stories260K:
41% -> 31% fewer tokens).

--out gets the base folder's tokenizer files with tokenizer.json (and tokenizer.model) extended,
plus vocab_extension.json (base_size, new_ids, each new token and its corpus frequency). When the
corpus is too small to learn N tokens at --min-frequency, the ones learned are kept and the
command fails with how many.

Example: cpt vocab extend --base models/smollm2 --corpus vi/*.jsonl --add 8000 --min-frequency 50
         --protect en/sample.txt --out models/smollm2-vi"""

REPORT_HELP = """Fertility (tokens per word and per character) of each corpus under the old and the
new tokenizer, the share of documents whose ids changed (on base-language text: the regression),
round-trip failures (decode(encode(x)) differs from the old tokenizer's), and how many new tokens
BPE can build from their own characters. With tokenizer.model in both folders, also how often
SentencePiece gives the same ids as tokenizer.json. A warning comes first when --new is not an
extension of --old (an old token has another id, or the old merges do not come first). Run it
once per corpus format: --format, --separator and --text-field apply to every --corpus file; a
document is a paragraph with --format lines.

Example: cpt vocab report --old models/smollm2 --new models/smollm2-vi --corpus en/wiki.txt vi/wiki.jsonl"""


INIT_HELP = """Resize a model's embeddings to an extended tokenizer (cpt vocab extend) and initialise
the new rows from the old ones: `mean` of the rows of the pieces the old tokenizer splits the token
into (EEVE's input init; the token's own string is split by the old BPE model, not re-encoded),
`first` (the first piece's row: EEVE's output init), `random` (normal with the old rows' mean and
standard deviation), `multivariate` (normal with their mean and covariance x --cov-scale; Hewitt's
1e-5 keeps new tokens from out-scoring old ones). Old rows and all other weights are unchanged, so
on text the extension tokenizes as before the model's logits over old tokens are the original's.

Tied input/output embeddings (stories260K, SmolLM2) stay tied: one matrix, initialised by
--input-init, and `strategy: eeve` collapses its input and output stages. --untie copies the
matrix into a separate output embedding first; then --output-init (default first) applies and all
seven EEVE stages run. --out gets the model, the tokenizer and vocab_extension.json (base_size,
size, how the rows were made), which row-level `trainable:` entries read.

Example: cpt vocab init --model models/smollm2 --tokenizer models/smollm2-vi-tok --out models/smollm2-vi"""


def _corpus_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["text", "lines", "jsonl", "parquet"],
                   help="corpus format (default: from each file's extension; .txt is text)")
    p.add_argument("--separator", help="text format: the string between documents (default: a blank line)")
    p.add_argument("--text-field", default="text", metavar="F", help="jsonl/parquet: the text column")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("vocab", help="extend a tokenizer's vocabulary; measure the change",
                              description=__doc__)
    sub = p.add_subparsers(dest="vocab_command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    e = sub.add_parser("extend", help="add tokens learned on a corpus to a BPE tokenizer", description=EXTEND_HELP,
                       formatter_class=fmt)
    e.add_argument("--base", type=Path, required=True, metavar="DIR", help="the tokenizer folder to extend (read only)")
    e.add_argument("--corpus", type=Path, nargs="+", required=True, metavar="FILE", help="new-language text")
    e.add_argument("--add", required=True, metavar="N", help="how many new tokens to learn")
    e.add_argument("--out", type=Path, required=True, metavar="DIR", help="new folder (must not exist or be empty)")
    e.add_argument("--min-frequency", type=int, default=2, metavar="F",
                   help="keep only tokens seen at least F times in the corpus (default: 2)")
    e.add_argument("--protect", type=Path, nargs="+", default=[], metavar="FILE",
                   help="base-language text whose tokenization must not change")
    e.add_argument("--character-coverage", type=float, default=0.9995, metavar="C",
                   help="SentencePiece-style: add missing characters among those covering this share (default: 0.9995)")
    _corpus_flags(e)
    r = sub.add_parser("report", help="fertility and regressions of an extended tokenizer", description=REPORT_HELP,
                       formatter_class=fmt)
    r.add_argument("--old", type=Path, required=True, metavar="DIR", help="the base tokenizer folder")
    r.add_argument("--new", type=Path, required=True, metavar="DIR", help="the extended tokenizer folder")
    r.add_argument("--corpus", type=Path, nargs="+", required=True, metavar="FILE", help="corpora to measure")
    r.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers as JSON")
    _corpus_flags(r)
    i = sub.add_parser("init", help="resize a model to an extended tokenizer and initialise the new rows",
                       description=INIT_HELP, formatter_class=fmt)
    i.add_argument("--model", type=Path, required=True, metavar="DIR", help="the model folder (read only)")
    i.add_argument("--tokenizer", type=Path, required=True, metavar="DIR", help="the extended tokenizer folder")
    i.add_argument("--out", type=Path, required=True, metavar="DIR", help="new folder (must not exist or be empty)")
    i.add_argument("--input-init", choices=METHODS, default="mean", help="new input rows (default: mean)")
    i.add_argument("--output-init", choices=METHODS, help="new output rows of an untied model (default: first)")
    i.add_argument("--untie", action="store_true", help="give a tied model a separate output embedding first")
    i.add_argument("--cov-scale", type=float, default=1e-5, metavar="S",
                   help="multivariate: the covariance's scale (default: 1e-5, Hewitt)")
    i.add_argument("--pad-to-multiple-of", metavar="K", help="round the embedding rows up to a multiple of K")
    i.add_argument("--seed", type=int, default=0, help="random and multivariate draws (default: 0)")
    return p


def _reader(args):
    from .extend import reader

    if args.separator is not None and args.format not in (None, "text"):
        raise CptError(f"--separator: only the text format has a separator (--format is {args.format})")
    return reader(args.format, args.separator, args.text_field)


def _whole(text: str | None, flag: str) -> int | None:
    """A count as typed (`8000`, `1e9`), read here so that a bad one is a one-line CptError."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():  # nan, inf, 2.5
        raise CptError(f"{flag}: {text!r} is not a whole number; give a count such as 1000")
    return int(value)


def _extend(args) -> int:
    from .extend import extend

    if not 0 < args.character_coverage <= 1:
        raise CptError(f"--character-coverage: {args.character_coverage}; give a share in (0, 1]")
    meta = extend(args.base, args.corpus, _whole(args.add, "--add"), args.out, _reader(args), args.min_frequency,
                  args.protect, args.character_coverage)
    s = meta["seconds"]
    print(f"{args.out}: {meta['base_size']:,} -> {meta['size']:,} tokens (ids {meta['new_ids'][0]}-{meta['new_ids'][1]}), "
          f"{meta['merges_added']:,} merges appended; corpus read in {s['count']:.1f} s, "
          f"merges learned in {s['learn']:.1f} s")
    if meta["unreachable"]:
        print(f"warning: {len(meta['unreachable'])} new tokens are not built from their own characters "
              f"(they still occur inside longer words): {meta['unreachable'][:5]}")
    if "protect_changed" in meta:
        p = meta["protect_changed"]
        print(f"--protect text: {p['changed']:,} of {p['documents']:,} documents "
              f"({100 * p['changed'] / max(p['documents'], 1):.2f}%) tokenize differently")
    else:
        warn("without --protect, base-language text may tokenize differently; pass --protect FILE with "
             "base-language text to keep it (cpt vocab report measures the change)")
    return 0


def _report(args) -> int:
    from .report import measure, render

    read = _reader(args)
    for f in args.corpus:
        if not f.is_file():
            raise CptError(f"--corpus: file not found: {f}")
    stems = [f.stem for f in args.corpus]
    corpora = {(f.stem if stems.count(f.stem) == 1 else str(f)): list(read(f)) for f in args.corpus}
    result = measure(args.old, args.new, corpora)
    print(render(result))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


def _init(args) -> int:
    from .init import init_model

    if args.cov_scale <= 0:
        raise CptError(f"--cov-scale: {args.cov_scale}; give a positive scale")
    r = init_model(args.model, args.tokenizer, args.out, args.input_init, args.output_init, args.untie, args.seed,
                   args.cov_scale, _whole(args.pad_to_multiple_of, "--pad-to-multiple-of"))
    tied = "tied (one matrix)" if r["tied"] else f"untied, output rows: {r['output_init']}"
    print(f"{args.out}: {r['base_size']:,} -> {r['size']:,} tokens ({r['embedding_rows']:,} embedding rows), "
          f"input rows: {r['input_init']}, {tied}; {r['pieces_per_token']:.2f} old pieces per new token")
    return 0


COMMANDS = {"extend": _extend, "report": _report, "init": _init}


def run(args) -> int:
    return COMMANDS[args.vocab_command](args)
