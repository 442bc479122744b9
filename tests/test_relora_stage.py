"""A ReLoRA stage in a plan (train/relora.py): adapters on after the warm start, merges at their
points with the LR re-warmed, a resume inside a cycle equal to the run never stopped, `@final`
and the export plain, and bad input refused before any training."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from conftest import killed_at_step, small_recipe

STAGES = """
  - {name: a, tokens: 512, mix: {stories: 1.0}}
  - name: b
    tokens: 2048
    mix: {stories: 0.5, math: 0.5}
    schedule: {kind: cosine, lr: 1.0e-3, warmup: 0.125}
    relora: {rank: 4, alpha: 8, merge_every_tokens: 512, warm_start: 512, restart_warmup_tokens: 512,
             prune: {ratio: 0.9}}
"""


EVERY_STEP = "checkpoint: {every_tokens: 256}"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, shared) -> dict[str, Path]:
    """The heads of the shared corpora: enough tokens, a fraction of the tokenizing time."""
    d = tmp_path_factory.mktemp("corpora")
    stories = (shared / "corpora/en/tinystories.txt").read_text()[:300_000]
    (d / "stories.txt").write_text(stories)
    math = (shared / "corpora/math/gsm8k_train.jsonl").read_text().splitlines()[:1500]
    (d / "math.jsonl").write_text("\n".join(math) + "\n")
    return {"stories": d / "stories.txt", "math": d / "math.jsonl"}


def relora_run(tmp_path, shared, corpora, name: str, header: str = ""):
    from cptkit.build import build_run
    from cptkit.recipe import load_recipe
    from cptkit.train.loop import train

    (tmp_path / name).mkdir(parents=True)
    path = tmp_path / name / "small.yaml"
    path.write_text(f"""
