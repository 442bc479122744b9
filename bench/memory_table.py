"""Memory per GPU for full-AdamW continual pre-training under FSDP2 (a worked estimate, not a
measurement): Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B shapes on 1, 8 and 64 GPUs, with
`mixed_precision: true`, `activation_checkpointing: full`, micro_batch 1 at seq 4096.

Per GPU, in GiB:
- states: fp32 parameters, fp32 gradients and AdamW's two fp32 moments, 16 bytes a parameter,
  sharded over the GPUs (FSDP2 shards all four);
- gathered: the bf16 weights of the blocks gathered at once (the one computing and the one
  prefetched: 2 blocks; the root's embedding and head stay gathered through forward and backward).
  One process is not wrapped by FSDP2; autocast's bf16 copies of the weights take that place;
- activations: with full checkpointing, each block's bf16 input is kept (L x T x d x 2 bytes),
  plus one block's activations while it is recomputed (per token: the norm outputs, q/k/v,
  attention and output projections, the MLP's gate, up, their product and down, bf16);
- logits: T x V in bf16 and their fp32 upcast for the loss, and the gradient of each.
A caching-allocator overhead of about 10% and NCCL buffers (a few hundred MiB) come on top.

    python bench/memory_table.py
"""

from __future__ import annotations

GIB = 2**30
MODELS = {  # name: (layers, d_model, ffn, kv dim, vocab, tied)
    "1B (Llama-3.2-1B)": (16, 2048, 8192, 512, 128256, True),
    "3B (Llama-3.2-3B)": (28, 3072, 8192, 1024, 128256, True),
    "8B (Llama-3.1-8B)": (32, 4096, 14336, 1024, 128256, False),
}


def params(layers, d, ffn, kv, vocab, tied) -> tuple[int, int, int]:
    """(all parameters, one block's, the embedding and head's)"""
    block = d * d * 2 + d * kv * 2 + 3 * d * ffn + 2 * d
    embed = vocab * d * (1 if tied else 2) + d
    return layers * block + embed, block, embed


def per_gpu(shape, gpus: int, seq: int = 4096, micro: int = 1) -> dict[str, float]:
    layers, d, ffn, kv, vocab, tied = shape
    total, block, embed = params(*shape)
    t = seq * micro
    states = 16 * total / gpus
    # one process is not wrapped: autocast keeps a bf16 copy of every weight through the step
    gathered = 2 * (2 * block + embed) if gpus > 1 else 2 * total
    kept = layers * t * d * 2
    recompute = t * (4 * d + 2 * kv + 4 * ffn) * 2
    logits = t * vocab * (2 + 4) * 2
    parts = {"states": states, "gathered": gathered, "activations": kept + recompute, "logits": logits}
    return {k: v / GIB for k, v in parts.items()} | {"total": sum(parts.values()) / GIB}


def main() -> None:
    print("| model | parameters | 1 GPU | 8 GPUs | 64 GPUs |")
    print("|---|---|---|---|---|")
    for name, shape in MODELS.items():
        cells = []
        for g in (1, 8, 64):
            m = per_gpu(shape, g)
            cells.append(f"{m['total']:.1f} ({m['states']:.1f} states)")
        print(f"| {name} | {params(*shape)[0] / 1e9:.2f} B | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
