"""The recipe's `distributed:` section (owned by distributed/fsdp.py)."""

from __future__ import annotations

from typing import Literal

from ..config import Strict


class DistributedCfg(Strict):
    """How the model is spread over ranks under `torchrun` (ignored by a single process).

    `mixed_precision`: on CUDA, parameters and activations in bf16, gradients reduced in fp32
    (FSDP2's MixedPrecisionPolicy); fp32 on CPU.
    `activation_checkpointing` (any world size) trades compute for memory: `full` recomputes each
    decoder block in backward and keeps only its input; `selective` keeps the outputs of the
    matrix products and attention and recomputes the cheap elementwise work (norms, activations,
    RoPE) between them.
    `compile`: torch.compile each decoder block (not the whole model: the FSDP2 hooks between
    blocks stay outside the graphs, and one block's graph serves them all).
    `reshard_after_forward`: free each block's gathered parameters after its forward (less
    memory, one more all-gather in backward)."""

    mixed_precision: bool = True
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    compile: bool = False
    reshard_after_forward: bool = True
