"""Downstream tasks from local files, fixed for the whole plan (`evals:`):

- `cloze` (LAMBADA-style `{context, continuation}`): right when greedy decoding after the context
  gives every token of the continuation;
- `choice` (`{question, choices, answer}`, HellaSwag/ARC/MMLU-style): the choice with the highest
  log-likelihood after the question (`acc`), and per byte of the choice (`acc_norm`);
- `generate` (GSM8K-style `{question, answer}`, the answer ending in `#### <number>`): few-shot
  greedy generation scored by exact match (eval/generate.py); the file's first `shots` items are
  the examples, the rest are scored;
- `perplexity` (a text file, or JSONL with `text`): bits per byte, comparable across tokenizers.

Each task gives one main score (`SCORE`): accuracy, exact match, or bits per byte (lower is
better). Log-likelihoods are batched and shared out across ranks (eval/scoring.py).
`backend: lm-eval` runs the same file through lm-evaluation-harness instead (eval/harness.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..config import Strict
from ..data.sources import jsonl_records
from ..errors import CptError
from .generate import exact_match, gold
from .harness import harness_scores
from .mode import evaluating
from .scoring import encode, encode_pair, prefix, score

SCORE = {"cloze": "acc", "choice": "acc", "generate": "exact_match", "perplexity": "bits_per_byte"}


def main_score(scores: dict[str, float]) -> float:
    """A task's main score from its record (the record does not name its kind)."""
    return next(scores[k] for k in ("acc", "exact_match", "bits_per_byte") if k in scores)


FIELDS = {"cloze": ("context", "continuation"), "choice": ("question", "choices", "answer"),
          "generate": ("question", "answer")}


class TaskCfg(Strict):
    kind: Literal["cloze", "choice", "generate", "perplexity"]
    path: Path
    limit: int | None = Field(None, gt=0, le=10**6)  # score the first `limit` items (after the shots)
    shots: int = Field(5, ge=0, le=64)  # generate: solved examples before each question
    max_new_tokens: int = Field(256, gt=0, le=8192)  # generate: the longest answer
    backend: Literal["cpt", "lm-eval"] = "cpt"  # lm-eval: lm-evaluation-harness scores it (pip install lm_eval)

    @model_validator(mode="after")
    def _known_fields(self):
        if self.kind != "generate" and ("shots" in self.model_fields_set or "max_new_tokens" in self.model_fields_set):
            raise ValueError(f"`shots` and `max_new_tokens` are for kind: generate, not {self.kind}")
        return self


def load_items(name: str, cfg: TaskCfg, window: int | None = None) -> list:
    """The task's items, each checked: a missing field or an answer out of range names its line.
    `window`: the tokens a forward takes (a generation's prompt must have room in it)."""
    if window is not None and cfg.kind == "generate" and cfg.max_new_tokens > window // 2:
        raise CptError(f"evals.{name}.max_new_tokens: {cfg.max_new_tokens} leaves the prompt too little of the "
                       f"{window}-token window (the longest seq_len); use at most {window // 2}")
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
            bad = [f for f in need if f not in ("answer", "choices") and not (isinstance(item[f], str) and item[f])]
            if bad or (cfg.kind == "generate" and not isinstance(item["answer"], str)):
                raise CptError(f"{where}: `{(bad or ['answer'])[0]}` must be a non-empty string")
            if cfg.kind == "choice" and isinstance(item["choices"], list) and \
                    not all(isinstance(c, str) and c for c in item["choices"]):
                raise CptError(f"{where}: `choices` must be a list of non-empty strings")
            if cfg.kind == "choice":
                a, choices = item["answer"], item["choices"]
                if not isinstance(choices, list) or len(choices) < 2:
                    raise CptError(f"{where}: `choices` must be a list of at least two strings")
                if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < len(choices):
                    raise CptError(f"{where}: `answer` {a!r} is not an index into its {len(choices)} choices")
            if cfg.kind == "generate" and gold(str(item["answer"])) is None:
                raise CptError(f"{where}: `answer` does not end in `#### <number>` (the GSM8K format)")
            items.append(item if cfg.kind != "perplexity" else item["text"])
            if cfg.limit and len(items) == cfg.limit + (cfg.shots if cfg.kind == "generate" else 0):
                break
    except CptError as e:
        raise CptError(f"evals.{name}: {e}") from None
    scored = len(items) - (cfg.shots if cfg.kind == "generate" else 0)
    if scored < 1:
        raise CptError(f"evals.{name}: {cfg.path}: {len(items)} items, none left to score"
                       + (f" after the {cfg.shots} shots" if cfg.kind == "generate" else ""))
    return items


def run_task(model, tokenizer, cfg: TaskCfg, items: list, window: int, batch: int, device, autocast,
             dist) -> dict[str, float]:
    with evaluating(model), autocast():
        if cfg.backend == "lm-eval":
            return harness_scores(model, tokenizer, cfg, items, window, batch, device)
        if cfg.kind == "generate":
            return exact_match(model, tokenizer, items[:cfg.shots], items[cfg.shots:], window, cfg.max_new_tokens,
                               device, dist)
        if cfg.kind == "perplexity":
            return {"bits_per_byte": bits_per_byte(model, tokenizer, items, window, batch, device, dist)}
        if cfg.kind == "cloze":
            pairs = [encode_pair(tokenizer, it["context"], it["continuation"]) for it in items]
            hits = [g for _, g in score(model, [(c + t, len(c)) for c, t in pairs], window, batch, device, dist)]
            return {"acc": sum(hits) / len(hits)}
        return choice_accuracy(model, tokenizer, items, window, batch, device, dist)


def choice_accuracy(model, tokenizer, items: list[dict], window: int, batch: int, device, dist) -> dict[str, float]:
    """The choice with the highest log-likelihood after the question (`acc`), and per byte of the
    choice (`acc_norm`), all choices of all items in one batched pass."""
    spans, pairs = [], []
    for it in items:
        spans.append((len(pairs), len(it["choices"])))
        pairs += [encode_pair(tokenizer, it["question"], " " + str(c).lstrip()) for c in it["choices"]]
    lps = [lp for lp, _ in score(model, [(c + t, len(c)) for c, t in pairs], window, batch, device, dist)]
    acc = norm = 0
    for it, (at, k) in zip(items, spans):
        mine = lps[at:at + k]
        per_byte = [lp / max(1, len(str(c).encode("utf-8"))) for lp, c in zip(mine, it["choices"])]
        acc += max(range(k), key=mine.__getitem__) == it["answer"]
        norm += max(range(k), key=per_byte.__getitem__) == it["answer"]
    return {"acc": acc / len(items), "acc_norm": norm / len(items)}


def bits_per_byte(model, tokenizer, texts: list[str], window: int, batch: int, device, dist) -> float:
    """Summed next-token loss over the texts in bits, per UTF-8 byte of the text. A text longer
    than the window goes in rolling windows: each predicts the tokens after the last one's, with
    the tokens before them as context, up to the window (every token but the first window's gets
    a full window of context)."""
    requests = []
    for text in texts:
        ids, at = prefix(tokenizer) + encode(tokenizer, text), 1
        while at < len(ids):
            end = min(at + window - 1, len(ids))
            start = max(0, end - window)
            requests.append((ids[start:end], at - start))
            at = end
    nats = -sum(lp for lp, _ in score(model, requests, window, batch, device, dist))
    return nats / math.log(2) / max(1, sum(len(t.encode("utf-8")) for t in texts))
