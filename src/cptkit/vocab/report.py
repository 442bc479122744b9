"""`cpt vocab report`: what an extension did to each corpus. Fertility (tokens per word and per
character) before and after, the share of documents whose ids changed (for base-language text:
the regression), round-trip failures, how many new tokens exist and are reachable, and, when both
folders carry a tokenizer.model, how often SentencePiece gives the same ids as tokenizer.json. A
warning comes first when the new tokenizer is not an extension of the old (issue 13)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from .files import read_tokenizer

BATCH = 256


def _encode(tok, docs: list[str], desc: str) -> list[list[int]]:
    ids = []
    for i in tqdm(range(0, len(docs), BATCH), desc=desc, unit=" batches", disable=None):
        ids += [e.ids for e in tok.encode_batch(docs[i:i + BATCH], add_special_tokens=False)]
    return ids


def changed_documents(old, new, docs: Iterable[str]) -> tuple[int, int]:
    """How many of `docs` there are and how many get other ids from `new` than from `old`
    (tokenizers.Tokenizer objects), read in batches."""
    docs, n, changed = iter(docs), 0, 0
    while batch := list(islice(docs, BATCH)):
        a, b = (t.encode_batch(batch, add_special_tokens=False) for t in (old, new))
        n += len(batch)
        changed += sum(x.ids != y.ids for x, y in zip(a, b))
    return n, changed


def _sp(folder: Path):
    if not (folder / "tokenizer.model").is_file():
        return None
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def corpus_row(old, new, docs: list[str], name: str, sp_old=None, sp_new=None) -> dict:
    """The numbers for one corpus; `old`/`new` are tokenizers.Tokenizer objects."""
    a, b = _encode(old, docs, f"{name}: old"), _encode(new, docs, f"{name}: new")
    words, chars = sum(len(d.split()) for d in docs), sum(len(d) for d in docs)
    ta, tb = sum(map(len, a)), sum(map(len, b))
    changed = sum(x != y for x, y in zip(a, b))
    trips = sum(x != y for x, y in zip(old.decode_batch(a, skip_special_tokens=False),
                                       new.decode_batch(b, skip_special_tokens=False)))
    row = {"documents": len(docs), "words": words, "characters": chars, "tokens_old": ta, "tokens_new": tb,
           "tokens_per_word_old": ta / max(words, 1), "tokens_per_word_new": tb / max(words, 1),
           "tokens_per_char_old": ta / max(chars, 1), "tokens_per_char_new": tb / max(chars, 1),
           "reduction_pct": 100 * (1 - tb / max(ta, 1)), "token_change_pct": 100 * (tb - ta) / max(ta, 1),
           "changed_docs": changed, "changed_pct": 100 * changed / max(len(docs), 1),
           "roundtrip_failures": trips}
    for key, sp, ids in (("sp_agreement_old_pct", sp_old, a), ("sp_agreement_new_pct", sp_new, b)):
        if sp is not None:
            row[key] = 100 * sum(x == y for x, y in zip(sp.encode(docs), ids)) / max(len(docs), 1)
    return row


def added_tokens(old, new) -> dict:
    """New tokens (in `new`, not in `old`) and how many BPE builds from their own characters."""
    known = old.get_vocab(with_added_tokens=True)
    fresh = {t: i for t, i in new.get_vocab(with_added_tokens=True).items() if t not in known}
    reachable = sum([x.id for x in new.model.tokenize(t)] == [i] for t, i in fresh.items())
    return {"size_old": old.get_vocab_size(with_added_tokens=True), "size_new": new.get_vocab_size(with_added_tokens=True),
            "added": len(fresh), "reachable": reachable}


def not_an_extension(old, new, old_json: dict, new_json: dict) -> str | None:
    """Why `new` does not extend `old` (tokenizers.Tokenizer objects and their tokenizer.json as
    parsed), or None when it does: every old token keeps its id, the old merges come first."""
    vocab = new.get_vocab(with_added_tokens=True)
    moved = [t for t, i in old.get_vocab(with_added_tokens=True).items() if vocab.get(t) != i]
    if moved:
        return f"{len(moved):,} old tokens have another id or none, such as {moved[0]!r}"
    a, b = ([tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in t["model"].get("merges", [])]
            for t in (old_json, new_json))
    if b[:len(a)] != a:
        return "the old merges do not come first, as they were"
    return None


def measure(old_dir: Path, new_dir: Path, corpora: dict[str, list[str]]) -> dict:
    (old_json, old), (new_json, new) = read_tokenizer(old_dir, "--old"), read_tokenizer(new_dir, "--new")
    sp_old, sp_new = _sp(old_dir), _sp(new_dir)
    rows = {name: corpus_row(old, new, docs, name, sp_old, sp_new) for name, docs in corpora.items()}
    return {"old": str(old_dir), "new": str(new_dir), "not_an_extension": not_an_extension(old, new, old_json, new_json),
            "tokens": added_tokens(old, new), "corpora": rows}


def render(result: dict) -> str:
    """A plain-text table, one row per corpus, after a warning when `new` does not extend `old`."""
    t = result["tokens"]
    lines = []
    if result.get("not_an_extension"):
        lines.append(f"warning: {result['new']} is not an extension of {result['old']} "
                     f"({result['not_an_extension']}): the numbers compare two unrelated tokenizers")
    lines += [f"{result['old']} ({t['size_old']:,}) -> {result['new']} ({t['size_new']:,}): "
              f"{t['added']:,} tokens added, {t['reachable']:,} reachable",
              f"{'corpus':<16}{'docs':>7}{'tokens old':>12}{'tokens new':>12}{'change':>9}"
              f"{'tok/word':>16}{'tok/char':>16}{'docs changed':>14}{'round-trip':>11}"]
    for name, r in result["corpora"].items():
        lines.append(f"{name[:15]:<16}{r['documents']:>7,}{r['tokens_old']:>12,}{r['tokens_new']:>12,}"
                     f"{r['token_change_pct']:>+8.2f}%"
                     f"{r['tokens_per_word_old']:>7.2f} -> {r['tokens_per_word_new']:<5.2f}"
                     f"{r['tokens_per_char_old']:>7.3f} -> {r['tokens_per_char_new']:<5.3f}"
                     f"{r['changed_pct']:>13.2f}%{r['roundtrip_failures']:>11,}")
    agree = [(n, r) for n, r in result["corpora"].items() if "sp_agreement_new_pct" in r]
    for n, r in agree:
        lines.append(f"sentencepiece == tokenizer.json on {n}: {r.get('sp_agreement_old_pct', float('nan')):.2f}% of "
                     f"documents before, {r['sp_agreement_new_pct']:.2f}% after")
    return "\n".join(lines)
