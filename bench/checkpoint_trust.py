"""What verified, code-free checkpoints cost: cpt's save and load against plain DCP, side by side.

cpt's save = the finite check on weights and moments + `dcp.save` + meta.json + fsync + the
SHA-256 manifest + the rename; asynchronous (`checkpoint: {async: true}`), the time training is
blocked (the copy to CPU memory) and the time until the checkpoint is sealed. Its load = checksum verification + the restricted metadata reader
+ `dcp.load` with weights-only byte items. The baseline: `dcp.save` / `dcp.load` with DCP's own
reader and planner, on the same model and optimizer state. Rounds alternate so machine noise hits
both alike; we report the ratio of medians.

    .venv/bin/python bench/checkpoint_trust.py [--hidden 1024] [--layers 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from cptkit.checkpoint.manager import CheckpointManager
from cptkit.recipe import OptimizerCfg
from cptkit.train.step import build_optimizer, train_step


def model_and_optimizer(hidden: int, layers: int):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32_000, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    opt = build_optimizer(model, OptimizerCfg(lr=1e-4))
    train_step(model, opt, torch.randint(0, 32_000, (1, 1, 16)), 1e-4, 1.0)  # moments exist
    return model, opt


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    model, opt = model_and_optimizer(args.hidden, args.layers)
    params = sum(p.numel() for p in model.parameters())
    root = Path(tempfile.mkdtemp(prefix="cpt-bench-ckpt-"))
    ckpts = CheckpointManager(root / "cpt")
    background = CheckpointManager(root / "async", asynchronous=True)  # `checkpoint: {async: true}`
    times = {k: [] for k in ("plain save", "cpt save", "plain load", "cpt load", "cpt load, no checksums",
                             "async blocked", "async sealed")}
    try:
        for r in range(args.rounds):
            plain = root / f"plain-{r}"

            def plain_save():
                m, o = get_state_dict(model, opt)
                dcp.save({"model": m, "optim": o, "rng": torch.get_rng_state()}, checkpoint_id=str(plain))

            def plain_load():
                m, o = get_state_dict(model, opt)
                dcp.load({"model": m, "optim": o, "rng": torch.get_rng_state()}, checkpoint_id=str(plain))

            times["plain save"].append(timed(plain_save))
            times["cpt save"].append(timed(lambda: ckpts.save(f"c{r}", model, opt, {"seq": r})))
            t0 = time.perf_counter()
            background.save(f"c{r}", model, opt, {"seq": r})
            times["async blocked"].append(time.perf_counter() - t0)  # what training waits for
            background.wait()
            times["async sealed"].append(time.perf_counter() - t0)
            times["plain load"].append(timed(plain_load))
            times["cpt load"].append(timed(lambda: CheckpointManager.load(root / "cpt" / f"c{r}", model, opt)))
            times["cpt load, no checksums"].append(  # cpt's load path (optimizer reset, safe reader) minus hashing
                timed(lambda: CheckpointManager.load(root / "cpt" / f"c{r}", model, opt, verified=True)))
        size = sum(f.stat().st_size for f in (root / "cpt" / "c0").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {params / 1e6:.0f}M parameters; checkpoint {size / 2**20:.0f} MiB; {args.rounds} rounds, medians")
    for what in ("save", "load"):
        base, ours = med[f"plain {what}"], med[f"cpt {what}"]
        print(f"{what}: plain DCP {base:.2f} s, cpt {ours:.2f} s, ratio {ours / base:.2f}")
    print(f"async save: training blocked {med['async blocked']:.2f} s ({med['async blocked'] / med['cpt save']:.2f} of "
          f"cpt's save), sealed after {med['async sealed']:.2f} s")
    print(f"load without the checksum pass: {med['cpt load, no checksums']:.2f} s "
          f"(ratio {med['cpt load, no checksums'] / med['plain load']:.2f})")


if __name__ == "__main__":
    main()
