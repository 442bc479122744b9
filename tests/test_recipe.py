"""Behavioural tests for recipe validation: every bad input is a RecipeError naming the file and field."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cptkit.errors import RecipeError
from cptkit.recipe import ConstantSchedule, CooldownSchedule, load_recipe

ISSUE_EXAMPLE = """\
seed: 0
model: {path: ../shared/data/models/stories260K}
tokenizer: ../shared/data/models/stories260K
seq_len: 256
micro_batch: 8
batch_tokens: 16384
optimizer: {lr: 1.0e-3, weight_decay: 0.1, betas: [0.9, 0.95], grad_clip: 1.0}
sources:
  stories: {paths: [../shared/data/corpora/en/tinystories.txt], separator: "<|endoftext|>"}
  wiki:    {paths: [../shared/data/corpora/en/wikipedia_en.txt], format: lines}
  math:    {paths: [../shared/data/corpora/math/gsm8k_train.jsonl], template: "{question}\\n{answer}"}
validation: {tokens_per_source: 20000}
stages:
  - name: wiki
    tokens: 1_000_000
    mix: {stories: 0.05, wiki: 0.95}
    schedule: {kind: constant, warmup: 0.01}
    buffer_add: {source: wiki, tokens: 100_000}
  - name: math
    tokens: 1_000_000
    mix: {stories: 0.33, math: 0.33, buffer: 0.34}
    schedule: {kind: constant}
  - name: cooldown
    tokens: 500_000
    mix: {stories: 0.33, math: 0.33, buffer: 0.34}
    schedule: {kind: cooldown, shape: 1-sqrt, to: 0.0}
