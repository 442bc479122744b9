"""`cpt vocab extend`: add N tokens learned on a new-language corpus to a BPE tokenizer while every
old id, merge and special token stays where it was (spec sections 2.3 A and 2.4).

Byte-level BPE (GPT-2, SmolLM2, Llama-3): each document goes through the base normalizer and
pre-tokenizer, each distinct pre-token is segmented once by the base BPE model, and BPE training
continues from there (`bpe.learn_merges`). New merges are appended, so they fire only after every
old one; new ids follow the largest existing id, added tokens included.

SentencePiece-style BPE (byte fallback and `▁` for spaces, e.g. Llama-2): characters missing
from the vocab would be spelled as bytes, which never merge, so the corpus's missing characters
come first (those within the character coverage; they count toward N), then merges inside words
(`▁` only starts a piece, as in SentencePiece). SentencePiece merges any adjacent pair whose concatenation is a piece, so
tokenizer.json gets, for each new token, every split into two vocab tokens (as transformers'
Llama converter derives merges from a .model), and tokenizer.model gets the new pieces with scores
below all old ones.

Every new token obeys the base's own piece rules (`pieces.py`, issue 13): no whitespace or control
characters (Llama-2 spells `\n` as a byte: adding it changed every paragraph with a line break), and
for SentencePiece-style bases the trainer_spec of tokenizer.model (else Llama-2's): one Unicode
script per piece (no `'s`, `i,`), digits alone, `▁` only first, at most max_sentencepiece_length
characters. A candidate merge that breaks them is never counted, so it costs no slot. On a
Llama-2-style 8,000-piece SentencePiece BPE trained on the English corpora, 1,000 tokens learned
on viwiki's first 300 articles leave 99.0% of TinyStories' multi-line stories with the same ids
(4.4% before the rules) and 97.5% of Wikipedia sentences (93.1%), for 36% fewer tokens on the
held-out Vietnamese (41% before; test_vocab_safety.py).

`--protect FILE` keeps the tokenization of base-language text: an appended merge changes a text
only where its pair is adjacent in the text's base segmentation, so such pairs are never learned
(nor kept among the SentencePiece splits); new characters may touch at most 1% of its documents
(`_allowed`). Measured with 1,000 tokens learned on viwiki's first 600 articles, on 12,630 English
paragraphs (TinyStories lines, Wikipedia articles) and the 77 held-out Vietnamese articles,
without --protect (with it):
                     English paragraphs identical   English tokens    Vietnamese tokens
  GPT-2              99.78% (100%)                  -0.03% (0.00%)    -40.2% (-40.0%)
  stories260K (512)   7.3%  (99.82%)                -8.6%  (-0.02%)   -41.4% (-31.1%)
So GPT-2 meets the bar (99% identical, within 0.5%) without it, and a small SentencePiece-style
vocab needs it (new pieces such as `ng` re-split English words). Protecting half of the English
and measuring the other half gives 99.90% / 99.82%: it carries over to text it has not seen."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from ..data.sources import iter_documents
from ..data.tokenize import file_sha256
from ..errors import CptError
from ..fileio import fsync_dir, replace_dir
from ..data.sources import check_source
from ..recipe import SourceCfg
from .bpe import learn_merges, missing_characters
from .files import read_tokenizer
from .pieces import SPACE, PieceRules, byte_level_allows
from .report import changed_documents

SP_WORD = re.compile(f"{SPACE}[^{SPACE}]*|[^{SPACE}]+")  # a word: `▁` only at its start
BYTE_NAMES = {f"<0x{i:02X}>" for i in range(256)}  # byte-fallback tokens; text must never merge into one
PROTECT_CHAR_SHARE = 0.01  # new characters may change this share of protected documents (see _allowed)
MAX_ADD = 1_000_000  # new tokens at most: the largest vocabularies in use hold about 260,000
MODEL_FILES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt"}


@dataclass
class Base:
    """A base tokenizer folder, read and checked."""

    folder: Path
    data: dict  # tokenizer.json as parsed
    tok: object  # tokenizers.Tokenizer
    style: str  # "byte-level" or "sentencepiece"
    vocab: dict[str, int]  # every token (model vocab and added tokens) -> id
    size: int  # len(tokenizer): what transformers reports, added tokens included
    first_id: int  # the first new id: one past the largest id in use
    rules: PieceRules | None  # SentencePiece-style: the pieces its trainer could make (pieces.py)
    sp_model: object | None  # tokenizer.model as a ModelProto, when present

    def allows(self, token: str) -> bool:
        """Whether `token` may be added (pieces.py): SentencePiece's piece rules, or byte-level's."""
        return self.rules.allows(token) if self.rules else byte_level_allows(token)


def load_base(folder: Path) -> Base:
    if not folder.is_dir():
        raise CptError(f"--base: {folder}: no such folder")
    data, tok = read_tokenizer(folder, "--base")
    model = data["model"]
    kind = model.get("type", "unknown")
    if kind != "BPE":
        raise CptError(f"--base: {folder} holds a {kind} tokenizer; only BPE tokenizers "
                       "(byte-level or SentencePiece-style) can be extended")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise CptError(f"--base: {folder}: BPE with subword prefixes/suffixes (BERT/CLIP style) is not supported")
    pre, norm = _types(data.get("pre_tokenizer")), _types(data.get("normalizer"))
    if "ByteLevel" in pre:
        style = "byte-level"
    elif "Metaspace" in pre or (model.get("byte_fallback") and SPACE in json.dumps(data.get("normalizer"),
                                                                                   ensure_ascii=False)):
        style = "sentencepiece"
    else:
        raise CptError(f"--base: {folder}: BPE without a ByteLevel pre-tokenizer or SentencePiece-style `▁` spaces "
                       f"(pre-tokenizer {sorted(pre) or 'none'}, normalizer {sorted(norm) or 'none'}) is not supported")
    vocab = tok.get_vocab(with_added_tokens=True)
    sp = _read_sp_model(folder, vocab) if style == "sentencepiece" and (folder / "tokenizer.model").is_file() else None
    rules = None
    if sp is not None:
        rules = PieceRules.from_trainer_spec(sp.trainer_spec)
    elif style == "sentencepiece":
        rules = _default_rules([t for t in model["vocab"] if t not in BYTE_NAMES])
    return Base(folder, data, tok, style, vocab, tok.get_vocab_size(with_added_tokens=True), max(vocab.values()) + 1,
                rules, sp)


def _default_rules(pieces: list[str]) -> PieceRules:
    """No tokenizer.model to ask: Llama-2's trainer_spec, except where the vocab shows the base was
    trained otherwise (a piece with a digit and another character: no split_digits; pieces longer
    than 16 characters: that length)."""
    merged_digits = any(len(t) > 1 and any(c.isdigit() for c in t) for t in pieces)
    return PieceRules(split_digits=not merged_digits,
                      max_sentencepiece_length=max([16, *(len(t) for t in pieces)]))


def _types(node) -> set[str]:
    """Every component type in a (possibly nested Sequence) normalizer or pre-tokenizer."""
    if isinstance(node, dict):
        return {node.get("type", "")} | {t for v in node.values() for t in _types(v)}
    if isinstance(node, list):
        return {t for v in node for t in _types(v)}
    return set()


def _read_sp_model(folder: Path, vocab: dict[str, int]):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    try:
        m.ParseFromString((folder / "tokenizer.model").read_bytes())
    except Exception as e:  # protobuf's DecodeError, or its C implementation's own
        raise CptError(f"--base: {folder}/tokenizer.model is not a SentencePiece model ({type(e).__name__})") from None
    if m.trainer_spec.model_type != pb.TrainerSpec.BPE:
        kind = pb.TrainerSpec.ModelType.Name(m.trainer_spec.model_type)
        raise CptError(f"--base: {folder}/tokenizer.model is a {kind} SentencePiece model; only BPE can be extended")
    for i, p in enumerate(m.pieces):
        if vocab.get(p.piece) != i:  # appending pieces keeps ids aligned only if they start aligned
            raise CptError(f"--base: {folder}: tokenizer.model piece {i} `{p.piece}` has id "
                           f"{vocab.get(p.piece)} in tokenizer.json")
    return m


def pretokens(base: Base, docs: Iterable[str], doc_chars: list | None = None) -> Counter[str]:
    """Distinct pre-tokens (SentencePiece-style: words) of `docs` with their counts. `doc_chars`,
    when given, receives each document's set of characters missing from the base vocab."""
    counts: Counter[str] = Counter()
    norm, pre = base.tok.normalizer, base.tok.pre_tokenizer
    for doc in docs:
        text = norm.normalize_str(doc) if norm else doc
        pieces = [p for p, _ in pre.pre_tokenize_str(text)] if pre else [text]
        if base.style == "sentencepiece":
            pieces = [w for p in pieces for w in SP_WORD.findall(p)]
        counts.update(pieces)
        if doc_chars is not None:
            doc_chars.append({c for c in set(text) if c not in base.vocab})
    return counts


