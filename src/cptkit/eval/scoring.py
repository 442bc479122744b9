"""Log-likelihood of token spans, batched and shared out across ranks; greedy decoding.

A request is `(tokens, first)`: score `tokens[first:]`, each token given all before it. Requests
longer than the window lose their oldest tokens (the scored span is kept). Rank r scores requests
r, r + world, ...; the ranks then add their results up. Under FSDP2 every forward is a collective,
so every rank runs the same number of forwards (a rank with fewer requests runs one-token ones).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F


def prefix(tokenizer) -> list[int]:
    """What every scored text starts with: BOS when the tokenizer has one."""
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as they are tokenized together: the continuation's ids are the
    whole text's beyond the context's (a continuation tokenized alone may start with a word-start
    marker or merge differently). Trailing spaces of the context move to the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = prefix(tokenizer) + encode(tokenizer, context)
    whole = prefix(tokenizer) + encode(tokenizer, context + continuation)
    if whole[:len(ctx)] != ctx:  # the join changed the context's last token: split at the longest shared run
        n = next(i for i, (a, b) in enumerate(zip(ctx, whole)) if a != b)
        ctx = whole[:n]
    return ctx, whole[len(ctx):]


def _fit(tokens: list[int], first: int, window: int) -> tuple[list[int], int]:
    cut = max(0, len(tokens) - window)
    return tokens[cut:], max(1, first - cut)


@torch.no_grad()
def score(model, requests: list[tuple[list[int], int]], window: int, batch: int, device, dist) -> list[tuple[float, bool]]:
    """Per request: (summed log-probability of the scored span in nats, whether greedy decoding
    gives every one of its tokens)."""
    n = len(requests)
    mine = sorted(range(dist.rank, n, dist.world), key=lambda i: -len(requests[i][0]))  # similar lengths together
    out = torch.zeros(n, 2, dtype=torch.float64)
    rounds = math.ceil(math.ceil(n / dist.world) / batch)
    for k in range(rounds):
        chunk = mine[k * batch:(k + 1) * batch]
        if not chunk:  # this rank is done; the others still need it in their forwards
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
            continue
        fitted = [_fit(*requests[i], window) for i in chunk]
        width = max(len(t) for t, _ in fitted)
        ids = torch.tensor([t + [0] * (width - len(t)) for t, _ in fitted], device=device)  # padded on the right:
        logits = model(input_ids=ids).logits  # a causal model's earlier positions never see it
        for row, (i, (tokens, first)) in enumerate(zip(chunk, fitted)):
            pred = logits[row, first - 1:len(tokens) - 1].float()
            target = ids[row, first:len(tokens)]
            logp = F.log_softmax(pred, dim=-1).gather(1, target[:, None])[:, 0]
            out[i, 0], out[i, 1] = float(logp.sum()), float((pred.argmax(-1) == target).all())
    out = dist.sum_tensor(out, device)
    return [(float(lp), bool(g)) for lp, g in out.tolist()]


def _cache_name(model) -> str:
    # transformers 5.2x names the cache `cache`; earlier 5.x and 4.x `past_key_values`
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def greedy(model, ids: torch.Tensor, n: int, done=None, dist=None) -> list[int]:
    """Up to n greedy tokens after `ids` (1, T), with the model's KV cache when it returns one.
    `done(tokens)` ends the decoding early; with several ranks only when it holds on all of them
    (under FSDP2 every rank runs the same forwards). Without `done`: always n tokens."""
    name = _cache_name(model)
    out, past, step, mine = [], None, ids, None  # mine: where this rank's own decoding ended
    for _ in range(n):
        result = model(input_ids=step, use_cache=True, **({name: past} if past is not None else {}))
        nxt = int(result.logits[0, -1].argmax())
        out.append(nxt)
        ids = torch.cat([ids, ids.new_tensor([[nxt]])], dim=1)
        past = getattr(result, "cache", None) or getattr(result, "past_key_values", None)
        step = ids[:, -1:] if past is not None else ids
        if done is not None:
            mine = mine if mine is not None or not done(out) else len(out)
            if dist.all(mine is not None) if dist is not None else mine is not None:
                break
    return out[:mine]  # what the others decode meanwhile is not this prompt's answer