model: {{path: {shared}/models/stories260K}}
seq_len: 64
micro_batch: 4
batch_tokens: 256
optimizer: {{lr: 1.0e-3}}
validation: {{tokens_per_source: 1024}}
sources:
  stories: {{paths: [{corpora["stories"]}], separator: "<|endoftext|>"}}
  math: {{paths: [{corpora["math"]}], template: "{{question}}"}}
{header}
stages:
{STAGES}""")
    run = build_run(load_recipe(path), name, tmp_path / name / "out", resume=False)
    train(run)
    return run


def records(run, kind: str) -> list[dict]:
    out = [r for r in run.metrics.records() if r["kind"] == kind]
    for r in out:
        r.pop("tokens_per_s", None)
        r.pop("perf", None)
    return out


@pytest.fixture(scope="module")
def whole(tmp_path_factory, shared, corpora):
    return relora_run(tmp_path_factory.mktemp("relora"), shared, corpora, "whole", header=EVERY_STEP)


def test_adapters_go_on_after_the_warm_start_and_merge_at_their_points(whole):
    events = [(r["event"], r["step"], r.get("merges"), r.get("pruned")) for r in records(whole, "relora")]
    # stage a: 2 steps; b: 8 steps of 256 tokens; warm start 2 steps; merges at 1024 and 1536 tokens
    assert [e[:3] for e in events] == [("start", 4, None), ("merge", 6, 1), ("merge", 8, 2), ("end", 10, 3)]
    # the share of the adapters' moments that is zero: the ratio, to the rounding of each tensor
    assert all(abs(e[3] - 0.9) < 2e-3 for e in events if e[0] == "merge")
    lrs = [r["lr"] for r in records(whole, "train") if r["stage"] == "b"]
    seg = whole.segments[1]
    curve = [seg.curve.lr(256 * (k + 1)) for k in range(8)]
    # jagged: x a re-warmup over 512 tokens (2 steps) after 512 (the LoRA start), 1024, 1536
    factor = [1, 1, 0.5, 1, 0.5, 1, 0.5, 1]
    assert lrs == pytest.approx([c * f for c, f in zip(curve, factor)], rel=1e-12)


def test_final_checkpoint_and_export_are_the_plain_model(whole, shared):
    from transformers import AutoModelForCausalLM

    from cptkit.train.finish import export_model

    keys = dcp.FileSystemReader(str(whole.checkpoints.path("b@final") / "state")).read_metadata().state_dict_metadata
    assert not any("lora" in k or "base_layer" in k for k in keys)
    inside = dcp.FileSystemReader(str(whole.checkpoints.path("step-0000008") / "state")).read_metadata()
    inside = inside.state_dict_metadata
    assert any("lora_A" in k for k in inside) and any("optim.state" in k and "lora_B" in k for k in inside)
    # the frozen weights' moments from the warm start were dropped: the memory ReLoRA saves
    assert not any("optim.state" in k and "base_layer" in k for k in inside)
    assert any("optim.state" in k and "embed_tokens" in k for k in inside)
    meta = json.loads((whole.checkpoints.path("step-0000008") / "meta.json").read_text())
    assert meta["hooks"]["relora"]["merges"] == 1
    export_model(whole)
    plain = AutoModelForCausalLM.from_pretrained(whole.out / "model")
    base = AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K")
    assert set(plain.state_dict()) == set(base.state_dict())
    ids = torch.arange(40).view(2, 20)
    whole.model.eval()
    plain.eval()
    torch.testing.assert_close(plain(input_ids=ids).logits, whole.model(input_ids=ids).logits, rtol=0, atol=1e-6)
    moved = [n for n, p in plain.named_parameters() if not torch.equal(p, base.state_dict()[n])]
    assert any("q_proj" in n for n in moved)  # the merged updates are in the weights


@pytest.mark.parametrize("die_at", [6, 9])
def test_resume_inside_a_relora_cycle_equals_uninterrupted(whole, tmp_path, shared, corpora, monkeypatch, die_at):
    """Killed at step 6 (resumed from step 5's checkpoint, in the middle of the first cycle) or
    at step 9 (resumed from step 8's, at a merge point: the checkpoint holds the unmerged adapters
    and the resumed run merges first): the same losses and weights as the run never stopped."""
    import cptkit.train.loop as loop
    from cptkit.build import build_run
    from cptkit.recipe import load_recipe

    killed_at_step(monkeypatch, die_at, lambda: relora_run(tmp_path, shared, corpora, "cut", header=EVERY_STEP))
    resumed = build_run(load_recipe(tmp_path / "cut" / "small.yaml"), "cut", tmp_path / "cut" / "out", resume=True)
    loop.train(resumed)
    assert records(resumed, "train") == records(whole, "train")
    assert [r["event"] for r in records(resumed, "relora")] == [r["event"] for r in records(whole, "relora")]
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("relora,trainable,expected", [
    ("merge_every_tokens: 128", "all", "relora.merge_every_tokens: 128 is less than one optimizer step"),
    ("merge_every_tokens: 384", "all", "relora.merge_every_tokens: 384 is not a whole number of optimizer steps"),
    ("merge_every_tokens: 1024, warm_start: 512", "all", "relora.merge_every_tokens: 1024 does not divide"),
    ("merge_every_tokens: 512, warm_start: 2048", "all", "relora.warm_start: 2048 leaves no LoRA phase"),
    ("merge_every_tokens: 512, restart_warmup_tokens: 768", "all", "relora.restart_warmup_tokens: 768 is longer"),
    ("merge_every_tokens: 512", "norms", "relora: the stage freezes the layers ReLoRA trains"),
    ("merge_every_tokens: 512, prune: {ratio: 1.5}", "all", "relora.prune.ratio: Input should be less than or equal to 1"),
    ("merge_every_tokens: 512, rank: 0", "all", "relora.rank: Input should be greater than or equal to 1"),
    ("merge_every_tokens: 1024, restart_warmup_tokens: 256", "all",
     "relora.restart_warmup_tokens: 256 is less than two optimizer steps (512 tokens)"),
    ("merge_every_tokens: 512, targets: []", "all", "relora.targets: List should have at least 1 item"),
])
def test_bad_relora_fields_are_one_line_naming_stage_and_field(tmp_path, shared, relora, trainable, expected):
    from cptkit.errors import RecipeError

    with pytest.raises(RecipeError) as e:
        small_recipe(tmp_path, shared, f"""
  - {{name: b, tokens: 2048, mix: {{stories: 1.0}}, trainable: [{trainable}], relora: {{{relora}}}}}""")
    assert len(e.value.problems) == 1 and "\n" not in str(e.value)
    assert f"stages[0] (b).{expected}" in str(e.value) or f"stages[0].{expected}" in str(e.value)


@pytest.mark.parametrize("relora,trainable,expected", [
    ("targets: [nope]", "all", "stages[0] (b).relora.targets: nope match no linear layer of LlamaForCausalLM; its "
                               "linear layers are named down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"),
    ("rank: 33", "all", "stages[0] (b).relora.rank: 33 is larger than model.layers.0.self_attn.k_proj (64 x 32); "
                        "choose at most 32"),
    ("targets: [q_proj, lm_head]", "all", "stages[0] (b).relora.targets: lm_head shares its weight with the input "
                                          "embedding (tied)"),
    ("targets: [q_proj, embed_tokens]", "layers", "relora.targets: embed_tokens match no linear layer"),
])
def test_relora_that_does_not_fit_the_model_stops_before_training(tmp_path, shared, relora, trainable, expected):
    """Checked against the model when the run is built, before the data is read: in-process,
    and through `cpt run` once (exit code 2, one line)."""
    import subprocess
    import sys

    from cptkit.build import build_run
    from cptkit.errors import CptError

    fields = f"rank: 4, merge_every_tokens: 512, {relora}".replace("rank: 4, merge_every_tokens: 512, rank: 33",
                                                                   "merge_every_tokens: 512, rank: 33")
    recipe = small_recipe(tmp_path, shared, f"""
  - {{name: b, tokens: 2048, mix: {{stories: 1.0}}, trainable: [{trainable}], relora: {{{fields}}}}}""")
    with pytest.raises(CptError) as e:
        build_run(recipe, "", tmp_path / "o", resume=False)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o" / "data").exists() and not (tmp_path / "o" / "checkpoints").exists()
    if relora.startswith("targets: [nope]"):
        res = subprocess.run([sys.executable, "-m", "cptkit.cli", "run", tmp_path / "small.yaml", "--out", tmp_path / "p"],
                             capture_output=True, text=True)
        assert res.returncode == 2 and expected in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_init_from_a_checkpoint_inside_a_cycle_starts_from_the_merged_weights(whole, shared):
    """`init:` naming a checkpoint written with the adapters on (`step-N`, a `@pre-cooldown` in
    the LoRA phase) loads the plain model that computes what the adapted one computed."""
    from types import SimpleNamespace

    from cptkit.checkpoint.manager import CheckpointManager
    from cptkit.model import relora
    from transformers import AutoModelForCausalLM
    from cptkit.model.relora_cfg import ReLoRACfg
    from cptkit.train.relora import load_plain
    from cptkit.train.step import build_optimizer

    path = whole.checkpoints.path("step-0000007")
    adapted = AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K")
    opt = build_optimizer(adapted, whole.recipe.optimizer)
    layers = relora.wrap(adapted, ReLoRACfg(rank=4, alpha=8, merge_every_tokens=512))
    opt.add_param_group({"params": relora.lora_params(layers), "weight_decay": 0.0})
    CheckpointManager.load(path, adapted, opt)
    assert all(layer.lora_B["default"].weight.abs().sum() > 0 for layer in layers)  # mid-cycle: B is not zero
    plain = AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K")
    run = SimpleNamespace(checkpoints=whole.checkpoints, model=plain, optimizer=build_optimizer(plain, whole.recipe.optimizer),
                          dist=whole.dist)
    plain.model.norm.weight.requires_grad_(False)  # the starting stage's `trainable:`, applied before init
    load_plain(run, path)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    assert [n for n, p in plain.named_parameters() if not p.requires_grad] == ["model.norm.weight"]  # kept as it was
    ids = torch.arange(40).view(2, 20)
    adapted.eval()
    plain.eval()
    torch.testing.assert_close(plain(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_cpt_schedule_writes_the_jagged_lr_and_plan_the_merge_points(tmp_path, shared, capsys):
    from cptkit.cli import main

    small_recipe(tmp_path, shared, STAGES)
    assert main(["schedule", str(tmp_path / "small.yaml"), "--csv", str(tmp_path / "lr.csv")]) == 0
    rows = [line.split(",") for line in (tmp_path / "lr.csv").read_text().splitlines()[1:]]
    b = [float(r[3]) for r in rows if r[0] == "b"]
    # cosine from 1e-3 (warmup 256 tokens) to 1e-4 over 2,048 tokens, x 0.5 on the first step after
    # each restart (512: the adapters go on; 1,024 and 1,536: merges), re-warm 512 tokens = 2 steps
    import math
    cos = [1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * (t - 256) / 1792)) for t in range(256, 2049, 256)]
    assert b == pytest.approx([c * f for c, f in zip(cos, [1, 1, 0.5, 1, 0.5, 1, 0.5, 1])], rel=1e-12)
    assert main(["plan", str(tmp_path / "small.yaml")]) == 0
    out = capsys.readouterr().out
    assert ("relora: full rank for 512 tokens, then rank 4 adapters on attention and MLP linears; merges at "
            "1,024, 1,536; LR re-warms over 512 tokens after each; merged into the plain model at 2,048") in out


def test_a_malformed_relora_state_in_a_checkpoint_is_one_line(whole, tmp_path):
    import shutil
    from types import SimpleNamespace

    from cptkit.errors import CptError
    from cptkit.train.relora import ReLoRA, load_plain

    bad = tmp_path / "bad"
    shutil.copytree(whole.checkpoints.path("step-0000007"), bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["hooks"]["relora"] = {"stage": 1, "merges": 1}  # no adapters
    (bad / "meta.json").write_text(json.dumps(meta))
    run = SimpleNamespace(checkpoints=whole.checkpoints, model=None, optimizer=None, dist=whole.dist)
    with pytest.raises(CptError, match=r"meta.json: hooks.relora is not a ReLoRA state"):
        load_plain(run, bad)
    for state in ([1, 2], {"stage": "b", "merges": 1}, {"stage": 1, "merges": -1}):
        with pytest.raises(ValueError):  # a resume turns it into one line naming meta.json
            ReLoRA().load_state_dict(state)


def test_relora_points_do_not_pass_the_jag_on_and_strategy4_is_refused(tmp_path, shared):
    """A `@pre-cooldown` inside a re-warm records, and passes on, the schedule's LR (not the
    jagged one); Strategy 4's LR-triggered split and ReLoRA's merges cannot share a stage."""
    from cptkit.errors import RecipeError
    from cptkit.schedules import plan_segments

    r = small_recipe(tmp_path, shared, """
  - {name: a, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: wsd, lr: 1.0e-3, warmup: 0.1, decay: 0.4},
     relora: {rank: 4, merge_every_tokens: 1280, restart_warmup_tokens: 512}}
  - {name: b, tokens: 512, mix: {math: 1.0}, init: a@pre-cooldown}""")
    a, b = plan_segments(r)
    assert a.decay_start == 1536 and a.lr(1536) == pytest.approx(5e-4)  # halfway through the re-warm after 1,280
    assert a.base_lr(1536) == b.start_lr == pytest.approx(1e-3)
    with pytest.raises(RecipeError, match=r"stages\[0\].relora: not with strategy4"):
        small_recipe(tmp_path, shared, """
  - {name: a, tokens: 5120, new: [math], strategy: {name: strategy4, N: 10}, relora: {rank: 4, merge_every_tokens: 1280}}""",
                     header="base_sources: [stories]")


def test_summary_and_report_say_what_the_relora_stage_did(whole, tmp_path):
    from cptkit.report.render import overview_section
    from cptkit.report.summary import build_summary

    summary = build_summary(whole.recipe, whole.metrics.records(), whole.segments)
    a, b = summary["stages"]
    assert "relora" not in a
    assert b["relora"]["rank"] == 4 and b["relora"]["start_step"] == 4 and b["relora"]["merge_steps"] == [6, 8]
    assert b["relora"]["pruned_share"] == pytest.approx([0.9, 0.9], abs=2e-3)
    assert b["relora"]["adapter_params"] > 0
    text = overview_section(summary, tmp_path)
    assert f"- **ReLoRA** in `b`: rank 4, {b['relora']['adapter_params']} adapter parameters from step 4, 2 merges" in text
