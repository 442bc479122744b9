"""Depth up-scaling (`cpt upscale`, model/upscale.py): SOLAR's layer lists, deep copies with their
layer index renumbered, a folder AutoModelForCausalLM loads and generates from (the KV cache indexed
right), and bad input in one line."""

import contextlib
import json

import pytest
import torch

from cptkit.cli import main
from cptkit.model.upscale import parse_layers, solar_layers


def test_solar_and_explicit_layer_lists():
    assert solar_layers(32, 8) == list(range(24)) + list(range(8, 32))  # the paper: 48 layers
    assert solar_layers(5, 0) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert parse_layers("0-23,8-31") == solar_layers(32, 8)
    assert parse_layers("0,1,1,2") == [0, 1, 1, 2]


def test_upscaled_stories260K_loads_generates_and_copies_its_layers(shared, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = shared / "models" / "stories260K"
    assert main(["upscale", "--model", str(base_dir), "--out", str(tmp_path / "up"), "--drop", "1"]) == 0
    assert "5 -> 8 layers (source layers 0-3,1-4), 260,032 -> 396,352 parameters" in capsys.readouterr().out
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    up = AutoModelForCausalLM.from_pretrained(tmp_path / "up")
    assert up.config.num_hidden_layers == 8 and len(up.model.layers) == 8
    source = [0, 1, 2, 3, 1, 2, 3, 4]
    for position, (block, i) in enumerate(zip(up.model.layers, source)):
        assert block.self_attn.layer_idx == position  # the KV cache's index
        for (name, p), q in zip(block.named_parameters(), base.model.layers[i].parameters()):
            assert torch.equal(p, q), (position, name)
    assert up.model.layers[1].mlp.up_proj.weight.data_ptr() != up.model.layers[4].mlp.up_proj.weight.data_ptr()
    for name in ("embed_tokens.weight", "norm.weight"):
        assert torch.equal(up.model.get_parameter(name), base.model.get_parameter(name))
    tok = AutoTokenizer.from_pretrained(tmp_path / "up")  # the base's tokenizer came along
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    # with the cache (indexed by layer_idx: duplicated indices would mix two layers' keys) and without
    cached = up.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    plain = up.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain) and cached.shape[1] == ids.shape[1] + 12


@pytest.mark.parametrize("args,expected", [
    (["--drop", "5"], "--drop: 5; give 0 to 2: fewer than half of the model's 5 layers"),
    (["--drop", "3"], "--drop: 3; give 0 to 2: fewer than half of the model's 5 layers"),
    (["--layers", "0-3,9"], "--layers: 9; give source layers from 0 to 4"),
    (["--layers", "3-1"], "--layers: '3-1'; give source layers as a list of numbers and inclusive ranges"),
    ([], "give exactly one of --drop M (SOLAR) or --layers LIST"),
])
def test_bad_upscale_input_is_one_line(shared, tmp_path, capsys, args, expected):
    out = tmp_path / "up"
    assert main(["upscale", "--model", str(shared / "models" / "stories260K"), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_upscale_never_writes_over_a_folder(shared, tmp_path, capsys):
    out = tmp_path / "up"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["upscale", "--model", str(shared / "models" / "stories260K"), "--out", str(out), "--drop", "1"]) == 2
    assert "--out" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


UPSCALE_STAGES = """
  - {name: a, tokens: 512, mix: {stories: 1.0}}
  - {name: b, init: {upscale: {drop: 1}}, tokens: 512, mix: {stories: 1.0}}
"""


def test_upscale_as_a_stage_equals_the_cli_resumes_and_exports(shared, tmp_path, monkeypatch):
    """`init: {upscale: {drop: 1}}`: the stage starts from a@final up-scaled (its start loss is the
    loss of `upscale_model` applied to a@final), a kill inside it resumes to the same run, and the
    export has 8 layers and generates."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    from conftest import killed_at_step, small_recipe
    from cptkit.build import build_run
    from cptkit.eval.validation import evaluate
    from cptkit.model.upscale import upscale_model
    from cptkit.train import loop
    from cptkit.train.finish import finish

    header = "validation: {tokens_per_source: 512}\ncheckpoint: {every_tokens: 256}"

    def run(name, resume=False):
        (tmp_path / name).mkdir(exist_ok=True)
        r = build_run(small_recipe(tmp_path / name, shared, UPSCALE_STAGES, header), name, tmp_path / name / "out",
                      resume=resume)
        loop.train(r)
        return r

    whole = run("whole")
    finish(whole)
    out = tmp_path / "whole" / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    [up] = [r for r in rows if r["kind"] == "upscale"]
    assert up["source_layers"] == [0, 1, 2, 3, 1, 2, 3, 4] and up["layers_after"] == 8
    start = next(r for r in rows if r["kind"] == "eval" and r["stage"] == "b" and r["tag"] == "start")

    dcp_to_torch_save(out / "checkpoints" / "a@final" / "state", tmp_path / "a.pt")
    a = AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K")
    a.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=False)["model"])
    upscale_model(a, [0, 1, 2, 3, 1, 2, 3, 4])
    again = evaluate(a, whole.validation, 4, torch.device("cpu"), contextlib.nullcontext)
    for source, loss in again.items():
        assert loss == pytest.approx(start["val_loss"][source], abs=1e-6), source

    exported = AutoModelForCausalLM.from_pretrained(out / "model")
    assert exported.config.num_hidden_layers == 8 and len(exported.model.layers) == 8
    ids = torch.tensor([[1, 403, 407, 261]])
    assert exported.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == 8

    killed_at_step(monkeypatch, 4, lambda: run("cut"))  # inside b, after its first step's checkpoint
    resumed = run("cut", resume=True)
    assert len(resumed.model.model.layers) == 8
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("stages,expected", [
    (UPSCALE_STAGES.replace("drop: 1", "drop: 3"),
     "stages[1].init.upscale.drop: 3; give 0 to 2: fewer than half of the model's 5 layers"),
    (UPSCALE_STAGES + "  - {name: c, init: a@final, tokens: 256, mix: {stories: 1.0}}\n",
     "stages[2].init: `a@final` has 5 decoder layers, but the model here has 8 (up-scaling is one way)"),
    (UPSCALE_STAGES + "  - {name: m, kind: merge, checkpoints: [b@final, base]}\n",
     "stages[2].checkpoints[1]: `base` has 5 decoder layers, but the model here has 8"),
    (UPSCALE_STAGES.replace("{drop: 1}", "{drop: 1, layers: [0, 1]}"),
     "stages[1].init.upscale: give exactly one of drop (SOLAR) or layers"),
])
def test_bad_upscale_stage_is_one_line(shared, tmp_path, capsys, stages, expected):
    from conftest import small_recipe
    from cptkit.errors import RecipeError

    with pytest.raises(RecipeError) as e:
        small_recipe(tmp_path, shared, stages)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_upscale_refuses_layers_that_are_not_a_plain_list():
    from cptkit.errors import CptError
    from cptkit.model.upscale import upscale_model

    mixed = torch.nn.Module()
    mixed.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])
    with pytest.raises(CptError, match="not one plain list of blocks of one kind"):
        upscale_model(mixed, [0, 1])
