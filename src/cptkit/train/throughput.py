"""What each step costs: tokens/s per device, MFU, peak memory and the time spent waiting for data.

FLOPs per token follow the PaLM / torchtitan convention: 6·N + 12·L·H·Q·T, N the parameters
outside the embeddings, L layers, H attention heads, Q the head dimension, T the sequence length
(the second term is attention's score and value products, forward and backward). MFU divides the
achieved FLOP/s per device by the device's dense bf16 peak, from the table below or
`--peak-tflops`; on a CPU without `--peak-tflops` it is left out."""

from __future__ import annotations

import resource
from dataclasses import dataclass

import torch

# dense bf16 peak, TFLOP/s (vendor figures, no sparsity), by a part of the device's name
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "B200": 2250.0, "GB200": 2500.0, "A100": 312.0,
               "A800": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "MI300X": 1307.0, "MI250X": 383.0}


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    cfg = model.config
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                  for p in m.parameters()}
    n = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    return 6.0 * n + 12.0 * layers * heads * head_dim * seq_len


def device_peak_tflops(device: torch.device, given: float | None = None) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def peak_memory_gib(device: torch.device) -> float:
    """The device's peak allocated memory (CUDA), or this process's peak resident memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclass(frozen=True)
class Throughput:
    flops_per_token: float
    peak_tflops: float | None
    world: int

    def record(self, step_tokens: int, seconds: float, data_seconds: float, device: torch.device) -> dict:
        per_device = step_tokens / max(seconds, 1e-9) / self.world
        out = {"tokens_per_s_device": per_device, "data_wait_s": data_seconds,
               "peak_mem_gib": peak_memory_gib(device)}
        if self.peak_tflops:
            out["mfu"] = per_device * self.flops_per_token / (self.peak_tflops * 1e12)
        return out
