"""FSDP2 (`fully_shard`) on every decoder block and on the root, for any Hugging Face causal LM
that keeps its blocks in one `nn.ModuleList` (Llama, Mistral, Qwen2, SmolLM2, GPT-NeoX, ...)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CptError
from .config import DistributedCfg
from .env import Dist


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks: `model.<base>.layers` (Llama family), `.h` (GPT-2), `.layers`
    of GPT-NeoX; else the largest ModuleList of identical blocks."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    for name in ("layers", "h", "blocks"):
        found = getattr(base, name, None)
        if isinstance(found, nn.ModuleList) and len(found):
            return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)
             and len({type(b) for b in m}) == 1]
    if not lists:
        raise CptError(f"model: {type(model).__name__} has no list of decoder layers; cpt shards models whose "
                       "blocks sit in one nn.ModuleList (Llama, Mistral, Qwen2, GPT-NeoX style)")
    return max(lists, key=len)


def shard_model(model: nn.Module, d: Dist, cfg: DistributedCfg, device: torch.device) -> nn.Module:
    """Shard `model` in place over all ranks (world size 1: untouched)."""
    if d.world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (d.world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if cfg.mixed_precision and device.type == "cuda" else MixedPrecisionPolicy()
    layers = decoder_layers(model)
    for i, block in enumerate(layers):
        # the last block's parameters are needed again at once by backward: keep them gathered
        reshard = cfg.reshard_after_forward and i < len(layers) - 1
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    return model
