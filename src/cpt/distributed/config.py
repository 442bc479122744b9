"""The recipe's `distributed:` section (owned by distributed/fsdp.py)."""

from __future__ import annotations

from typing import Literal

from ..config import Strict


class DistributedCfg(Strict):
    """How the model is spread over ranks under `torchrun` (ignored by a single process).

    `mixed_precision`: on CUDA, parameters and activations in bf16, gradients reduced in fp32
    (FSDP2's MixedPrecisionPolicy); fp32 on CPU. `activation_checkpointing: full`: recompute each
    decoder block's activations in backward (any world size), trading compute for memory.
    `reshard_after_forward`: free each block's gathered parameters after its forward (less
    memory, one more all-gather in backward). Per-block `compile` and selective checkpointing are
    not here yet."""

    mixed_precision: bool = True
    activation_checkpointing: Literal["none", "full"] = "none"
    reshard_after_forward: bool = True
