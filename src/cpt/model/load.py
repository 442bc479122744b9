"""Building the model and tokenizer a recipe names: a local Hugging Face folder, or a fresh Llama."""

from __future__ import annotations

import json
from pathlib import Path

import torch

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


def load_tokenizer(path, field: str = "tokenizer"):
    """A Hugging Face tokenizer folder; `field` names the recipe key or flag in errors."""
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for a bad folder
        msg = " ".join(str(e).split())[:200]
        raise CptError(f"{field}: cannot load a tokenizer from {path} ({type(e).__name__}: {msg})") from None


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
            raise CptError(f"model.init: not a valid Llama config ({e})") from None
        torch.manual_seed(recipe.seed)  # the from-scratch weights are part of the run's determinism
        model = LlamaForCausalLM(config)
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab < len(tokenizer):
        raise CptError(f"tokenizer: {len(tokenizer)} tokens but the model's embedding has {vocab} rows; "
                       "use the model's own tokenizer (or extend the vocabulary first)")
    model.config.use_cache = False
    return model