def segment(base: Base, word: str, new_chars: set[str]) -> list[tuple[str, ...]]:
    """The base segmentation of a pre-token, cut where merging is impossible: at characters that
    stay byte-spelled, and at digits when the base splits digits. New characters are single
    tokens: old merges cannot involve them, so the runs between them segment independently."""
    model = base.tok.model
    if base.style == "byte-level":
        return [tuple(t.value for t in model.tokenize(word))]
    segs: list[tuple[str, ...]] = []
    cur: list[str] = []
    run = ""
    for ch in word + "\0":  # "\0": a final barrier that flushes
        barrier = ch == "\0" or (base.rules.split_digits and ch.isdigit()) or (ch not in base.vocab and ch not in new_chars)
        if ch in base.vocab and not barrier:
            run += ch
            continue
        if run:
            cur += [t.value for t in model.tokenize(run)]
            run = ""
        if barrier:
            if cur:
                segs.append(tuple(cur))
            cur = []
        else:
            cur.append(ch)
    return segs


@dataclass
class Protected:
    """Base-language text whose tokenization must stay: its pre-tokens and, per document, its
    characters that the base spells as bytes."""

    words: Counter[str]
    doc_chars: list[set[str]]


def read_protected(base: Base, docs: Iterable[str]) -> Protected:
    doc_chars: list[set[str]] = []
    return Protected(pretokens(base, docs, doc_chars if base.style == "sentencepiece" else None), doc_chars)


