"""Downstream tasks from local files, fixed for the whole plan (`evals:`), scored by log-likelihood:

- `cloze` (LAMBADA-style `{context, continuation}`): right when greedy decoding after the context
  gives every token of the continuation;
- `choice` (`{question, choices, answer}`, HellaSwag/ARC/MMLU-style): the choice with the highest
  log-likelihood after the question (`acc`), and per byte of the choice (`acc_norm`);
- `perplexity` (a text file, or JSONL with `text`): bits per byte, comparable across tokenizers.

Each task gives one score (`SCORE`): accuracy, or bits per byte (lower is better). Every rank
runs the same forwards (a sharded model gathers its weights in each).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..config import Strict
from ..data.sources import jsonl_records
from ..errors import CptError
from .mode import evaluating

SCORE = {"cloze": "acc", "choice": "acc", "perplexity": "bits_per_byte"}
FIELDS = {"cloze": ("context", "continuation"), "choice": ("question", "choices", "answer")}


class TaskCfg(Strict):
    kind: Literal["cloze", "choice", "perplexity"]
    path: Path
    limit: int | None = Field(None, gt=0, le=10**6)  # the first `limit` items


def load_items(name: str, cfg: TaskCfg) -> list:
    """The task's items, each checked: a missing field or an answer out of range names its line."""
    if not cfg.path.is_file():
        raise CptError(f"evals.{name}: {cfg.path}: file not found")
    if cfg.kind == "perplexity" and cfg.path.suffix.lower() != ".jsonl":
        return [cfg.path.read_text(encoding="utf-8")]
    items, need = [], FIELDS.get(cfg.kind, ("text",))
    try:
        for where, item in jsonl_records(cfg.path, "strict"):  # `path:line`, each a JSON object
            missing = [f for f in need if f not in item]
            if missing:
                raise CptError(f"{where}: no `{missing[0]}` field (a {cfg.kind} item has {', '.join(need)})")
            if cfg.kind == "choice":
                a, choices = item["answer"], item["choices"]
                if not isinstance(choices, list) or len(choices) < 2:
                    raise CptError(f"{where}: `choices` must be a list of at least two strings")
                if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < len(choices):
                    raise CptError(f"{where}: `answer` {a!r} is not an index into its {len(choices)} choices")
            items.append(item if cfg.kind != "perplexity" else item["text"])
            if cfg.limit and len(items) == cfg.limit:
                break
    except CptError as e:
        raise CptError(f"evals.{name}: {e}") from None
    if not items:
        raise CptError(f"{where}: no items")
    return items


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def continuation_logprobs(model, tokenizer, context: str, continuation: str, device) -> tuple[float, bool]:
    """(log p(continuation | context) in nats, whether greedy decoding gives each of its tokens)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ctx, cont = bos + _ids(tokenizer, context), _ids(tokenizer, continuation)
    ids = torch.tensor([ctx + cont], device=device)
    logits = model(input_ids=ids).logits[0, len(ctx) - 1:-1].float()
    target = ids[0, len(ctx):]
    logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
    return float(logp.sum()), bool((logits.argmax(-1) == target).all())


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts: list[str], window: int, device) -> float:
    """Summed next-token loss over the texts (in windows of `window` tokens, each predicting all
    but its first token) in bits, per UTF-8 byte of the text."""
    nats, nbytes = 0.0, 0
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for text in texts:
        ids = bos + _ids(tokenizer, text)
        nbytes += len(text.encode("utf-8"))
        for start in range(0, len(ids) - 1, window - 1):
            chunk = torch.tensor([ids[start:start + window]], device=device)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk).logits[0, :-1].float()
            nats += float(F.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
    return nats / math.log(2) / max(nbytes, 1)


def run_task(model, tokenizer, cfg: TaskCfg, items: list, window: int, device, autocast) -> dict[str, float]:
    with evaluating(model), autocast():
        if cfg.kind == "perplexity":
            return {"bits_per_byte": bits_per_byte(model, tokenizer, items, window, device)}
        if cfg.kind == "cloze":
            hits = [continuation_logprobs(model, tokenizer, it["context"], it["continuation"], device)[1] for it in items]
            return {"acc": sum(hits) / len(hits)}
        acc = norm = 0
        for it in items:
            lps = [continuation_logprobs(model, tokenizer, it["question"], " " + str(c).lstrip(), device)[0]
                   for c in it["choices"]]
            per_byte = [lp / max(1, len(str(c).encode("utf-8"))) for lp, c in zip(lps, it["choices"])]
            acc += max(range(len(lps)), key=lps.__getitem__) == it["answer"]
            norm += max(range(len(lps)), key=per_byte.__getitem__) == it["answer"]
        return {"acc": acc / len(items), "acc_norm": norm / len(items)}
