"""Few-shot generation scored by exact match (GSM8K-style): `{question, answer}` items whose
answer ends in `#### <number>`.

The prompt is `shots` solved examples, then the question, each as `Question: ...\\nAnswer: ...`
and separated by a blank line (the format lm-evaluation-harness's gsm8k uses). Greedy decoding
stops at a blank line or a new `Question:`. `exact_match` takes the number after `####` in the
generation; `exact_match_flexible` the last number in it (a model that solves the problem without
the marker). Numbers compare without commas, `$` and a trailing period.
"""

from __future__ import annotations

import re

import torch

from .scoring import encode, greedy, prefix

STOPS = ("\n\n", "Question:")
STRICT = re.compile(r"#### (-?[0-9.,$]+)")
NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")


def normalise(number: str) -> str:
    return number.replace(",", "").replace("$", "").rstrip(".")


def gold(answer: str) -> str | None:
    found = STRICT.search(answer)
    return normalise(found.group(1)) if found else None


def extract(text: str) -> tuple[str | None, str | None]:
    """(the number after `####`, the last number), either None when absent."""
    strict, numbers = STRICT.search(text), NUMBER.findall(text)
    return (normalise(strict.group(1)) if strict else None), (normalise(numbers[-1]) if numbers else None)


def shot(item: dict, solved: bool) -> str:
    return f"Question: {item['question']}\nAnswer:" + (f" {item['answer']}" if solved else "")


def prompt_ids(tokenizer, shots: list[dict], item: dict, room: int) -> list[int]:
    """The prompt's ids, with whole examples dropped from the front until it fits in `room` tokens
    (then, as a last resort, its oldest tokens)."""
    for k in range(len(shots) + 1):
        text = "\n\n".join([shot(s, True) for s in shots[k:]] + [shot(item, False)])
        ids = prefix(tokenizer) + encode(tokenizer, text)
        if len(ids) <= room:
            return ids
    return ids[-max(room, 1):]


def exact_match(model, tokenizer, shots: list[dict], items: list[dict], window: int, max_new: int,
                device, dist) -> dict[str, float]:
    """Greedy answers to this rank's share of the items (r, r + world, ...), summed over ranks."""
    def stopped(out: list[int]) -> bool:
        text = tokenizer.decode(out)
        return any(s in text for s in STOPS) or (out and out[-1] == tokenizer.eos_token_id)

    hits = torch.zeros(2, dtype=torch.float64)
    per_rank = -(-len(items) // dist.world)
    for k in range(per_rank):  # every rank decodes the same number of prompts (FSDP2: same forwards)
        i = dist.rank + k * dist.world
        item = items[min(i, len(items) - 1)]
        ids = prompt_ids(tokenizer, shots, item, window - max_new)
        text = tokenizer.decode(greedy(model, torch.tensor([ids], device=device), max_new, stopped, dist))
        for stop in STOPS:
            text = text.split(stop)[0]
        if i < len(items):
            want = gold(item["answer"])
            hits += torch.tensor([float(got == want) for got in extract(text)], dtype=torch.float64)
    hits = dist.sum_tensor(hits, device)
    return {"exact_match": float(hits[0]) / len(items), "exact_match_flexible": float(hits[1]) / len(items)}
