"""After the last stage: summary.json, the Hugging Face export in model/, and report.md."""

from __future__ import annotations

import os
import shutil

from ..fileio import write_json_atomic
from ..report import write_report
from ..report.summary import build_summary


def finish(run) -> None:
    summary = build_summary(run.recipe, run.metrics.records(), run.segments)
    write_json_atomic(run.out / "summary.json", summary)
    export_model(run)
    write_report(run.out)


def export_model(run) -> None:
    """Weights (safetensors) and tokenizer as a folder `AutoModelForCausalLM` loads; written
    beside and renamed into place."""
    final, tmp = run.out / "model", run.out / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.config.use_cache = True
    run.model.save_pretrained(tmp, safe_serialization=True)
    run.tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
