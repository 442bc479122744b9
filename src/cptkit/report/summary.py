"""summary.json: per-source validation loss at the base and at each stage's start and end.

Built only from the evaluation records in metrics.jsonl and the recipe, so a resumed run and an
uninterrupted one produce the same summary (timings are deliberately left out)."""

from __future__ import annotations

from ..recipe import BUFFER, Recipe
from ..eval.tasks import main_score
from ..schedules import step_lr
from .stability import stability


def source_roles(recipe: Recipe) -> list[tuple[list[str], list[str]]]:
    """(new, earlier) sources of each stage: adaptation is measured on new ones, forgetting on
    earlier ones. New: the stage's `new:`, else the source it adds to the buffer (the cookbook's
    Di), else the sources it is the first to train on. Earlier: the base model's own data, all
    that earlier stages trained on, and what this stage replays beside its new data."""
    seen = set(recipe.base_sources)
    roles = []
    for st in recipe.stages:
        used = [n for n, w in st.mix.items() if w > 0 and n != BUFFER]
        if st.new is not None:
            new = list(st.new)
        elif st.buffer_add is not None:
            new = [st.buffer_add.source]
        else:
            new = [n for n in used if n not in seen]
        earlier = [n for n in recipe.sources if (n in seen or n in used) and n not in new]
        roles.append((new, earlier))
        seen.update(used)
    return roles


def _relora(st, records: list[dict]) -> dict:
    """What a ReLoRA stage did (train/relora.py's records): where the adapters went on, each
    merge's step and the share of the adapters' moments it left zero."""
    events = [r for r in records if r.get("kind") == "relora" and r.get("stage") == st.name]
    start = next((r for r in events if r["event"] == "start"), {})
    merges = [r for r in events if r["event"] == "merge"]
    return {"rank": st.relora.rank, "adapter_params": start.get("trainable"), "start_step": start.get("step"),
            "merge_steps": [r["step"] for r in merges], "pruned_share": [r["pruned"] for r in merges]}



def build_summary(recipe: Recipe, records: list[dict], segments) -> dict:
    evals = [r for r in records if r.get("kind") == "eval"]
    data = {r["stage"]: r["data_seen"] for r in records if r.get("kind") == "data"}
    base = next(r["val_loss"] for r in evals if r["tag"] == "base")
    stages = []
    for st, seg, (new, earlier) in zip(recipe.stages, segments, source_roles(recipe)):
        start = next(r for r in evals if r["stage"] == st.name and r["tag"] == "start")
        end = next(r for r in evals if r["stage"] == st.name and r["tag"] == "end")
        stages.append({"name": st.name, "tokens_start": start["tokens"], "tokens_end": end["tokens"],
                       "steps": recipe.stage_steps(st), "mix": st.mix, "lr_start": step_lr(seg, 0, recipe.stage_batch(st)),
                       "lr_end": seg.end_lr, "new_sources": new, "earlier_sources": earlier,
                       "val_loss_start": start["val_loss"], "val_loss_end": end["val_loss"],
                       "kind": st.kind, "seq_len": recipe.stage_len(st),
                       # by token position: the means in the buckets between `position_edges`
                       "position_loss_start": start.get("position_loss"), "position_loss_end": end.get("position_loss"),
                       "data_seen_end": data.get(st.name, {}),
                       # steps with a NaN/Inf loss or gradient, which made no update (train/guard.py)
                       "skipped_steps": [r["step"] for r in records
                                         if r.get("kind") == "train" and r.get("stage") == st.name and r.get("skipped")],
                       **({"relora": _relora(st, records)} if st.relora else {})})
    for st in stages:  # monitor: the stability gap of each stage, per monitored source
        if (gaps := stability(records, st)) is not None:
            st["stability"] = gaps
    edges = next((r["position_edges"] for r in evals if "position_edges" in r), None)
    out = {"sources": list(recipe.sources), "base_val_loss": base, "position_edges": edges, "stages": stages}
    tasks = {(r["stage"], r["tag"]): r["scores"] for r in records if r.get("kind") == "tasks"}
    if tasks:  # evals: each task's main score (accuracy, exact match, or bits per byte) at the base and each stage's edges
        def main(scores):
            return None if scores is None else {n: main_score(s) for n, s in scores.items()}
        out["base_evals"] = main(next((s for (_, tag), s in tasks.items() if tag == "base"), None))
        for st in stages:
            st["evals_start"], st["evals_end"] = main(tasks.get((st["name"], "start"))), main(tasks.get((st["name"], "end")))
    keys = {(r["stage"], r["tag"]): r["accuracy"] for r in records if r.get("kind") == "passkey"}
    if keys:  # eval.passkey: accuracy by length and depth at the base and each stage's start and end
        out["base_passkey"] = next((a for (_, tag), a in keys.items() if tag == "base"), None)
        for st in stages:
            st["passkey_start"], st["passkey_end"] = keys.get((st["name"], "start")), keys.get((st["name"], "end"))
    return out
