"""cpt's training step on one GPU against a plain compiled PyTorch loop, and bf16 against fp32.

(a) A ~1B Llama (16 layers, d_model 2048, 32 heads, 8 KV heads, vocab 32K) at seq 4096, random
    weights from a config; (b) a SmolLM2-360M-shaped model at seq 2048. For each:
    - plain: `torch.compile(model)`, bf16 autocast, fused AdamW, clip at 1.0, the textbook loop;
    - cpt: the same weights and batches through `shard_model` (per-block compile, as
      `distributed: {compile: true}`) and `train_step` (cpt's step: loss and gradient norm read
      back every step, non-finite guard, clipping, AdamW), bf16 autocast.
    Reported: tokens/s, MFU (cptkit.train.throughput: 6N + 12LHQT FLOPs per token over the GPU's
    dense bf16 peak), peak memory, and cpt / plain.
(c) 50 steps of cpt's step in bf16 against fp32 on the 360M shape (seq 512) over a learnable
    synthetic sequence (a fixed random successor per token, 10% noise): the largest relative
    loss difference (goal: within 2%).

One process (world size 1: cpt does not wrap the model in FSDP2 then). Finishes in a few minutes
on an H100; `--tiny` runs tiny shapes on whatever device there is (the CPU check of the script).

    PYTHONPATH=src python bench/gpu_step.py [--steps 20] [--json out.json] [--tiny]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cptkit.distributed.config import DistributedCfg
from cptkit.distributed.env import Dist
from cptkit.distributed.fsdp import shard_model
from cptkit.recipe import OptimizerCfg
from cptkit.train.step import autocast_for, build_optimizer, train_step
from cptkit.train.throughput import device_peak_tflops, flops_per_token

SHAPES = {  # name: (config, seq_len, micro_batch)
    "llama-1B": (dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=32000), 4096, 2),
    "smollm2-360M": (dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                          num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True), 2048, 4),
}
TINY = {"llama-1B": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=512), 128, 2),
        "smollm2-360M": (dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                              num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True), 128, 2)}


def build(cfg: dict, device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg, max_position_embeddings=8192)).to(device)
    model.config.use_cache = False
    return model.train()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(step, batches, warmup: int, device) -> float:
    """Seconds per step over the batches after `warmup` of them (compilation, allocator)."""
    for b in batches[:warmup]:
        step(b)
    sync(device)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    sync(device)
    return (time.perf_counter() - t0) / (len(batches) - warmup)


def plain_program(model, device):
    model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")

    def step(batch):
        for mb in batch:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(input_ids=mb, labels=mb).loss / len(batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def cpt_program(model, device, compile: bool = True, autocast=None):
    shard_model(model, Dist(), DistributedCfg(compile=compile), device)
    opt = build_optimizer(model, OptimizerCfg(lr=1e-4, weight_decay=0.1))
    autocast = autocast or autocast_for(device)
    return lambda batch: train_step(model, opt, batch, 1e-4, 1.0, autocast)


def compare(name: str, shape, steps: int, device, peak_tflops) -> dict:
    cfg, seq, micro = shape
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg["vocab_size"], (1, micro, seq), generator=gen).to(device) for _ in range(steps + 3)]
    base = build(cfg, device)
    fpt = flops_per_token(base, seq)
    out = {"shape": {**cfg, "seq_len": seq, "micro_batch": micro}, "params": sum(p.numel() for p in base.parameters())}
    for prog, make in (("plain", plain_program), ("cpt", cpt_program)):
        model = copy.deepcopy(base)
        reset_peak(device)
        seconds = timed(make(model, device), batches, 3, device)
        tps = micro * seq / seconds
        out[prog] = {"s_per_step": seconds, "tokens_per_s": tps, "peak_mem_gib": peak_gib(device),
                     "mfu": tps * fpt / (peak_tflops * 1e12) if peak_tflops else None}
        del model
        print(f"{name} {prog}: {out[prog]}", flush=True)
    del base
    out["cpt_vs_plain"] = out["cpt"]["tokens_per_s"] / out["plain"]["tokens_per_s"]
    return out


def bf16_tracks_fp32(shape, device, steps: int = 50) -> dict:
    """cpt's step in bf16 autocast and in fp32 from the same weights over the same learnable batches."""
    import contextlib

    cfg, _, micro = shape
    seq, vocab = min(512, shape[1]), cfg["vocab_size"]
    gen = torch.Generator().manual_seed(2)
    succ = torch.randperm(vocab, generator=gen)
    batches = []
    for _ in range(steps):
        x = torch.empty(micro, seq, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (micro,), generator=gen)
        for t in range(1, seq):
            noise = torch.rand(micro, generator=gen) < 0.1
            x[:, t] = torch.where(noise, torch.randint(0, vocab, (micro,), generator=gen), succ[x[:, t - 1]])
        batches.append(x[None].to(device))
    losses = {}
    for kind, autocast in (("bf16", autocast_for(device) if device.type == "cuda"
                            else (lambda: torch.autocast("cpu", dtype=torch.bfloat16))),
                           ("fp32", contextlib.nullcontext)):
        model = build(cfg, device)
        opt = build_optimizer(model, OptimizerCfg(lr=1e-3, weight_decay=0.1))
        losses[kind] = [train_step(model, opt, b, 1e-3, 1.0, autocast).loss for b in batches]
        del model, opt
    rel = [abs(a - b) / abs(b) for a, b in zip(losses["bf16"], losses["fp32"])]
    return {"steps": steps, "max_rel_diff": max(rel), "first_loss": losses["fp32"][0], "last_loss_fp32": losses["fp32"][-1],
            "last_loss_bf16": losses["bf16"][-1], "within_2pct": max(rel) <= 0.02}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per program (after 3 warm-up steps)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: check the script on any device")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak when it is not in cpt's table")
    ap.add_argument("--only", choices=sorted(SHAPES), action="append", help="run only these shapes")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = TINY if args.tiny else SHAPES
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = device_peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "peak_tflops": peak}
    print(results, flush=True)
    t0 = time.perf_counter()
    for shape in args.only or list(shapes):
        results[shape] = compare(shape, shapes[shape], args.steps, device, peak)
        if args.json:  # as it goes: a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    results["bf16_vs_fp32"] = bf16_tracks_fp32(shapes["smollm2-360M"], device)
    print("bf16 vs fp32:", results["bf16_vs_fp32"], flush=True)
    results["seconds"] = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    for shape in args.only or list(shapes):
        r = results[shape]
        print(f"{shape}: cpt {r['cpt']['tokens_per_s']:,.0f} tok/s vs plain {r['plain']['tokens_per_s']:,.0f} "
              f"= {r['cpt_vs_plain']:.3f}x; MFU {r['cpt']['mfu']} vs {r['plain']['mfu']}; "
              f"peak GiB {r['cpt']['peak_mem_gib']} vs {r['plain']['peak_mem_gib']}")


if __name__ == "__main__":
    main()
