"""Which new tokens an extension may add: the base tokenizer's own piece rules (issue 13).

Extending Llama-2 with Vietnamese by plain continued BPE kept the ids of 8% of English paragraphs.
Two causes: `\\n` became a token (Llama-2 spells it as the byte `<0x0A>`, so every paragraph with a
line break changed), and merges across character classes (`'` + `s`, `i` + `,`) that Llama-2's own
SentencePiece training never allows. So:

- No new token holds whitespace or a control/format character (Unicode category C*), except
  SentencePiece's `▁` as a word's first character (its last, with treat_whitespace_as_suffix).
  Byte-level BPE (`Ġ` is a space, `Ċ` a newline): no token that is a run of whitespace and control
  characters other than plain spaces; other byte-level tokens follow the base pre-tokenizer as before.
- SentencePiece-style: SentencePiece's `IsValidSentencePiece` (trainer_interface.cc) with the
  base's trainer_spec (tokenizer.model), else Llama-2's: at most max_sentencepiece_length
  characters; one Unicode script per piece when split_by_unicode_script, where Hiragana, Katakana
  and `ー` count as Han, an Inherited mark (a combining accent) takes the script of the character
  before it, and digits and punctuation are Common; digits (0-9 and fullwidth) join any script when
  split_by_number is off; a digit stands alone when split_digits.

The learner applies these as a filter on candidate merges (`bpe.learn_merges(allowed=...)`): a pair
whose result breaks them is never counted, so it costs no vocabulary slot."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, fields
from functools import lru_cache

SPACE = "▁"  # SentencePiece's visible space
SP_UNK_CHAR = "\u2585"  # SentencePiece's internal unknown mark: never inside a piece
DIGITS = frozenset("0123456789") | frozenset(chr(c) for c in range(0xFF10, 0xFF1A))  # SentencePiece's digits
HAN_LIKE = {"Hira", "Kana", "Hani"}  # SentencePiece merges Hiragana and Katakana into Han


@dataclass(frozen=True)
class PieceRules:
    """The trainer_spec fields of a SentencePiece model that decide which pieces may exist; the
    defaults are Llama-2's."""

    split_by_unicode_script: bool = True
    split_by_number: bool = True
    split_digits: bool = True
    max_sentencepiece_length: int = 16  # characters
    treat_whitespace_as_suffix: bool = False

    @classmethod
    def from_trainer_spec(cls, spec) -> "PieceRules":
        return cls(**{f.name: getattr(spec, f.name) for f in fields(cls)})

    def allows(self, piece: str) -> bool:
        """Whether the base's SentencePiece trainer could have made `piece` (and it holds no
        whitespace but a word-initial `▁`, nor a control character)."""
        if not 0 < len(piece) <= self.max_sentencepiece_length:
            return False
        space_at = len(piece) - 1 if self.treat_whitespace_as_suffix else 0
        prev = None  # the script so far; None: any (SentencePiece's kAnyType)
        for i, c in enumerate(piece):
            if c == SPACE:
                if i != space_at:
                    return False
                continue  # `▁` has no script and leaves `prev` as it was
            if not visible(c) or c == SP_UNK_CHAR:
                return False
            digit = c in DIGITS
            if digit and self.split_digits and len(piece) > 1:
                return False
            s = script(c)
            if s == "Zinh":
                s = prev
            if digit and not self.split_by_number:
                s = None
            if self.split_by_unicode_script and s is not None and prev is not None and s != prev:
                return False
            prev = s
        return True


@lru_cache(maxsize=None)
def visible(c: str) -> bool:
    """Not whitespace, and not a control, format, surrogate, private-use or unassigned character."""
    return not c.isspace() and unicodedata.category(c)[0] != "C"


@lru_cache(maxsize=None)
def script(c: str) -> str:
    """The ISO 15924 script code of a character as SentencePiece groups them: `Hani` for Han,
    Hiragana, Katakana and `ー` (U+30FC); `Zyyy` (Common) for digits and punctuation; `Zinh` for
    Inherited marks."""
    from fontTools.unicodedata import script as unicode_script  # via matplotlib; Unicode's Scripts.txt

    s = unicode_script(c)
    return "Hani" if s in HAN_LIKE or c == "\u30fc" else s


def byte_level_allows(token: str) -> bool:
    """A byte-level BPE token (GPT-2's alphabet) may be added unless its bytes are a run of
    whitespace and control characters other than plain spaces (`Ċ`, `čĊ`, `ĉĉ`)."""
    text = _byte_decoder().decode([token])
    return any(visible(c) for c in text) or set(text) == {" "}


@lru_cache(maxsize=1)
def _byte_decoder():
    from tokenizers import decoders

    return decoders.ByteLevel()
