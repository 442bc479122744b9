"""A ReLoRA stage against full-rank training of the same model: optimizer-state bytes, peak
memory and step time, side by side.

Both programs use cpt's own pieces: the same Llama (random weights, built from a config), the
same batches, `build_optimizer` (AdamW, weight decay on matrices) and `train_step` (clipping at
1.0). Full rank trains everything. ReLoRA puts rank-r adapters on every attention and MLP linear
(`model/relora.py`, PEFT layers), freezing those weights; embeddings and norms train at full rank
(`trainable: [all]` with `relora:`), as in the paper. Each measurement runs in a fresh process
(peak memory is the process's own), the two alternate in rounds so that machine noise hits both
alike, and we report medians and ratios. The time of one merge (fold, re-draw, prune) is
reported too: it happens once per `merge_every_tokens`.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated`; on CPU, the process's peak resident set
(which includes the Python interpreter and libraries, the same for both), with glibc told to give
large blocks back at once (MALLOC_MMAP_THRESHOLD_): otherwise freed temporaries stay resident and
the peak measures the allocator's fragmentation more than the live tensors (with the default,
LoRA's extra temporaries made ReLoRA's peak look 10% *higher* than full rank's). "Resting" is the
resident set between steps: weights, gradients kept, optimizer state.

    .venv/bin/python bench/relora_memory.py [--model llama-30M] [--rank 64] [--steps 6] [--rounds 3]
    python bench/relora_memory.py --model smollm2-360M --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

MODELS = {  # Llama shapes; tied embeddings as in the small models people continue pre-training
    "llama-30M": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8,
                  "num_key_value_heads": 8, "vocab_size": 8192, "tie_word_embeddings": True},
    "smollm2-360M": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
                     "num_key_value_heads": 5, "vocab_size": 49152, "tie_word_embeddings": True},
}


def measure(args) -> dict:
    """One program, in this process: build, train `steps` steps, report."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cptkit.model import relora
    from cptkit.model.relora_cfg import ReLoRACfg
    from cptkit.recipe import OptimizerCfg
    from cptkit.train.step import build_optimizer, train_step

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODELS[args.model])).to(device)
    cfg = OptimizerCfg(lr=1e-3, weight_decay=0.1, grad_clip=1.0)
    opt = build_optimizer(model, cfg)
    layers = []
    if args.variant == "relora":
        rc = ReLoRACfg(rank=args.rank, alpha=2 * args.rank, merge_every_tokens=1)
        layers = relora.wrap(model, rc)
        opt.add_param_group({"params": relora.lora_params(layers), "weight_decay": cfg.weight_decay})
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else None
    gen = torch.Generator().manual_seed(1)
    vocab = MODELS[args.model]["vocab_size"]
    times = []
    for _ in range(args.steps + 1):  # the first step allocates the moments: not timed
        tokens = torch.randint(0, vocab, (1, args.micro, args.seq), generator=gen).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        kw = {"autocast": autocast} if autocast else {}
        train_step(model, opt, tokens, 1e-3, cfg.grad_clip, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    merge_s = None
    if layers:
        t0 = time.perf_counter()
        relora.merge(layers, opt, relora.PruneCfg(), seed=0, merges=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        merge_s = time.perf_counter() - t0
    state = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    resting = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() if device.type == "cpu" else None
    return {"variant": args.variant, "step_s": statistics.median(times[1:]), "optimizer_state_bytes": state,
            "resting_bytes": resting,
            "trainable": trainable, "params": sum(p.numel() for p in model.parameters()), "peak_bytes": peak,
            "merge_s": merge_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="llama-30M")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--variant", choices=["full", "relora"], help=argparse.SUPPRESS)  # one program, in a child
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(measure(args)))
        return
    runs: dict[str, list[dict]] = {"full": [], "relora": []}
    for r in range(args.rounds):
        for variant in (["full", "relora"] if r % 2 == 0 else ["relora", "full"]):
            cmd = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1} {variant}: {runs[variant][-1]}", file=sys.stderr)
    med = {v: {k: statistics.median(x[k] for x in rs) for k in ("step_s", "peak_bytes")} | rs[0]
           for v, rs in runs.items()}
    f, r = med["full"], med["relora"]
    mib = 2 ** 20
    print(f"model {args.model} ({f['params'] / 1e6:.1f}M parameters), {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.micro} x {args.seq} tokens a step; ReLoRA rank {args.rank}")
    print("| | full rank | ReLoRA | ratio |")
    print("|---|---|---|---|")
    print(f"| trainable parameters | {f['trainable'] / 1e6:.2f}M | {r['trainable'] / 1e6:.2f}M | "
          f"{r['trainable'] / f['trainable']:.3f} |")
    print(f"| optimizer state | {f['optimizer_state_bytes'] / mib:.1f} MiB | {r['optimizer_state_bytes'] / mib:.1f} MiB | "
          f"{r['optimizer_state_bytes'] / f['optimizer_state_bytes']:.3f} |")
    print(f"| peak memory | {f['peak_bytes'] / mib:.0f} MiB | {r['peak_bytes'] / mib:.0f} MiB | "
          f"{r['peak_bytes'] / f['peak_bytes']:.3f} |")
    if f["resting_bytes"]:
        print(f"| resting memory (between steps) | {f['resting_bytes'] / mib:.0f} MiB | {r['resting_bytes'] / mib:.0f} MiB | "
              f"{r['resting_bytes'] / f['resting_bytes']:.3f} |")
    print(f"| step time (median) | {f['step_s'] * 1e3:.1f} ms | {r['step_s'] * 1e3:.1f} ms | "
          f"{r['step_s'] / f['step_s']:.3f} |")
    print(f"| one merge (fold, re-draw, prune) | | {r['merge_s'] * 1e3:.1f} ms | |")


if __name__ == "__main__":
    main()