eval: {every_tokens: 200_000}
"""


def _cpt_command() -> str:
    script = Path(sys.executable).with_name("cpt")
    return str(script) if script.is_file() else (shutil.which("cpt") or "cpt")


# ---------------------------------------------------------------------------------------------
# helpers: a small valid recipe in tmp_path, then one change at a time


@pytest.fixture
def base(shared, tmp_path) -> dict:
    """A valid two-stage recipe over two small corpora written next to it (relative paths)."""
    (tmp_path / "a.txt").write_text("one story\n\nanother story\n")
    (tmp_path / "b.jsonl").write_text('{"text": "a record"}\n')
    model = str(shared / "models" / "stories260K")
    return {
        "seed": 0,
        "model": {"path": model},
        "seq_len": 64,
        "micro_batch": 2,
        "batch_tokens": 256,
        "optimizer": {"lr": 1e-3},
        "sources": {"a": {"paths": ["a.txt"]}, "b": {"paths": ["b.jsonl"]}},
        "validation": {"tokens_per_source": 64},
        "stages": [
            {"name": "one", "tokens": 512, "mix": {"a": 1.0}, "schedule": {"kind": "constant"},
             "buffer_add": {"source": "a", "tokens": 128}},
            {"name": "two", "tokens": 512, "mix": {"a": 0.5, "b": 0.5}, "schedule": {"kind": "constant"}},
        ],
    }


def write(tmp_path: Path, data: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(path: Path) -> RecipeError:
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}: ")
    return e.value


def changed(base: dict, edit) -> dict:
    data = copy.deepcopy(base)
    edit(data)
    return data


# ---------------------------------------------------------------------------------------------
# valid recipes


def test_issue_example_loads_with_paths_relative_to_the_recipe(shared, tmp_path, monkeypatch):
    # lay the shared data out where the example's `../shared/data` points from the recipe folder
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared.resolve(), target_is_directory=True)
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "cpt.yaml"
    path.write_text(ISSUE_EXAMPLE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the recipe folder: paths must not depend on the cwd

    r = load_recipe(path)

    assert r.model.path.resolve() == (shared / "models" / "stories260K").resolve()
    assert r.tokenizer_path.resolve() == (shared / "models" / "stories260K").resolve()
    assert r.sources["stories"].paths[0].resolve() == (shared / "corpora" / "en" / "tinystories.txt").resolve()
    assert r.sources["stories"].separator == "<|endoftext|>"
    assert r.sources["wiki"].resolved_format() == "lines"
    assert r.sources["math"].resolved_format() == "jsonl"
    assert r.sources["math"].template == "{question}\n{answer}"
    assert [s.name for s in r.stages] == ["wiki", "math", "cooldown"]
    assert [s.tokens for s in r.stages] == [1_000_000, 1_000_000, 500_000]
    assert isinstance(r.stages[1].schedule, ConstantSchedule)
    assert isinstance(r.stages[2].schedule, CooldownSchedule) and r.stages[2].schedule.shape == "1-sqrt"
    assert r.stages[0].buffer_add.tokens == 100_000
    assert r.optimizer.betas == (0.9, 0.95)
    assert r.accum_steps == 8 and r.samples_per_step == 64
    assert r.eval.every_tokens == 200_000


def test_small_recipe_loads_with_relative_source_paths(base, tmp_path, monkeypatch):
    path = write(tmp_path, base)
    monkeypatch.chdir(tmp_path.parent)
    r = load_recipe(path)
    assert r.sources["a"].paths == [tmp_path / "a.txt"]
    assert r.sources["b"].resolved_format() == "jsonl"


def test_buffer_accepted_after_a_buffer_add(base, tmp_path):
    data = changed(base, lambda d: d["stages"][1].update(mix={"a": 0.5, "buffer": 0.5}))
    r = load_recipe(write(tmp_path, data))
    assert r.stages[1].mix == {"a": 0.5, "buffer": 0.5}


def test_init_from_earlier_stage_checkpoints_accepted(base, tmp_path):
    def edit(d):
        d["stages"][0]["schedule"] = {"kind": "wsd", "decay": 0.2}
        d["stages"][1]["init"] = "one@pre-cooldown"
        d["stages"].append({"name": "three", "tokens": 512, "mix": {"b": 1.0}, "init": "one@final"})

    r = load_recipe(write(tmp_path, changed(base, edit)))
    assert [s.init for s in r.stages] == ["previous", "one@pre-cooldown", "one@final"]


def test_init_checkpoint_folder_resolves_relative_to_the_recipe(base, tmp_path, monkeypatch):
    from conftest import fake_checkpoint

    fake_checkpoint(tmp_path / "ckpt")
    path = write(tmp_path, changed(base, lambda d: d["stages"][1].update(init="ckpt")))
    monkeypatch.chdir(tmp_path.parent)
    assert load_recipe(path).stages[1].init == str(tmp_path / "ckpt")


# ---------------------------------------------------------------------------------------------
# one bad input at a time: the message names the file and the field


def _no_weights_model(tmp_path: Path, shared: Path) -> str:
    folder = tmp_path / "model_no_weights"
    folder.mkdir()
    shutil.copy(shared / "models" / "stories260K" / "config.json", folder / "config.json")
    return str(folder)


BAD = {
    "unknown_top_level_key": (lambda d: d.update(sed=1), ["sed: unknown key"]),
    "unknown_optimizer_key": (lambda d: d["optimizer"].update(lrr=0.1), ["optimizer.lrr: unknown key"]),
    "unknown_schedule_key": (lambda d: d["stages"][0]["schedule"].update(foo=1), ["stages[0].schedule.foo: unknown key"]),
    "unknown_source_key": (lambda d: d["sources"]["a"].update(seperator="x"), ["sources.a.seperator: unknown key"]),
    "missing_required_key": (lambda d: d.pop("seq_len"), ["seq_len: required key is missing"]),
    "missing_source_file": (lambda d: d["sources"].update(x={"paths": ["a.txt", "nope.txt"]}),
                            ["sources.x.paths[1]: file not found", "nope.txt"]),
    "negative_weight": (lambda d: d["stages"][1].update(mix={"a": -0.5, "b": 1.5}),
                        ["stages[1].mix.a: weight -0.5 is negative"]),
    "weights_not_summing_to_1": (lambda d: d["stages"][1].update(mix={"a": 0.5, "b": 0.4}),
                                 ["stages[1].mix: weights sum to 0.9"]),
    "mix_unknown_source": (lambda d: d["stages"][1].update(mix={"a": 0.5, "c": 0.5}),
                           ["stages[1].mix.c: unknown source"]),
    "buffer_before_buffer_add": (lambda d: d["stages"][0].update(mix={"a": 0.5, "buffer": 0.5}),
                                 ["stages[0].mix.buffer", "buffer_add"]),
    "tokens_below_batch": (lambda d: d["stages"][1].update(tokens=255),
                           ["stages[1].tokens: 255 is less than one optimizer step"]),
    "init_unknown_stage": (lambda d: d["stages"][1].update(init="nosuch@final"),
                           ["stages[1].init: `nosuch@final` names no earlier stage"]),
    "init_later_stage": (lambda d: d["stages"][0].update(init="two@final"), ["stages[0].init: `two@final`"]),
    "init_pre_cooldown_of_constant": (lambda d: d["stages"][1].update(init="one@pre-cooldown"),
                                      ["stages[1].init", "`one` never decays", "pre-cooldown"]),
    "init_missing_folder": (lambda d: d["stages"][1].update(init="no_such_ckpt"),
                            ["stages[1].init", "no_such_ckpt"]),
    "batch_not_multiple": (lambda d: d.update(batch_tokens=300),
                           ["batch_tokens: 300 is not a multiple of seq_len x micro_batch = 128"]),
    "buffer_add_unknown_source": (lambda d: d["stages"][0]["buffer_add"].update(source="zz"),
                                  ["stages[0].buffer_add.source: unknown source `zz`"]),
    "buffer_add_below_one_sample": (lambda d: d["stages"][0]["buffer_add"].update(tokens=30),
                                    ["stages[0].buffer_add.tokens: 30 is less than one sample"]),
    "bad_template": (lambda d: d["sources"]["b"].update(template="{question"), ["sources.b.template: not a valid"]),
    "beta_above_1": (lambda d: d["optimizer"].update(betas=[0.9, 1.5]), ["optimizer.betas[1]: Input should be less than 1"]),
    "negative_seed": (lambda d: d.update(seed=-1), ["seed:"]),
    "source_name_with_slash": (lambda d: d["sources"].update({"w/i": {"paths": ["a.txt"]}}),
                               ["sources.w/i: a source name must be"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_recipe_names_file_and_field(base, tmp_path, case):
    edit, expected = BAD[case]
    e = error_of(write(tmp_path, changed(base, edit)))
    for text in expected:
        assert text in str(e)
    assert len(e.problems) == 1, e.problems  # the one change is the one problem


def test_model_folder_without_weights(base, shared, tmp_path):
    folder = _no_weights_model(tmp_path, shared)
    e = error_of(write(tmp_path, changed(base, lambda d: d["model"].update(path=folder))))
    assert "model.path: no weights" in str(e) and folder in str(e)


def test_model_folder_missing(base, tmp_path):
    e = error_of(write(tmp_path, changed(base, lambda d: d["model"].update(path="nowhere"))))
    assert "model.path: folder not found" in str(e)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 0\nseq_len: 256\nmicro_batch: 8\n  batch_tokens: 16384\n")
    e = error_of(path)
    assert "malformed YAML" in str(e) and "line 4" in str(e)


def test_duplicate_key_names_the_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 0\nseq_len: 64\nseed: 1\n")
    e = error_of(path)
    assert "duplicate key `seed`" in str(e) and "line 3" in str(e)


def test_recipe_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 0\nname: caf\u00e9\n".encode("latin-1"))
    assert "UTF-8" in str(error_of(path))


def test_recipe_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- seed: 0\n")
    assert "mapping" in str(error_of(path))


def test_missing_recipe_file(tmp_path):
    assert "file not found" in str(error_of(tmp_path / "absent.yaml"))


def test_several_cross_field_problems_reported_together(base, tmp_path):
    def edit(d):
        d["batch_tokens"] = 300
        d["sources"]["a"]["paths"] = ["gone.txt"]
        d["stages"][1]["mix"] = {"a": 0.5, "nosuch": 0.5}
        d["stages"][1]["init"] = "nosuch@final"

    e = error_of(write(tmp_path, changed(base, edit)))
    message = str(e)
    for field in ("batch_tokens:", "sources.a.paths[0]:", "stages[1].mix.nosuch:", "stages[1].init:"):
        assert field in message
    assert len(e.problems) >= 4
    assert "\n" not in message


def test_several_typed_problems_reported_together(base, tmp_path):
    def edit(d):
        d["optimizer"]["lrr"] = 1
        d["stages"][0]["schedule"]["foo"] = 1
        d["seq_len"] = 0

    e = error_of(write(tmp_path, changed(base, edit)))
    for field in ("optimizer.lrr:", "stages[0].schedule.foo:", "seq_len:"):
        assert field in str(e)
    assert len(e.problems) == 3


# ---------------------------------------------------------------------------------------------
# through the CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_cpt_command(), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("edit", "field"), [
    (BAD["unknown_schedule_key"][0], "stages[0].schedule.foo"),
    (BAD["missing_source_file"][0], "sources.x.paths[1]"),
], ids=["unknown_schedule_key", "missing_source_file"])
def test_cli_bad_recipe_exits_2_with_one_line_and_creates_nothing(base, tmp_path, edit, field):
    path = write(tmp_path, changed(base, edit), "BAD.yaml")
    out = tmp_path / "OUT"
    proc = run_cli("run", str(path), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cpt: error: ")
    assert str(path) in lines[0] and field in lines[0]
    assert not out.exists()


def test_cli_refuses_an_out_folder_holding_files(base, tmp_path):
    path = write(tmp_path, base)
    out = tmp_path / "OUT"
    (out / "sub").mkdir(parents=True)
    files = {out / "metrics.jsonl": b'{"kind": "train", "step": 1}\n', out / "sub" / "weights.bin": bytes(range(256))}
    for f, content in files.items():
        f.write_bytes(content)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    proc = run_cli("run", str(path), "--out", str(out))

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cpt: error: ") and "--out" in lines[0], proc.stderr
    assert str(out) in lines[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    for f, content in files.items():
        assert f.read_bytes() == content
