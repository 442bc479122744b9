"""`cpt demo`: the cookbook's four-stage plan on corpora and a model built here, in minutes on CPU.

Stage 1 pretrains a tiny Llama from scratch on D0 (English-like stories) with a WSD schedule, so
its checkpoint at LR_max is tagged `pretrain@pre-cooldown` before the decay. Like the cookbook,
stage 2 starts from that checkpoint (not the cooled-down one) and continues at the held LR:
  1 -> 2  weak shift, Python code (D1) with 5% replay of D0          (D1 joins buffer B after)
  2 -> 3  strong shift, arithmetic (D2): 0.33 D0 + 0.33 D2 + 0.34 B  (D2 joins B after)
  3 -> 4  reasoning traces (D3): a cooldown with 0.33 D0 + 0.33 D3 + 0.34 B
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..errors import CptError
from ..runner import run_recipe
from .corpora import CORPORA, iter_texts, train_tokenizer, write_corpora

MODEL = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 4, "tie_word_embeddings": True}


def demo_recipe(scale: float = 1.0) -> dict:
    """The demo's recipe; paths are relative to the demo folder, where it is written. `scale`
    multiplies every token budget (tests run the same plan in miniature)."""
    sources = {name: {**spec, "paths": [f"corpora/{p}" for p in spec["paths"]]} for name, spec in CORPORA.items()}
    return {
        "seed": 0,
        "model": {"init": MODEL},
        "tokenizer": "tokenizer",
        "seq_len": 128,
        "micro_batch": 16,
        "batch_tokens": 4096,
        "optimizer": {"lr": 3.0e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0},
        "sources": sources,
        "validation": {"tokens_per_source": 8192},
        "stages": [
            {"name": "pretrain", "tokens": int(700_000 * scale), "mix": {"english": 1.0},
             "schedule": {"kind": "wsd", "warmup": 0.05, "decay": 0.2, "shape": "1-sqrt"}},
            {"name": "code", "tokens": int(200_000 * scale), "init": "pretrain@pre-cooldown",
             "mix": {"english": 0.05, "code": 0.95}, "schedule": {"kind": "constant"},
             "buffer_add": {"source": "code", "tokens": int(60_000 * scale)}},
            {"name": "arithmetic", "tokens": int(200_000 * scale), "mix": {"english": 0.33, "arithmetic": 0.33, "buffer": 0.34},
             "schedule": {"kind": "constant"}, "buffer_add": {"source": "arithmetic", "tokens": int(60_000 * scale)}},
            {"name": "traces", "tokens": int(200_000 * scale), "mix": {"english": 0.33, "traces": 0.33, "buffer": 0.34},
             "schedule": {"kind": "cooldown", "shape": "1-sqrt", "to": 0.0}},
        ],
        "eval": {"every_tokens": 100_000},
    }


def run_demo(out: Path, scale: float = 1.0) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CptError(f"--out {out}: not empty; the demo writes a fresh run (remove it or pick another folder)")
    # matplotlib writes a font cache under ~/.cache on first use; the demo writes only under `out`
    os.environ.setdefault("MPLCONFIGDIR", str(out.resolve() / ".cache" / "matplotlib"))
    print(f"cpt demo: building corpora and a tokenizer in {out}")
    write_corpora(out / "corpora", seed=0, chars_per_corpus=int(1_200_000 * min(1.0, 4 * scale)))
    train_tokenizer(iter_texts(out / "corpora"), out / "tokenizer", vocab_size=2048)
    recipe_path = out / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(demo_recipe(scale), sort_keys=False))
    report = run_recipe(recipe_path, out / "run")
    print(f"cpt demo: the report (forgetting and adaptation per stage) is at {report}")
    return report
