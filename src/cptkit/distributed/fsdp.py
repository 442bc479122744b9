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
    """Shard `model` in place over all ranks (world size 1: not wrapped), with activation
    checkpointing and per-block compilation as asked (the same at any world size)."""
    checkpointing(model, cfg.activation_checkpointing)
    layers = decoder_layers(model) if d.world > 1 or cfg.compile else None
    if d.world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (d.world,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if cfg.mixed_precision and device.type == "cuda" else MixedPrecisionPolicy()
        for i, block in enumerate(layers):
            # the last block's parameters are needed again at once by backward: keep them gathered
            reshard = cfg.reshard_after_forward and i < len(layers) - 1
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    if cfg.compile:
        if cfg.activation_checkpointing != "none":
            # transformers' checkpointed forward sets an output-capture context variable; Dynamo
            # refuses that side effect inside a checkpoint and would compile nothing at all
            # (silently eager). cpt captures no outputs, so the side effect need not be replayed.
            torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
        # the block's forward, not the module: FSDP2's hooks (in __call__) stay outside the graph,
        # parameter names stay as they are (no `_orig_mod.`), and done after fully_shard it is the
        # forward of FSDP2's block class, the one transformers' checkpointing wraps
        for block in layers:
            block.forward = torch.compile(block.forward)
    return model


# what `selective` keeps from the forward: the outputs of the expensive ops (matrix products and
# attention); everything between them is recomputed in backward
_SAVED = ("mm", "addmm", "bmm", "_scaled_mm", "_scaled_dot_product_efficient_attention",
          "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
          "_scaled_dot_product_flash_attention_for_cpu", "_efficient_attention_forward", "_flash_attention_forward")


_SAVED_OPS = {getattr(torch.ops.aten, n).default for n in _SAVED if hasattr(torch.ops.aten, n)}


def _keep_products(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def checkpointing(model: nn.Module, mode: str) -> None:
    """Turn on transformers' per-block activation checkpointing (non-reentrant), `selective`
    with torch's selective-checkpoint policy."""
    if mode == "none":
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise CptError(f"distributed.activation_checkpointing: {type(model).__name__} does not support it; "
                       "set it to none")
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        from functools import partial

        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, _keep_products)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def reshard(model: nn.Module) -> None:
    """Free every gathered parameter. FSDP2 copies `requires_grad` to a parameter when it gathers
    it; one still gathered from an evaluation (the root's, and the last block's, stay gathered
    after a forward without backward) would keep its old flag, and a frozen matrix would train."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_state(model: nn.Module, d: Dist) -> dict | None:
    """The whole model's weights on rank 0's CPU, gathered from the shards (None unsharded: the
    model's own state is whole). A tied matrix appears once, under its first name, as in the
    export of one process (the state dict names it twice)."""
    if d.world == 1:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    once = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in once}


def load_full_state(model: nn.Module, state: dict, d: Dist) -> None:
    """Load whole (unsharded) weights into the model, sharded or not."""
    if d.world == 1:
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
