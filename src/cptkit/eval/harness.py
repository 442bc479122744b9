"""A task scored by lm-evaluation-harness (`backend: lm-eval`), for numbers comparable with
published ones and as a check on our own scoring (eval/tasks.py).

The task's items (already read and checked) go to a local JSONL, a task YAML over it goes beside
them, and lm-eval's `HFLM` wraps the in-memory model: no download, no copy of the weights.
One process only (HFLM would set up its own distribution); `build` refuses it under torchrun.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path

import yaml

from ..errors import CptError

INSTALL = "pip install lm_eval (or install cpt with its `lm-eval` extra)"
GSM8K_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]  # what exact match strips from both sides


def check_installed(where: str) -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise CptError(f"{where}: backend lm-eval needs lm-evaluation-harness, which is not installed; {INSTALL}")


def check_harness(recipe, world: int) -> None:
    """Before any work: lm-eval is there, and the run is one process."""
    for name, cfg in recipe.evals.items():
        if cfg.backend == "lm-eval":
            check_installed(f"evals.{name}")
            if world > 1:
                raise CptError(f"evals.{name}: backend lm-eval runs in one process, not under {world} ranks; "
                               "use backend: cpt (shared out across ranks) or run it on one process")


def task_yaml(name: str, kind: str, data: dict[str, str], cfg) -> dict:
    """lm-eval's task config for one of our task kinds over local JSONL files."""
    common = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": data}, "test_split": "test"}
    if kind == "cloze":
        return common | {"output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": "{{continuation}}",
                         "target_delimiter": "", "metric_list": [{"metric": "acc"}]}
    if kind == "choice":
        return common | {"output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
                         "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    if kind == "perplexity":
        return common | {"output_type": "loglikelihood_rolling", "doc_to_text": "{{text}}", "doc_to_target": "{{text}}",
                         "metric_list": [{"metric": "bits_per_byte"}]}
    exact = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "regexes_to_ignore": GSM8K_IGNORE}
    return common | {
        "output_type": "generate_until", "fewshot_split": "train", "num_fewshot": cfg.shots,
        "fewshot_config": {"sampler": "first_n"}, "fewshot_delimiter": "\n\n",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer}}", "metric_list": [exact],
        "generation_kwargs": {"until": ["Question:", "\n\n"], "do_sample": False, "max_gen_toks": cfg.max_new_tokens},
        "filter_list": [
            {"name": "strict", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                                          {"function": "take_first"}]},
            {"name": "flexible", "filter": [{"function": "regex", "group_select": -1,
                                             "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                                            {"function": "take_first"}]}]}


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def harness_scores(model, tokenizer, cfg, items: list, window: int, batch: int, device) -> dict[str, float]:
    """The task's scores as lm-eval computes them, under our names (acc, acc_norm, exact_match,
    exact_match_flexible, bits_per_byte)."""
    check_installed("evals")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only, never the Hub
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    for noisy in ("lm-eval", "lm_eval"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="cpt-lm-eval-") as tmp:
        folder, name = Path(tmp), "cpt_task"
        rows = [{"text": t} for t in items] if cfg.kind == "perplexity" else items
        shots = cfg.shots if cfg.kind == "generate" else 0
        data = {"test": _write_jsonl(folder / "test.jsonl", rows[shots:])}
        if shots:
            data["train"] = _write_jsonl(folder / "train.jsonl", rows[:shots])
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task_yaml(name, cfg.kind, data, cfg)), encoding="utf-8")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch, max_length=window, device=str(device),
                  add_bos_token=tokenizer.bos_token_id is not None and cfg.kind != "perplexity")  # rolling: its own prefix
        results = simple_evaluate(model=lm, tasks=[name], task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                                  bootstrap_iters=0, log_samples=False, verbosity="ERROR")
    got = results["results"][name]
    names = {"acc,none": "acc", "acc_norm,none": "acc_norm", "bits_per_byte,none": "bits_per_byte",
             "exact_match,strict": "exact_match", "exact_match,flexible": "exact_match_flexible"}
    return {ours: float(got[theirs]) for theirs, ours in names.items() if theirs in got}
