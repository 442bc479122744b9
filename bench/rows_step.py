"""Training only new embedding rows: cpt's row parameter against the gradient-mask hook of EEVE's
model card (the whole matrix trains, a hook zeroes the old rows' gradient).

Same model (a Llama with a SmolLM2-sized vocabulary: 49,152 old + 1,000 new tokens, tied, two small
layers so that the embedding dominates as in a real vocabulary extension), same batch, same threads;
the rest of the model frozen in both. Rounds alternate which runs first; we report the ratio of
median step times and the optimizer state each holds. The mask baseline is also not bit-exact: its
AdamW weight decay moves the "frozen" rows (counted below).

    .venv/bin/python bench/rows_step.py [--steps 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cptkit.model.trainable import set_trainable, train_rows
from cptkit.recipe import OptimizerCfg
from cptkit.train.step import build_optimizer, train_step

OLD, NEW = 49_152, 1_000


def model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=OLD + NEW, hidden_size=256, intermediate_size=688,
                                        num_hidden_layers=2, num_attention_heads=4, tie_word_embeddings=True))


def ours():
    m = model()
    opt = build_optimizer(m, OptimizerCfg(weight_decay=0.1))
    set_trainable(m, ["new_input_rows"])
    train_rows(m, opt, ["new_input_rows"], list(range(OLD, OLD + NEW)))
    return m, opt


def masked():
    m = model()
    opt = build_optimizer(m, OptimizerCfg(weight_decay=0.1))
    set_trainable(m, ["input_embeddings"])
    w = m.get_input_embeddings().weight

    def zero_old(g):
        g = g.clone()
        g[:OLD] = 0
        return g

    w.register_hook(zero_old)
    return m, opt


def steps(m, opt, tokens, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        train_step(m, opt, tokens, 1e-3, 1.0)
    return (time.perf_counter() - t0) / n


def state_mb(opt) -> float:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if torch.is_tensor(t)) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, OLD + NEW, (2, 4, 256), generator=gen)  # 2 x 4 x 256 = 2,048 tokens a step
    a, b = ours(), masked()
    before = b[0].get_input_embeddings().weight[:OLD].detach().clone()
    steps(*a, tokens, 2), steps(*b, tokens, 2)  # warm-up
    t_ours, t_mask = [], []
    for r in range(args.rounds):
        pair = [(t_ours, a), (t_mask, b)][:: 1 if r % 2 == 0 else -1]
        for out, (m, opt) in pair:
            out.append(steps(m, opt, tokens, args.steps))
    moved = int((b[0].get_input_embeddings().weight[:OLD] != before).any(1).sum())
    o, t = statistics.median(t_ours), statistics.median(t_mask)
    print(f"threads={torch.get_num_threads()} vocab {OLD:,}+{NEW:,} x 256, 2,048 tokens/step, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"gradient mask (EEVE card): {t * 1e3:7.1f} ms/step, optimizer state {state_mb(b[1]):6.1f} MiB, "
          f"old rows moved by weight decay: {moved:,} of {OLD:,}")
    print(f"cpt rows                 : {o * 1e3:7.1f} ms/step, optimizer state {state_mb(a[1]):6.1f} MiB")
    print(f"ratio (cpt / mask)       : {o / t:.3f}")


if __name__ == "__main__":
    main()
