"""Depth up-scaling (`cpt upscale`, model/upscale.py): SOLAR's layer lists, deep copies with their
layer index renumbered, a folder AutoModelForCausalLM loads and generates from (the KV cache indexed
right), and bad input in one line."""

import pytest
import torch

from cpt.cli import main
from cpt.model.upscale import parse_layers, solar_layers


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
    (["--drop", "5"], "--drop: 5; give 0 to 4 (the model has 5 layers"),
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