@dataclass
class Extension:
    tokens: list[tuple[str, int]]  # new tokens in id order, with corpus frequency
    merges: list[tuple[str, str]]  # to append to tokenizer.json's merges


def plan_extension(base: Base, words: Counter[str], n: int, min_frequency: int,
                   protected: Protected | None = None, coverage: float = 0.9995) -> Extension:
    """What to add: pure given the counted corpus and protected text."""
    protected = protected or Protected(Counter(), [])
    chars = []
    if base.style == "sentencepiece":
        found = missing_characters(words, base.vocab, min_frequency, coverage, base.allows)
        chars = _allowed(found, protected.doc_chars)[:n]
    new_chars = {c for c, _ in chars}
    segs: Counter[tuple[str, ...]] = Counter()
    for w, f in words.items():
        for s in segment(base, w, new_chars):
            if len(s) > 1:
                segs[s] += f
    banned = {p for w in protected.words for s in segment(base, w, new_chars) for p in zip(s, s[1:])}
    reserved = set(base.vocab) - set(base.data["model"]["vocab"])  # added/special tokens
    if base.style == "sentencepiece":
        reserved |= BYTE_NAMES
    if base.data["model"].get("ignore_merges"):
        reserved |= set(protected.words)  # a whole pre-token found in the vocab skips the merges
    learned = learn_merges(segs, set(base.vocab) | new_chars, n - len(chars), min_frequency, banned, reserved,
                           base.allows)
    tokens = chars + learned.tokens
    merges = learned.merges
    if base.style == "sentencepiece":
        merges = _all_splits(base, tokens, learned.merges, banned)
    return Extension(tokens, merges)


