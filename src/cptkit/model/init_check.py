"""`model.init` (a Llama built from scratch): its LlamaConfig sizes checked when the recipe loads,
so that a typo is refused before a model of 10^12 parameters is allocated."""

from __future__ import annotations

import math

from ..config import MAX_SEQ_LEN

# from-scratch models (`model.init`) are built whole, in fp32, in one process: LlamaConfig sizes
INIT_SIZES = {"vocab_size": 2**24, "hidden_size": 2**16, "intermediate_size": 2**18, "num_hidden_layers": 2**10,
              "num_attention_heads": 2**10, "num_key_value_heads": 2**10, "head_dim": 2**12,
              "max_position_embeddings": MAX_SEQ_LEN}
MAX_INIT_PARAMETERS = 10**11  # ~1.6 TB with AdamW's fp32 state: beyond any one machine
_LLAMA_DEFAULTS = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32}  # LlamaConfig's, for sizes the recipe leaves out


def check_init_config(init: dict) -> list[str]:
    """`model.init`: LlamaConfig sizes are whole numbers in [1, cap] (INIT_SIZES), the heads divide
    evenly, the model fits MAX_INIT_PARAMETERS, and every number in it is finite."""
    problems = []
    for key, value in init.items():
        if not isinstance(key, str):
            problems.append(f"model.init: key {key!r} is not a name; keys are LlamaConfig fields")
        elif key in INIT_SIZES and (isinstance(value, bool) or not isinstance(value, int)
                                    or not 1 <= value <= INIT_SIZES[key]):
            problems.append(f"model.init.{key}: {value!r} is not a size; give a whole number from 1 to "
                            f"{INIT_SIZES[key]:,}")
        elif not _finite(value):
            problems.append(f"model.init.{key}: holds a non-finite number (inf or nan); give a finite one")
    if problems:
        return problems
    size = {**_LLAMA_DEFAULTS, **{k: v for k, v in init.items() if k in INIT_SIZES}}
    hidden, heads = size["hidden_size"], size["num_attention_heads"]
    kv = size.get("num_key_value_heads", heads)
    if "head_dim" not in size and hidden % heads:
        problems.append(f"model.init.num_attention_heads: {heads} heads do not divide hidden_size {hidden}; "
                        "give a divisor of it (or head_dim)")
    if heads % kv:
        problems.append(f"model.init.num_key_value_heads: {kv} does not divide num_attention_heads ({heads})")
    head_dim = size.get("head_dim", hidden // heads)
    layer = 2 * hidden * head_dim * (heads + kv) + 3 * hidden * size["intermediate_size"]
    params = size["num_hidden_layers"] * layer + 2 * size.get("vocab_size", 0) * hidden
    if params > MAX_INIT_PARAMETERS:
        problems.append(f"model.init: about {params:.2g} parameters, more than one process can build "
                        f"({MAX_INIT_PARAMETERS:.0e}); lower hidden_size, intermediate_size or num_hidden_layers")
    return problems


def _finite(value) -> bool:
    """Every number in a YAML value (nested lists and mappings too) is finite."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        stack.extend(v.values() if isinstance(v, dict) else v if isinstance(v, list) else [])
    return True
