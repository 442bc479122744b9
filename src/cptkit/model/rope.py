"""Context extension: a stage's `rope:` (RoPE base, Xiong et al. 2023's ABF; a Hugging Face rope
scaling) and its `seq_len`, applied to the model's config and rotary embedding.

What a stage trains with is a pure function of the recipe and the stage's index (every `rope:`
up to it, in order, over the model's own config), so a resume rebuilds it exactly; the rotary
frequencies are non-persistent buffers, recomputed here, never read from a checkpoint. Once a
`rope:` has been given, the model's positions (`max_position_embeddings`) follow the longest
`seq_len` trained so far; the export's config.json carries both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import Strict


class RopeScaling(Strict):
    """A Hugging Face `rope_type` with its parameters (the frequencies are fixed by them). `original_max_position_embeddings`
    defaults to the positions the model had before this stage."""

    # not `dynamic`: it rescales with each input's length (an inference-time method), so training
    # and evaluation would see frequencies that depend on what ran before
    type: Literal["linear", "yarn", "llama3"]
    factor: float = Field(gt=1, le=1024)
    original_max_position_embeddings: int | None = Field(None, gt=0, le=2**24)
    beta_fast: float | None = Field(None, gt=0, le=1e4)  # yarn
    beta_slow: float | None = Field(None, gt=0, le=1e4)  # yarn
    low_freq_factor: float = Field(1.0, gt=0, le=1e4)  # llama3 (Meta's values by default)
    high_freq_factor: float = Field(4.0, gt=0, le=1e4)  # llama3


class RopeCfg(Strict):
    theta: float | None = Field(None, gt=0, le=1e12)  # the RoPE base; None: keep it
    scaling: RopeScaling | None = None


def rope_parameters(params: dict, rope: RopeCfg, positions: int) -> dict:
    """`config.rope_parameters` after a stage's `rope:`, from the ones before it."""
    out = dict(params)
    if rope.theta is not None:
        out["rope_theta"] = float(rope.theta)
    s = rope.scaling
    if s is not None:
        for key in ("factor", "beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor"):
            out.pop(key, None)
        out["rope_type"] = s.type
        out["factor"] = float(s.factor)
        out["original_max_position_embeddings"] = s.original_max_position_embeddings or positions
        if s.type == "yarn":
            out.update({k: v for k, v in (("beta_fast", s.beta_fast), ("beta_slow", s.beta_slow)) if v is not None})
        if s.type == "llama3":
            out.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor)
    return out


def context_at(params: dict, positions: int, stages, index: int) -> tuple[dict, int]:
    """(rope parameters, positions) that stage `index` trains with: every `rope:` up to it in
    order; after the first, positions grow to the longest seq_len trained so far."""
    extended = False
    for st in stages[: index + 1]:
        if st.rope is not None:
            params, extended = rope_parameters(params, st.rope, positions), True
        if extended:
            positions = max(positions, st.seq_len)
    return params, positions


def rotary_modules(model) -> list[tuple[object, str, object]]:
    """(parent, attribute, module) of each rotary embedding: modules that hold `inv_freq`."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if hasattr(child, "inv_freq") and hasattr(child, "rope_type"):
                found.append((parent, name, child))
    return found


def apply_context(model, params: dict, positions: int) -> bool:
    """Set the model's rope parameters and positions, rebuilding its rotary embeddings (from the
    config, as the model's own constructor does) when they change. True when anything changed."""
    config = model.config
    if config.rope_parameters == params and config.max_position_embeddings == positions:
        return False
    config.rope_parameters = dict(params)
    config.max_position_embeddings = positions
    for parent, name, old in rotary_modules(model):
        new = type(old)(config=config).to(old.inv_freq.device)
        setattr(parent, name, new)
    return True


def base_context(recipe) -> tuple[dict | None, int]:
    """(rope parameters, positions) of the starting model, from its config alone (no weights);
    rope parameters None: the model has no rotary embeddings."""
    if recipe.model.path is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(recipe.model.path))
    else:
        from transformers import LlamaConfig

        config = LlamaConfig(**{"max_position_embeddings": recipe.seq_len, **recipe.model.init})
    params = getattr(config, "rope_parameters", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return (dict(params) if params else None), int(positions or 0)


def context_problems(recipe) -> list[str]:
    """`rope:` on a model without rotary embeddings; a stage longer than the positions the model
    supports at that point. Read from the config only when a stage changes either."""
    if all(st.rope is None and recipe.stage_len(st) == recipe.seq_len for st in recipe.stages):
        return []
    try:
        params, positions = base_context(recipe)
    except Exception as e:  # transformers raises many types for an unreadable config
        return [f"model: cannot read the model's config to check its positions ({type(e).__name__})"]
    problems = []
    for i, st in enumerate(recipe.stages):
        if params is None:
            if st.rope is not None:
                problems.append(f"stages[{i}].rope: the model has no rotary position embeddings to change; "
                                "remove `rope`")
            have = positions
        else:
            have = context_at(params, positions, recipe.stages, i)[1]
        if have and recipe.stage_len(st) > have:
            problems.append(f"stages[{i}].seq_len: {recipe.stage_len(st)} is more than the {have} positions the "
                            f"model supports; give the stage a `rope:` (theta and/or scaling) to extend them")
    return problems
