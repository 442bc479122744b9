"""Continued BPE training: learn new merges on top of an existing BPE vocabulary. Pure, no I/O.

The input is already segmented by the base tokenizer (each distinct pre-token, split into base
tokens, with its corpus frequency), so every merge learned here ranks after all the base merges
and fires only where the base tokenizer leaves the two tokens side by side (spec section 2.3 A,
the algorithm of arXiv 2512.03989; this is our own implementation)."""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping


@dataclass
class Learned:
    """Merges in the order learned; `tokens` are the merge results that were not in the vocab,
    each with the pair frequency when it was learned (its count in the training corpus)."""

    merges: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[tuple[str, int]] = field(default_factory=list)


def learn_merges(words: Mapping[tuple[str, ...], int], vocab: Collection[str], n_tokens: int,
                 min_frequency: int = 2, banned: Collection[tuple[str, str]] = (),
                 reserved: Collection[str] = (), allowed: Callable[[str], bool] | None = None) -> Learned:
    """Greedy BPE on `words` (token sequence -> frequency) until `n_tokens` tokens not in `vocab`
    are made, or the best pair occurs fewer than `min_frequency` times.

    Ties go to the smaller (left, right) strings, so the result depends only on the input. A merge
    whose result is already in `vocab` is kept but adds no token. Pairs in `banned`, merges that
    would produce a string in `reserved` (special tokens, byte-fallback names) and merges whose
    result `allowed` refuses (`pieces`: the base's piece rules) are never counted, so never learned
    and they cost no token."""
    seqs = [list(w) for w in words]
    freqs = list(words.values())
    counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # may hold stale word indices
    verdicts: dict[tuple[str, str], bool] = {}

    def counted(p: tuple[str, str]) -> bool:
        if p not in verdicts:
            t = p[0] + p[1]
            verdicts[p] = p not in banned and t not in reserved and (allowed is None or allowed(t))
        return verdicts[p]

    for i, (s, f) in enumerate(zip(seqs, freqs)):
        for p in zip(s, s[1:]):
            if counted(p):
                counts[p] += f
                where[p].add(i)
    # Lazy invalidation: an entry whose count is stale is re-pushed with the current count when it
    # surfaces. Counts that grow are pushed at once, so no entry ever understates its pair.
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    out, made = Learned(), set()
    while len(out.tokens) < n_tokens and heap:
        neg, a, b = heapq.heappop(heap)
        c = counts.get((a, b), 0)
        if c != -neg:
            if c > 0:
                heapq.heappush(heap, (-c, a, b))
            continue
        if c < min_frequency:
            break
        out.merges.append((a, b))
        if a + b not in vocab and a + b not in made:
            made.add(a + b)
            out.tokens.append((a + b, c))
        grown = _apply(a, b, seqs, freqs, counts, where, counted)
        for p in grown:
            heapq.heappush(heap, (-counts[p], *p))
    return out


def _apply(a: str, b: str, seqs, freqs, counts, where, counted) -> set[tuple[str, str]]:
    """Merge every (a, b) in the words that hold it, updating the counts of the pairs that are
    `counted` and the index. Returns the pairs whose counts grew (they need a fresh heap entry)."""
    grown = set()
    for i in where.pop((a, b)):
        s, f = seqs[i], freqs[i]
        merged, j = [], 0
        while j < len(s):
            if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                merged.append(a + b)
                j += 2
            else:
                merged.append(s[j])
                j += 1
        if len(merged) == len(s):
            continue  # a stale index: an earlier merge already consumed the pair in this word
        delta = Counter(zip(merged, merged[1:]))
        delta.subtract(Counter(zip(s, s[1:])))
        for p, d in delta.items():
            if d and counted(p):
                counts[p] += d * f
                if d > 0:
                    where[p].add(i)
                    grown.add(p)
                elif counts[p] <= 0:
                    del counts[p]
        seqs[i] = merged
    counts.pop((a, b), None)
    return {p for p in grown if p in counts}


def missing_characters(words: Mapping[str, int], vocab: Collection[str], min_frequency: int = 2,
                       coverage: float = 0.9995, allowed: Callable[[str], bool] | None = None) -> list[tuple[str, int]]:
    """Characters of `words` (string -> frequency) absent from `vocab`, most frequent first (ties by
    character): those among the most frequent characters that together make up `coverage` of all
    character occurrences (SentencePiece's character_coverage) and occur `min_frequency` times or
    more, and that `allowed` accepts (`pieces`: never whitespace or control characters). A
    SentencePiece-style BPE spells a missing character as byte-fallback tokens, which never merge;
    the rare rest stays spelled that way rather than spend the budget."""
    chars: Counter[str] = Counter()
    for w, f in words.items():
        for ch in w:
            chars[ch] += f
    total, seen, found = sum(chars.values()), 0, []
    for c, n in sorted(chars.items(), key=lambda cn: (-cn[1], cn[0])):
        if seen >= coverage * total or n < min_frequency:
            break
        seen += n
        if c not in vocab and (allowed is None or allowed(c)):
            found.append((c, n))
    return found
