"""Depth up-scaling (SOLAR, Kim et al. 2024): a deeper model made of copies of a model's own
decoder layers, which continued pre-training then heals.

SOLAR keeps layers 0..n-m-1 of one copy and m..n-1 of another and stacks them: 2(n-m) layers,
dropping m at the seam so that the layer after the seam is not far from the one before it (the
paper: n=32, m=8, 48 layers). `layers` may also be any list of source layers (mergekit's
`passthrough` slices). Each new layer is a deep copy (a later update of one must not move its twin),
its attention's `layer_idx` is its new position (the KV cache is indexed by it), and the config's
`num_hidden_layers` (and `layer_types`, where the family has one) follows. Embeddings, the final norm
and the head are the base's.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from ..config import Strict
from ..errors import CptError
from ..fileio import replace_dir


class UpscaleCfg(Strict):
    """A stage's `init: {upscale: {drop: M}}` (or `layers: [...]`): the starting model up-scaled."""

    drop: int | None = Field(None, ge=0, le=2**10)
    layers: list[Annotated[int, Field(ge=0, le=2**10)]] | None = Field(None, min_length=1, max_length=2**11)

    def source_layers(self, n: int, where: str) -> list[int]:
        if (self.drop is None) == (self.layers is None):
            raise CptError(f"{where}: give exactly one of drop (SOLAR) or layers (a list of source layers)")
        return solar_layers(n, self.drop, f"{where}.drop") if self.drop is not None else \
            check_layers(self.layers, n, f"{where}.layers")


def solar_layers(n: int, drop: int, where: str = "--drop") -> list[int]:
    """SOLAR's source layers for a model of n layers: 0..n-drop-1, then drop..n-1. Dropping half
    or more would give no more layers than the model has."""
    if not 0 <= 2 * drop < n:
        raise CptError(f"{where}: {drop}; give 0 to {(n - 1) // 2}: fewer than half of the model's {n} layers "
                       "(SOLAR drops 8 of 32)")
    return list(range(n - drop)) + list(range(drop, n))


def check_layers(layers: list[int], n: int, where: str = "--layers") -> list[int]:
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad:
        raise CptError(f"{where}: {bad[0] if bad else 'empty'}; give source layers from 0 to {n - 1} "
                       f"(the model has {n})")
    return layers


