"""cpt's CPU training step with `distributed: {compile: true}` against the Hugging Face Trainer:
the same model (same weights), the same batch shape, AdamW, clipping at 1.0, the same threads.

cpt: `train_step` on batches from the stage's exact mixture, decoder blocks compiled
(shard_model with compile on; one process). The baseline: `transformers.Trainer` (its default
settings: no compile) on a tensor dataset of the same shape, timed per optimizer step by a
callback. cpt without compile runs too, for reference. The programs alternate in rounds so that
machine noise hits all alike; we report medians of per-step times and their ratios.

Needs `accelerate` (the Trainer's own requirement): `pip install -e .[bench]`.

    .venv/bin/python bench/cpu_compile.py [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
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
from cptkit.train.step import train_step

# Llama shapes built from scratch (no download, no shared data needed): the stories260K
# architecture (the model cpt's CPU users train; overhead and elementwise work weigh most), and a
# wider one of about 6M parameters (matrix products weigh most)
MODELS = {
    "stories260K": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
                    "num_key_value_heads": 4, "head_dim": 8, "tie_word_embeddings": True},
    "llama-6M": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8,
                 "num_key_value_heads": 4, "tie_word_embeddings": True},
}
VOCAB = {"stories260K": 512, "llama-6M": 2048}


def make_run(root: Path, model: str, seq_len: int, micro: int, accum: int, compile: bool):
    if not (root / "tok").exists():
        write_corpora(root / "corpora", chars_per_corpus=400_000)
        train_tokenizer(iter_texts(root / "corpora"), root / "tok", vocab_size=VOCAB[model])
    sources = {n: {**s, "paths": [f"corpora/{p}" for p in s["paths"]]} for n, s in CORPORA.items()}
    recipe = {"model": {"init": MODELS[model]}, "tokenizer": "tok", "seq_len": seq_len, "micro_batch": micro,
              "batch_tokens": seq_len * micro * accum, "sources": sources, "seed": 0,
              "validation": {"tokens_per_source": seq_len}, "distributed": {"compile": compile},
              "optimizer": {"lr": 1e-3, "weight_decay": 0.1, "grad_clip": 1.0},
              "stages": [{"name": "s", "tokens": 10**9, "mix": {"english": 0.5, "code": 0.3, "traces": 0.2}}]}
    path = root / f"recipe-{compile}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return build_run(load_recipe(path), path.read_text(), root / f"run-{compile}", resume=False)


class Cpt:
    def __init__(self, run):
        self.run, self.stage, self.k = run, plan_stage(run, 0), 0

    def steps(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = self.run
            train_step(r.model, r.optimizer, r.local(batch(r, self.stage, self.k), r.recipe.stage_micro(self.stage.cfg)),
                       1e-3, 1.0, r.autocast, r.dist, self.stage.inputs)
            times.append(time.perf_counter() - t0)
            self.k += 1
        return times


class HFTrainer:
    """The Trainer on the same architecture and weights; each round continues training."""

    def __init__(self, model, tokens: torch.Tensor, micro: int, accum: int, out: Path):
        from transformers import Trainer, TrainerCallback, TrainingArguments

        times: list[float] = []
        self.times = times

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter() - self.t0)

        class Samples(torch.utils.data.Dataset):
            def __len__(self):
                return len(tokens)

            def __getitem__(self, i):
                return {"input_ids": tokens[i], "labels": tokens[i]}

        self.make = lambda steps: Trainer(
            model=model, train_dataset=Samples(), callbacks=[Clock()],
            args=TrainingArguments(output_dir=str(out), per_device_train_batch_size=micro,
                                   gradient_accumulation_steps=accum, max_steps=steps, learning_rate=1e-3,
                                   lr_scheduler_type="constant", weight_decay=0.1, max_grad_norm=1.0,
                                   optim="adamw_torch", logging_strategy="no", save_strategy="no",
                                   report_to="none", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
                                   seed=0))

    def steps(self, n: int) -> list[float]:
        del self.times[:]
        self.make(n).train()
        return list(self.times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="stories260K")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and program")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        compiled = make_run(root, args.model, args.seq_len, args.micro_batch, args.accum, compile=True)
        eager = make_run(root, args.model, args.seq_len, args.micro_batch, args.accum, compile=False)
        baseline = type(eager.model)(eager.model.config)
        baseline.load_state_dict(eager.model.state_dict())
        samples = args.micro_batch * args.accum * (args.steps + 2)
        tokens = torch.randint(0, len(eager.tokenizer), (samples, args.seq_len), generator=torch.Generator().manual_seed(0))
        programs = {"cpt compile": Cpt(compiled), "cpt eager": Cpt(eager),
                    "HF Trainer": HFTrainer(baseline, tokens, args.micro_batch, args.accum, root / "hf")}
        t0 = time.perf_counter()
        for p in programs.values():  # warm-up: compilation, allocator, the Trainer's first step
            p.steps(2)
        warm = time.perf_counter() - t0
        times: dict[str, list[float]] = {n: [] for n in programs}
        for _ in range(args.rounds):
            for name, p in programs.items():
                times[name] += p.steps(args.steps)
    med = {n: statistics.median(t) for n, t in times.items()}
    step_tokens = args.seq_len * args.micro_batch * args.accum
    base = med["HF Trainer"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model} {MODELS[args.model]}, "
          f"seq {args.seq_len} x micro {args.micro_batch} x accum {args.accum}; warm-up {warm:.0f} s")
    print(f"{'program':<14}{'s/step':>10}{'tokens/s':>12}{'speed vs Trainer':>18}")
    for name, m in med.items():
        print(f"{name:<14}{m:>10.4f}{step_tokens / m:>12.0f}{base / m:>17.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "median_s": med, "speedup_vs_trainer": {n: base / m for n, m in med.items()}}))


if __name__ == "__main__":
    main()
