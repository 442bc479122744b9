"""After the last stage: summary.json, the Hugging Face export in model/, and report.md."""

from __future__ import annotations

import shutil

from ..checkpoint.manager import check_finite
from ..distributed.fsdp import full_state
from ..fileio import replace_dir, write_json_atomic
from ..recipe import VOCAB_EXTENSION
from ..report import write_report
from ..report.attempts import attempts_summary
from ..report.summary import build_summary


def finish(run) -> None:
    """The model first: summary.json and report.md, written last, mean the run is complete."""
    export_model(run)
    if run.dist.is_main:
        summary = build_summary(run.recipe, run.metrics.records(), run.segments)
        if (attempts := attempts_summary(run.out)) is not None:  # guarded stages that rolled back
            summary["attempts"] = attempts
        write_json_atomic(run.out / "summary.json", summary)
        write_report(run.out)
    run.metrics.close()  # the sinks' last events flushed
    run.dist.barrier()


def export_model(run) -> None:
    """Weights (safetensors) and tokenizer as a folder `AutoModelForCausalLM` loads; written
    beside and renamed into place."""
    check_finite(run.model, None, f"export to {run.out / 'model'}", run.dist)
    state = full_state(run.model, run.dist)  # sharded: gathered (every rank takes part), else None
    if not run.dist.is_main:
        return
    final, tmp = run.out / "model", run.out / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.config.use_cache = True
    try:
        run.model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
        run.tokenizer.save_pretrained(tmp)
        record = None if run.recipe.model.path is None else run.recipe.model.path / VOCAB_EXTENSION
        if record is not None and record.is_file():  # the added tokens stay known: a later run's new-row stages
            shutil.copyfile(record, tmp / VOCAB_EXTENSION)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