def _allowed(chars: list[tuple[str, int]], doc_chars: list[set[str]]) -> list[tuple[str, int]]:
    """The new characters that change at most PROTECT_CHAR_SHARE of the protected documents.
    Unlike a merge, a new character cannot be kept out of protected text that contains it, and
    withholding every one that appears there would cost most of the gain: any sizeable English
    corpus holds a few Vietnamese names (wikipedia_en has `à` 9 times), while a character common
    in it is what to keep as it was."""
    where: dict[str, set[int]] = {}
    for i, cs in enumerate(doc_chars):
        for c in cs:
            where.setdefault(c, set()).add(i)
    changed: set[int] = set()
    kept = []
    for c, n in chars:
        grown = changed | where.get(c, set())
        if len(grown) <= PROTECT_CHAR_SHARE * len(doc_chars):
            changed = grown
            kept.append((c, n))
    return kept


def _all_splits(base: Base, tokens, learned, banned) -> list[tuple[str, str]]:
    """SentencePiece's view as BPE merges: each new token's every split into two tokens of the
    final vocab (lower ids first); a learned merge onto an old token is kept as it is."""
    # Not the added tokens nor the byte-fallback ones: SentencePiece never merges into those.
    ids = {t: i for t, i in base.data["model"]["vocab"].items() if t not in BYTE_NAMES}
    ids.update({t: base.first_id + k for k, (t, _) in enumerate(tokens)})
    merges, done = [], set()
    for a, b in learned:
        t = a + b
        if t in done:
            continue
        if t in base.vocab:
            merges.append((a, b))
            continue
        done.add(t)
        splits = [(t[:i], t[i:]) for i in range(1, len(t)) if t[:i] in ids and t[i:] in ids]
        merges += sorted((p for p in splits if p not in banned), key=lambda p: (ids[p[0]], ids[p[1]]))
    return merges


def extend(base_dir: Path, corpus: list[Path], n: int, out: Path, read: Callable[[Path], Iterator[str]],
           min_frequency: int = 2, protect: list[Path] = (), coverage: float = 0.9995) -> dict:
    """Write the extended tokenizer to `out` (atomically) and return its vocab_extension.json.
    Raises CptError after writing when fewer than `n` tokens reach the frequency floor."""
    if not 1 <= n <= MAX_ADD:
        raise CptError(f"--add: {n}; give the number of new tokens to learn, 1 to {MAX_ADD:,}")
    if min_frequency < 1:
        raise CptError(f"--min-frequency: {min_frequency}; give 1 or more")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CptError(f"--out: {out} exists and is not an empty folder; choose a new one")
    if out.resolve().is_relative_to(base_dir.resolve()):
        raise CptError(f"--out: {out} is inside --base {base_dir}; the base folder is never written to")
    for p in [*corpus, *protect]:
        problems = check_source(SourceCfg(paths=[p]))
        if problems:
            raise CptError("; ".join(problems))
    base = load_base(base_dir)
    t0 = time.perf_counter()
    words = pretokens(base, tqdm(_docs(corpus, read), desc="counting corpus", unit=" docs", disable=None))
    protected = None
    if protect:
        protected = read_protected(base, tqdm(_docs(protect, read), desc="counting --protect", unit=" docs", disable=None))
    t1 = time.perf_counter()
    ext = plan_extension(base, words, n, min_frequency, protected, coverage)
    t2 = time.perf_counter()
    if not ext.tokens:
        raise CptError(f"learned 0 of {n} new tokens: no pair (or missing character) occurs --min-frequency "
                       f"{min_frequency} times in the corpus; nothing written")
    first = base.first_id
    meta = {"base": str(base_dir), "base_size": base.size, "size": base.size + len(ext.tokens),
            "new_ids": [first, first + len(ext.tokens) - 1],
            "tokens": [{"id": first + k, "token": t, "frequency": f} for k, (t, f) in enumerate(ext.tokens)],
            "min_frequency": min_frequency, "character_coverage": coverage, "requested": n, "learned": len(ext.tokens),
            "merges_added": len(ext.merges), "protect": [str(p) for p in protect],
            "piece_rules": asdict(base.rules) if base.rules else "byte-level",
            "corpus": [{"path": str(p), "sha256": file_sha256(p)} for p in corpus],
            "seconds": {"count": round(t1 - t0, 2), "learn": round(t2 - t1, 2)}}
    data, new = _extended(base, ext)
    # A token is reachable when BPE builds it from its own characters; report any that are not.
    meta["unreachable"] = [t for t, _ in ext.tokens if len(new.model.tokenize(t)) != 1]
    if protect:  # what the promise held on the text it was made on
        docs, changed = changed_documents(base.tok, new, _docs(protect, read))
        meta["protect_changed"] = {"documents": docs, "changed": changed}
    _write(base, ext, data, out, meta)
    if len(ext.tokens) < n:
        raise CptError(f"learned {len(ext.tokens)} of {n} new tokens: no other pair (or missing character) occurs "
                       f"--min-frequency {min_frequency} times in the corpus; kept them in {out}")
    return meta


