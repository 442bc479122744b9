"""Building the model and tokenizer a recipe names: a local Hugging Face folder, or a fresh Llama."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import read_json_object
from ..errors import CptError
from ..recipe import VOCAB_EXTENSION, Recipe


def new_token_ids(model_dir) -> list[int] | None:
    """The ids a vocabulary extension added to the model in `model_dir` (None: not extended)."""
    path = Path(model_dir) / VOCAB_EXTENSION if model_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        return list(range(int(meta["base_size"]), int(meta["size"])))
    except (ValueError, KeyError, TypeError) as e:
        raise CptError(f"{path}: not a vocabulary extension record ({e}); recreate it with cpt vocab init") from None


def check_extension(model, tokenizer, new_ids: list[int] | None, model_dir) -> None:
    """An extended model runs with the tokenizer it was extended for: with the base tokenizer the
    data would never hold a new id, and its rows would train on nothing."""
    if not new_ids:
        return
    size, rows = new_ids[-1] + 1, model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) != size or rows < size:
        raise CptError(f"tokenizer: {len(tokenizer)} tokens, but {Path(model_dir) / VOCAB_EXTENSION} says the model was "
                       f"extended to {size} ({rows} embedding rows); use the tokenizer saved with the model")


def quiet_transformers() -> None:
    """cpt draws its own progress; transformers' per-load bars and length warnings are noise here
    (documents are tokenized whole and packed, never fed to the model whole)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


# the JSON files AutoTokenizer reads from a folder, each checked first so that a broken one is named
# (transformers reports them as a tokenizer problem, without the file); config.json is the model's
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


def load_tokenizer(path, field: str = "tokenizer"):
    """A Hugging Face tokenizer folder; `field` names the recipe key or flag in errors."""
    from transformers import AutoTokenizer

    for name in _TOKENIZER_FILES:
        file = Path(path) / name
        if not file.is_file():
            continue
        try:
            read_json_object(file)
        except ValueError as e:
            whose = "the model's config" if name == "config.json" else f"the tokenizer's {name}"
            raise CptError(f"{field}: {whose} {file} is {e}; restore it (or save the tokenizer again)") from None
    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for a bad folder
        raise CptError(f"{field}: cannot load a tokenizer from {path} ({type(e).__name__}: {e})") from None


def build_model(recipe: Recipe, tokenizer) -> torch.nn.Module:
    """The starting model in fp32 (bf16 only under autocast, so optimizer state stays fp32)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if recipe.model.path is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(recipe.model.path), dtype=torch.float32)
        except Exception as e:
            raise CptError(f"model.path: cannot load {recipe.model.path} ({type(e).__name__}: {e})") from None
    else:
        fields = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                  "eos_token_id": tokenizer.eos_token_id, "max_position_embeddings": recipe.seq_len}
        fields.update(recipe.model.init)
        try:
            config = LlamaConfig(**fields)
        except Exception as e:
            raise CptError(f"model.init: not a valid Llama config ({type(e).__name__}: {e})") from None
        torch.manual_seed(recipe.seed)  # the from-scratch weights are part of the run's determinism
        try:
            model = LlamaForCausalLM(config)
        except (RuntimeError, ValueError, MemoryError) as e:  # sizes LlamaConfig takes but a model cannot
            raise CptError(f"model.init: cannot build this Llama ({type(e).__name__}: {e})") from None
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab < len(tokenizer):
        raise CptError(f"tokenizer: {len(tokenizer)} tokens but the model's embedding has {vocab} rows; "
                       "use the model's own tokenizer (or extend the vocabulary first)")
    model.config.use_cache = False
    return model
