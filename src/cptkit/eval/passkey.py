"""Passkey retrieval (Mohtashami & Jaggi 2023), generated locally: a random number hidden at a
chosen depth of repeated filler text, then the question; greedy decoding must return the number.
Accuracy by prompt length and depth shows which positions a context extension made usable.

Every prompt is exactly `length` tokens (the filler is cut to fit); the passkeys come from a
generator seeded by (seed, length, depth, trial), so a check is the same wherever it runs.
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from ..config import Strict
from ..errors import CptError
from .mode import evaluating
from .scoring import greedy

INTRO = "Remember the pass key hidden in this text."
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


class PasskeyCfg(Strict):
    """`eval: {passkey: {...}}`: checked at the base and at each stage's start and end."""

    lengths: list[Annotated[int, Field(gt=0, le=2**20)]] = Field([256, 512, 1024], min_length=1, max_length=64)
    depths: list[Annotated[float, Field(ge=0, le=1)]] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=1, max_length=64)
    trials: int = Field(5, gt=0, le=1000)
    digits: int = Field(5, ge=1, le=12)
    seed: int = Field(0, ge=0, le=2**32 - 1)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def passkey_prompt(tokenizer, length: int, depth: float, key: str) -> list[int]:
    """Token ids of one prompt, exactly `length` long: BOS (if the tokenizer has one), the intro,
    filler with the needle after `depth` of it, the question."""
    head = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + _ids(tokenizer, INTRO)
    needle, question = _ids(tokenizer, NEEDLE.format(key=key)), _ids(tokenizer, QUESTION)
    budget = length - len(head) - len(needle) - len(question)
    if budget < 0:
        raise CptError(f"passkey: a prompt of {length} tokens cannot hold the intro, the needle and the question "
                       f"({length - budget} tokens); use lengths of at least {length - budget}")
    unit = _ids(tokenizer, FILLER)
    filler = (unit * (budget // len(unit) + 1))[:budget]
    at = round(depth * budget)
    return head + filler[:at] + needle + filler[at:] + question


def check_lengths(cfg: PasskeyCfg, tokenizer, positions: int | None, where: str = "eval.passkey.lengths") -> None:
    """Before any work: each length holds a prompt, and (for a model whose positions are a fixed
    table, not rotary) the prompt and its answer fit the table."""
    extra = len(_ids(tokenizer, " " + "9" * cfg.digits)) + 2
    for n in cfg.lengths:
        try:
            passkey_prompt(tokenizer, n, 0.5, "1" * cfg.digits)
        except CptError as e:
            raise CptError(f"{where}: {e}") from None
        if positions is not None and n + extra > positions:
            raise CptError(f"{where}: {n} tokens and a {extra}-token answer do not fit the model's {positions} "
                           "positions (a learned table, not rotary); use lengths up to "
                           f"{positions - extra}")


def passkey_accuracy(model, tokenizer, cfg: PasskeyCfg, device,
                     autocast=contextlib.nullcontext) -> dict[str, dict[str, float]]:
    """{length: {depth: share of trials whose greedy answer starts with the passkey}}."""
    out: dict[str, dict[str, float]] = {}
    new_tokens = len(_ids(tokenizer, " " + "9" * cfg.digits)) + 2
    with evaluating(model):
        for length in cfg.lengths:
            row = {}
            for depth in cfg.depths:
                hits = 0
                for trial in range(cfg.trials):
                    key = _key(cfg, length, depth, trial)
                    ids = torch.tensor([passkey_prompt(tokenizer, length, depth, key)], device=device)
                    with autocast():
                        answer = greedy(model, ids, new_tokens)
                    found = re.search(r"\d+", tokenizer.decode(answer))
                    hits += found is not None and found.group() == key
                row[f"{depth:g}"] = hits / cfg.trials
            out[str(length)] = row
    return out


def _key(cfg: PasskeyCfg, length: int, depth: float, trial: int) -> str:
    rng = np.random.default_rng([cfg.seed, length, int(round(depth * 1e6)), trial])
    return str(int(rng.integers(10 ** (cfg.digits - 1), 10 ** cfg.digits)))


def format_table(acc: dict[str, dict[str, float]]) -> str:
    depths = list(next(iter(acc.values())))
    lines = ["| length | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---" * (len(depths) + 1) + "|"]
    for length, row in acc.items():
        lines.append(f"| {int(length):,} | " + " | ".join(f"{row[d]:.2f}" for d in depths) + " |")
    return "\n".join(lines)
