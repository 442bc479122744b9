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
    """Shard `model` in place over all ranks (world size 1: not wrapped), after turning on
    activation checkpointing when asked (the same recomputation at any world size)."""
    if cfg.activation_checkpointing == "full":
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise CptError(f"distributed.activation_checkpointing: {type(model).__name__} does not support it; "
                           "set it to none")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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


def full_state(model: nn.Module, d: Dist) -> dict | None:
    """The whole model's weights on rank 0's CPU, gathered from the shards (None unsharded: the
    model's own state is whole)."""
    if d.world == 1:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, state: dict, d: Dist) -> None:
    """Load whole (unsharded) weights into the model, sharded or not."""
    if d.world == 1:
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
