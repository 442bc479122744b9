"""Training-step overhead of cpt against a plain PyTorch loop: same model, batch, threads.

cpt's step: the batch comes from the stage's exact mixture (packed samples gathered from the
memory-mapped Megatron shards), then `train_step` (grad accumulation, clipping, AdamW, LR set).
The baseline: a pre-built tensor of the same shape and the textbook loop. The two run in
alternating rounds so that machine noise hits both alike; we report the ratio of medians.

    .venv/bin/python bench/step_overhead.py [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from cptkit.build import build_run
from cptkit.demo.corpora import CORPORA, iter_texts, train_tokenizer, write_corpora
from cptkit.recipe import load_recipe
from cptkit.train.stages import batch, plan_stage
from cptkit.train.step import build_optimizer, train_step

# the stories260K architecture, from scratch (no download, no shared data needed)
MODEL = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
         "num_key_value_heads": 4, "head_dim": 8, "tie_word_embeddings": True}


def make_run(root: Path, seq_len: int, micro: int, accum: int):
    write_corpora(root / "corpora", chars_per_corpus=400_000)
    train_tokenizer(iter_texts(root / "corpora"), root / "tok", vocab_size=512)
    sources = {n: {**s, "paths": [f"corpora/{p}" for p in s["paths"]]} for n, s in CORPORA.items()}
    recipe = {"model": {"init": MODEL}, "tokenizer": "tok", "seq_len": seq_len, "micro_batch": micro,
              "batch_tokens": seq_len * micro * accum, "sources": sources,
              "validation": {"tokens_per_source": seq_len},
              "stages": [{"name": "s", "tokens": 10**9, "mix": {"english": 0.5, "code": 0.3, "traces": 0.2}}]}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return build_run(load_recipe(path), path.read_text(), root / "run", resume=False)


def cpt_steps(run, stage, start: int, steps: int) -> float:
    t0 = time.perf_counter()
    for k in range(start, start + steps):
        train_step(run.model, run.optimizer, run.local(batch(run, stage, k), run.recipe.stage_micro(stage.cfg)), 1e-3, 1.0,
                   run.autocast, run.dist, stage.inputs)
    return (time.perf_counter() - t0) / steps


def plain_steps(model, opt, tokens: torch.Tensor, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        for mb in tokens:
            loss = model(input_ids=mb, labels=mb).loss / len(tokens)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--accum", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.seq_len, args.micro_batch, args.accum)
        stage = plan_stage(run, 0)
        baseline = type(run.model)(run.model.config)
        baseline.load_state_dict(run.model.state_dict())
        baseline.train()
        opt = build_optimizer(baseline, run.recipe.optimizer)
        tokens = torch.randint(0, len(run.tokenizer), (args.accum, args.micro_batch, args.seq_len))
        cpt_steps(run, stage, 0, 2), plain_steps(baseline, opt, tokens, 2)  # warm-up
        ours, theirs = [], []
        for r in range(args.rounds):  # alternate which goes first, so neither always runs warm
            if r % 2:
                theirs.append(plain_steps(baseline, opt, tokens, args.steps))
            ours.append(cpt_steps(run, stage, 2 + r * args.steps, args.steps))
            if not r % 2:
                theirs.append(plain_steps(baseline, opt, tokens, args.steps))
    o, t = statistics.median(ours), statistics.median(theirs)
    tok = args.seq_len * args.micro_batch * args.accum
    print(f"threads={torch.get_num_threads()} batch={args.accum}x{args.micro_batch}x{args.seq_len} "
          f"({tok} tokens/step), {args.rounds} rounds x {args.steps} steps")
    print(f"plain PyTorch loop : {t * 1e3:8.1f} ms/step  {tok / t:10,.0f} tokens/s")
    print(f"cpt step           : {o * 1e3:8.1f} ms/step  {tok / o:10,.0f} tokens/s")
    print(f"overhead           : {100 * (o / t - 1):+.1f}%  (ratio {o / t:.3f})")


if __name__ == "__main__":
    main()
