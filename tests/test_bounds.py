"""Bounds and types, at load: every number a recipe gives is finite and within what its use can
hold, `model.init` sizes are real sizes, YAML aliases cannot explode, and an `init:` checkpoint
folder is checked before any stage trains. Each refusal is one line naming the field."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import yaml

from cptkit.cli import main
from cptkit.errors import RecipeError
from cptkit.recipe import load_recipe
from conftest import fake_checkpoint


@pytest.fixture
def base(shared, tmp_path) -> dict:
    (tmp_path / "a.txt").write_text("one story\n\nanother story\n")
    return {
        "model": {"path": str(shared / "models" / "stories260K")},
        "seq_len": 64, "micro_batch": 4, "batch_tokens": 256,
        "optimizer": {"lr": 1.0e-3},
        "sources": {"a": {"paths": ["a.txt"]}},
        "validation": {"tokens_per_source": 64},
        "stages": [{"name": "one", "tokens": 1024, "mix": {"a": 1.0}}],
    }


def write(tmp_path: Path, recipe: dict | str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return path


def refusal(path: Path) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def edited(base: dict, dotted: str, value) -> dict:
    """`base` with the key at `dotted` (`stages.0.schedule`) set to `value`."""
    d = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node = d
    for k in parents:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    node[int(last) if isinstance(node, list) else last] = value
    return d


INF, NAN = float("inf"), float("nan")

# (key, value, the field the message names)
OUT_OF_BOUNDS = [
    ("optimizer.lr", INF, "optimizer.lr: Input should be a finite number"),
    ("optimizer.lr", NAN, "optimizer.lr: Input should be a finite number"),
    ("optimizer.lr", 1e7, "optimizer.lr: Input should be less than or equal to 1000000"),
    ("optimizer.lr", 0, "optimizer.lr: Input should be greater than 0"),
    ("optimizer.weight_decay", INF, "optimizer.weight_decay"),
    ("optimizer.eps", 0, "optimizer.eps"),
    ("optimizer.grad_clip", INF, "optimizer.grad_clip"),
    ("optimizer.betas", [0.9, NAN], "optimizer.betas[1]"),
    ("seed", 2**64, "seed: Input should be less than or equal to 18446744073709551615"),
    ("seed", -1, "seed"),
    ("seq_len", 2**20 + 1, "seq_len"),
    ("micro_batch", 2**16 + 1, "micro_batch"),
    ("batch_tokens", 2**30 + 1, "batch_tokens"),
    ("validation.tokens_per_source", 10**9 + 1, "validation.tokens_per_source"),
    ("tokenize_workers", 10**6, "tokenize_workers"),
    ("max_epochs", INF, "max_epochs"),
    ("max_epochs", 0, "max_epochs"),
    ("eval.every_tokens", 10**16, "eval.every_tokens"),
    ("checkpoint.every_tokens", 10**16, "checkpoint.every_tokens"),
    ("sources.a.upsample_long", {"min_tokens": 10, "factor": 1e12}, "sources.a.upsample_long.factor"),
    ("sources.a.upsample_long", {"min_tokens": 10, "factor": INF}, "sources.a.upsample_long.factor"),
    ("sources.a.upsample_long", {"min_tokens": 2**31, "factor": 2}, "sources.a.upsample_long.min_tokens"),
    ("stages.0.tokens", 10**15 + 1, "stages[0].tokens"),
    ("stages.0.batch_tokens", 2**40, "stages[0].batch_tokens"),
    ("stages.0.mix", {"a": INF}, "stages[0].mix.a"),
    ("stages.0.buffer_add", {"source": "a", "tokens": 10**16}, "stages[0].buffer_add.tokens"),
    ("stages.0.buffer_add", {"source": "a", "fraction": 0.5, "pool": 1e9}, "stages[0].buffer_add.pool"),
    ("stages.0.schedule", {"kind": "cosine", "lr": INF}, "stages[0].schedule.lr"),
    ("stages.0.schedule", {"kind": "cosine", "min_lr": INF}, "stages[0].schedule.min_lr"),
    ("stages.0.schedule", {"kind": "wsd", "lr": 5e6}, "stages[0].schedule.lr"),
    ("stages.0.schedule", {"kind": "cooldown", "to": NAN}, "stages[0].schedule.to"),
    ("stages.0.schedule", {"kind": "constant", "warmup_steps": 10**16}, "stages[0].schedule.warmup_steps"),
    ("stages.0.schedule", {"kind": "infinite", "constant_lr": INF}, "stages[0].schedule.constant_lr"),
    ("stages.0.schedule", {"kind": "infinite", "constant_lr": 1e-4, "timescale": INF}, "stages[0].schedule.timescale"),
    ("stages.0.strategy", {"name": "strategy5", "peak": INF, "alpha0": 0.1}, "stages[0].strategy.peak"),
    ("stages.0.strategy", {"name": "strategy4", "N": INF}, "stages[0].strategy.N"),
    ("stages.0.strategy", {"name": "cooldown-mix", "to": 1e7}, "stages[0].strategy.to"),
]


@pytest.mark.parametrize("key,value,expected", OUT_OF_BOUNDS, ids=[f"{k}={v}" for k, v, _ in OUT_OF_BOUNDS])
def test_a_number_out_of_bounds_is_refused_at_load_naming_its_field(base, tmp_path, key, value, expected):
    assert expected in refusal(write(tmp_path, edited(base, key, value)))


def test_values_at_the_bounds_load(base, tmp_path):
    d = edited(base, "seed", 2**64 - 1)
    d = edited(d, "sources.a.upsample_long", {"min_tokens": 2**31 - 1, "factor": 100})
    d = edited(d, "optimizer.lr", 1e6)
    d = edited(d, "stages.0.tokens", 10**15)
    r = load_recipe(write(tmp_path, d))
    assert r.seed == 2**64 - 1 and r.sources["a"].upsample_long.factor == 100 and r.stages[0].tokens == 10**15


def test_an_infinite_lr_in_yaml_is_one_line_exit_2(base, tmp_path, capsys):
    text = yaml.safe_dump(base).replace("lr: 0.001", "lr: .inf")
    assert "lr: .inf" in text
    assert main(["plan", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optimizer.lr: Input should be a finite number (got inf)" in err


def test_a_strategy4_stage_of_many_steps_loads_quickly(base, tmp_path):
    """The switch step of Strategy 4 is found by bisection, not by walking every step."""
    d = edited(base, "base_sources", ["a"])
    d["sources"]["b"] = {"paths": ["a.txt"]}
    d["stages"].append({"name": "two", "tokens": 10**15, "new": ["b"], "strategy": {"name": "strategy4"}})
    t0 = time.perf_counter()
    r = load_recipe(write(tmp_path, d))
    assert time.perf_counter() - t0 < 10
    assert [s.name for s in r.stages] == ["one", "two.base", "two"]


# ---------------------------------------------------------------------------------------------
# model.init


def init_recipe(base: dict, shared: Path, **init) -> dict:
    d = copy.deepcopy(base)
    d["model"] = {"init": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 4, **init}}
    d["tokenizer"] = str(shared / "models" / "stories260K")
    return d


BAD_INIT = [
    ({"hidden_size": -4}, "model.init.hidden_size: -4 is not a size"),
    ({"hidden_size": 0}, "model.init.hidden_size: 0 is not a size"),
    ({"num_hidden_layers": 0}, "model.init.num_hidden_layers"),
    ({"num_attention_heads": -2}, "model.init.num_attention_heads"),
    ({"vocab_size": 0}, "model.init.vocab_size"),
    ({"intermediate_size": 1.5}, "model.init.intermediate_size: 1.5 is not a size"),
    ({"intermediate_size": True}, "model.init.intermediate_size"),
    ({"hidden_size": "32"}, "model.init.hidden_size"),
    ({"hidden_size": 2**20}, "model.init.hidden_size"),
    ({"num_hidden_layers": 10**9}, "model.init.num_hidden_layers"),
    ({"num_attention_heads": 5}, "model.init.num_attention_heads: 5 heads do not divide hidden_size 32"),
    ({"num_key_value_heads": 3}, "model.init.num_key_value_heads: 3 does not divide"),
    ({"hidden_size": 2**16, "intermediate_size": 2**18, "num_hidden_layers": 1024}, "model.init: about"),
    ({"rms_norm_eps": INF}, "model.init.rms_norm_eps"),
    ({"rope_scaling": {"factor": NAN}}, "model.init.rope_scaling"),
]


@pytest.mark.parametrize("init,expected", BAD_INIT, ids=[str(i) for i, _ in BAD_INIT])
def test_a_bad_from_scratch_size_is_refused_at_load(base, shared, tmp_path, init, expected):
    assert expected in refusal(write(tmp_path, init_recipe(base, shared, **init)))


def test_a_small_from_scratch_model_loads(base, shared, tmp_path):
    r = load_recipe(write(tmp_path, init_recipe(base, shared, num_key_value_heads=2, rms_norm_eps=1e-5)))
    assert r.model.init["num_key_value_heads"] == 2


# ---------------------------------------------------------------------------------------------
# YAML aliases


def bomb(levels: int = 9) -> str:
    """The "billion laughs": each level lists the one before ten times (10^levels values)."""
    lines = ["    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


def test_a_yaml_alias_bomb_in_model_init_is_refused_quickly(base, shared, tmp_path, capsys):
    text = yaml.safe_dump({k: v for k, v in init_recipe(base, shared).items() if k != "model"})
    path = write(tmp_path, "model:\n  init:\n" + bomb() + "\n" + text)
    t0 = time.perf_counter()
    assert "aliases expand to more than 1,000,000 values" in refusal(path)
    assert main(["plan", str(path)]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alias" in err


def test_a_few_aliases_still_load(base, tmp_path):
    text = yaml.safe_dump(base).replace("optimizer:\n  lr: 0.001", "optimizer: &opt\n  lr: 0.001")
    text += "x-unused: [*opt, *opt]\n"
    assert "unknown key" in refusal(write(tmp_path, text))  # the aliases resolve; the extra key is the problem
    ok = yaml.safe_dump(base).replace("  a:\n    paths:\n    - a.txt", "  a: &src\n    paths:\n    - a.txt\n  b: *src")
    assert set(load_recipe(write(tmp_path, ok)).sources) == {"a", "b"}


def test_a_recursive_alias_or_deep_nesting_is_one_line(base, tmp_path):
    assert "an alias refers to a value that contains it" in refusal(write(tmp_path, "model: &m\n  init: [*m]\n"))
    assert "nested too deeply" in refusal(write(tmp_path, "model: " + "[" * 20000 + "]" * 20000 + "\n"))


# ---------------------------------------------------------------------------------------------
# an `init:` checkpoint folder, checked at load


def with_checkpoint(base: dict, tmp_path: Path, meta: str | None, state: bool = True) -> Path:
    if meta is not None:
        fake_checkpoint(tmp_path / "ckpt", meta, state)
    else:
        (tmp_path / "ckpt" / "state").mkdir(parents=True)
    d = copy.deepcopy(base)
    d["stages"].append({"name": "two", "tokens": 1024, "mix": {"a": 1.0}, "init": "ckpt"})
    return write(tmp_path, d)


@pytest.mark.parametrize("meta,state,expected", [
    ('{"lr": 1e-3,', True, "meta.json is not valid JSON (line 1, column 13: Expecting property name"),
    ("[1, 2]", True, "meta.json is not a JSON object (it holds a list)"),
    ('{"lr": "fast"}', True, "records lr 'fast'"),
    ('{"lr": NaN}', True, "records lr nan"),
    ('{"lr": 1e-3, "batch_tokens": -5}', True, "records batch_tokens -5"),
    ('{"lr": 1e-3}', False, "has no state/ folder"),
])
def test_a_broken_init_checkpoint_is_a_recipe_problem(base, tmp_path, meta, state, expected):
    message = refusal(with_checkpoint(base, tmp_path, meta, state))
    assert "stages[1].init: " in message and expected in message


def test_a_whole_init_checkpoint_loads_with_its_lr(base, tmp_path):
    from cptkit.schedules import plan_segments

    r = load_recipe(with_checkpoint(base, tmp_path, json.dumps({"lr": 5e-4, "batch_tokens": 256})))
    assert plan_segments(r)[1].start_lr == 5e-4


def test_a_corrupted_init_checkpoint_is_a_recipe_problem(base, tmp_path):
    """Found at load, before earlier stages train, not when the stage that reads it starts."""
    path = with_checkpoint(base, tmp_path, '{"lr": 1e-3}')
    load_recipe(path)
    (tmp_path / "ckpt" / "state" / ".metadata").write_bytes(b"changed")
    with pytest.raises(RecipeError, match=r"stages\[1\]\.init: .*ckpt: state/.metadata does not match its checksum"):
        load_recipe(path)