def plain_layers(model: nn.Module, where: str = "--model") -> nn.ModuleList:
    """The decoder blocks, when they are one plain list of blocks of one kind (`layers`, `h` or
    `blocks` of the base model): what up-scaling can copy and renumber."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    for name in ("layers", "h", "blocks"):
        found = getattr(base, name, None)
        if isinstance(found, nn.ModuleList) and len(found) and len({type(b) for b in found}) == 1:
            return found
    raise CptError(f"{where}: {type(model).__name__}'s decoder layers are not one plain list of blocks of one kind "
                   "(`layers`, `h` or `blocks`); depth up-scaling copies such a list")


def upscale_model(model: nn.Module, layers: list[int], where: str = "--layers") -> nn.Module:
    """The model with its decoder layers replaced by deep copies of `layers` (source indices), in place."""
    blocks = plain_layers(model, where)
    n = len(blocks)
    check_layers(layers, n, where)
    stack = nn.ModuleList(copy.deepcopy(blocks[i]) for i in layers)
    for position, block in enumerate(stack):
        for m in block.modules():  # the attention module (and some blocks themselves) know their place
            if hasattr(m, "layer_idx"):
                m.layer_idx = position
    parent_name = next(name for name, m in model.named_modules() if m is blocks)
    parent, _, attr = parent_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, stack)
    config = model.config
    config.num_hidden_layers = len(layers)
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == n:
        config.layer_types = [config.layer_types[i] for i in layers]
    return model


def upscale(model_dir: Path, out: Path, drop: int | None = None, layers: list[int] | None = None) -> dict:
    """Write `out`: the up-scaled model (safetensors) with the base's tokenizer files; returns what
    was done (source layers, layer and parameter counts)."""
    from transformers import AutoModelForCausalLM

    from .load import quiet_transformers

    model_dir, out = Path(model_dir), Path(out)
    if (drop is None) == (layers is None):
        raise CptError("give exactly one of --drop M (SOLAR) or --layers LIST (source layers, e.g. 0-23,8-31)")
    if not (model_dir / "config.json").is_file():
        raise CptError(f"--model {model_dir}: no config.json; give a Hugging Face model folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CptError(f"--out {out}: exists and is not empty; choose a new folder")
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except Exception as e:  # transformers raises many types for a bad folder
        raise CptError(f"--model {model_dir}: cannot load ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    before = sum(p.numel() for p in model.parameters())
    n = len(plain_layers(model))
    chosen = solar_layers(n, drop) if drop is not None else layers
    upscale_model(model, chosen)
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in model_dir.iterdir():  # tokenizer files, generation config, vocab_extension.json
            if f.is_file() and not (tmp / f.name).exists() and not f.name.endswith((".safetensors", ".bin")) \
                    and not f.name.endswith(".safetensors.index.json"):
                shutil.copy2(f, tmp / f.name)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failure leaves no half-written folder
    return {"source_layers": chosen, "layers_before": n, "layers_after": len(chosen),
            "parameters_before": before, "parameters_after": sum(p.numel() for p in model.parameters())}


def parse_layers(text: str) -> list[int]:
    """`0-23,8-31` or `0,1,2,2,3`: ranges are inclusive, as mergekit's are not (its layer_range is
    half-open); the printed plan says what was taken."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a = int(lo)
            b = int(hi) if hi else a
            if b < a:
                raise ValueError
            out += range(a, b + 1)
    except ValueError:
        raise CptError(f"--layers: {text!r}; give source layers as a list of numbers and inclusive ranges, "
                       "e.g. 0-23,8-31") from None
    return out


def base_depth(recipe) -> int:
    """Decoder layers of the recipe's starting model, from its config alone."""
    if recipe.model.path is not None:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(str(recipe.model.path)).num_hidden_layers)
    return int(recipe.model.init.get("num_hidden_layers", 32))  # LlamaConfig's default


def depth_problems(recipe) -> list[str]:
    """Up-scaling that cannot run (a drop of half the layers or more, a source layer out of range),
    and, after one, a checkpoint named by `init:` or a merge whose depth is not the model's there:
    up-scaling is one way, and a stage's model is the one before it."""
    if not any(st.upscale for st in recipe.stages):
        return []
    try:
        n0 = base_depth(recipe)
    except Exception as e:  # transformers raises many types for an unreadable config
        return [f"model: cannot read the model's config to check up-scaling ({type(e).__name__})"]
    from ..merging import STEP, locate_step

    problems, after = [], []
    names = [st.name for st in recipe.stages]
    for i, st in enumerate(recipe.stages):
        before = after[-1] if after else n0

        def depth_of(ref: str) -> int | None:
            if ref == "base":
                return n0
            if ref == "previous":
                return before
            if STEP.match(ref):
                at = locate_step(recipe, i, ref)
                return after[at[0]] if at else None
            stage = ref.split("@", 1)[0]
            return after[names.index(stage)] if "@" in ref and "/" not in ref and stage in names[:i] else None

        refs = [(f"stages[{i}].init", st.init)] if st.kind != "merge" else \
            [(f"stages[{i}].checkpoints[{k}]", c) for k, c in enumerate(st.checkpoints or [])]
        for where, ref in refs:
            d = depth_of(ref)
            if d is not None and d != before:
                problems.append(f"{where}: `{ref}` has {d} decoder layers, but the model here has {before} (up-scaling "
                                f"is one way); start from a checkpoint of the up-scaled model")
        try:
            after.append(len(st.upscale.source_layers(before, f"stages[{i}].init.upscale")) if st.upscale else before)
        except CptError as e:
            problems.append(str(e))
            after.append(before)
    return problems