def _docs(paths, read) -> Iterator[str]:
    for p in paths:
        yield from read(p)


def reader(fmt: str | None = None, separator: str | None = None, text_field: str = "text"):
    """Documents of one file, its format inferred from its own extension unless `fmt` is given."""
    def read(path: Path) -> Iterator[str]:
        kind = fmt or SourceCfg(paths=[path]).resolved_format()
        src = SourceCfg(paths=[path], format=kind, separator=separator if kind == "text" else None, text_field=text_field)
        return iter_documents(path.stem, src)

    return read


def _extended(base: Base, ext: Extension) -> tuple[dict, object]:
    """tokenizer.json's data with the new tokens and merges, and the tokenizers.Tokenizer it loads
    as, checked: every old id in place, no id twice."""
    from tokenizers import Tokenizer

    data = json.loads(json.dumps(base.data))  # a copy: `base` stays as read
    model = data["model"]
    model["vocab"].update({t: base.first_id + k for k, (t, _) in enumerate(ext.tokens)})
    # The base's own serialisation: pairs (tokenizers >= 0.20) or "a b" strings, which byte-level
    # and `▁` tokens can use safely as they never hold a space.
    if model["merges"] and isinstance(model["merges"][0], str) and not any(" " in t for m in ext.merges for t in m):
        model["merges"] += [f"{a} {b}" for a, b in ext.merges]
    else:
        model["merges"] += [list(m) for m in ext.merges]
    new = Tokenizer.from_str(json.dumps(data))
    check = new.get_vocab(with_added_tokens=True)
    if len(set(check.values())) != len(check) or any(check.get(t) != i for t, i in base.vocab.items()):
        raise CptError(f"internal: the extended tokenizer moved or duplicated an id (base {base.folder})")
    return data, new


def _write(base: Base, ext: Extension, data: dict, out: Path, meta: dict) -> None:
    """Assemble the folder under a temporary sibling name, then rename it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # a sibling: the final rename stays on one disk
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for f in base.folder.iterdir():
            # Model weights and config describe the old vocabulary size: they do not belong here.
            if f.is_file() and f.suffix not in MODEL_FILES and f.name not in ("config.json", "generation_config.json"):
                shutil.copyfile(f, tmp / f.name)  # copyfile: not the base's (often read-only) mode bits
        model = data["model"]
        (tmp / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        if base.sp_model is not None:
            (tmp / "tokenizer.model").write_bytes(_sp_model_bytes(base.sp_model, [t for t, _ in ext.tokens]))
        if (tmp / "vocab.json").exists() or (tmp / "merges.txt").exists():  # slow-tokenizer files: keep in step
            (tmp / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
            lines = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
            (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "vocab_extension.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        fsync_dir(tmp)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sp_model_bytes(proto, tokens: list[str]) -> bytes:
    """The .model with the new pieces appended, scores below every old one and decreasing, so a
    SentencePiece BPE ranks them as the appended merges rank in tokenizer.json."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.CopyFrom(proto)
    low = min(p.score for p in m.pieces)
    for k, t in enumerate(tokens, 1):
        m.pieces.add(piece=t, score=low - k, type=pb.ModelProto.SentencePiece.NORMAL)
    m.trainer_spec.vocab_size = len(m.pieces)
    return m.SerializeToString()
