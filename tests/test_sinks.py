"""Metrics where people look at them (train/sinks.py): TensorBoard event files, read back with
tensorboard's own reader, hold the values of metrics.jsonl; a resume purges what followed the
checkpoint; wandb chosen but not installed is one line."""

import json

import pytest

from conftest import killed_at_step, small_recipe

STAGES = """
  - {name: a, tokens: 768, mix: {stories: 1.0}}
  - {name: b, tokens: 512, mix: {stories: 0.5, math: 0.5}}
"""
HEADER = "validation: {tokens_per_source: 256}\ncheckpoint: {every_tokens: 256}\nloggers: [jsonl, tensorboard]"


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_the_jsonl_values_and_a_resume_purges_the_rest(shared, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from cptkit.build import build_run
    from cptkit.train import loop

    def run(name, resume=False):
        (tmp_path / name).mkdir(exist_ok=True)
        r = build_run(small_recipe(tmp_path / name, shared, STAGES, HEADER), name, tmp_path / name / "out", resume=resume)
        loop.train(r)
        r.metrics.close()
        return r

    run("whole")
    killed_at_step(monkeypatch, 4, lambda: run("cut"))  # in b, after a's 3 steps
    run("cut", resume=True)
    for name in ("whole", "cut"):
        out = tmp_path / name / "out"
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        tb = events(out / "tensorboard")
        train = [r for r in rows if r["kind"] == "train"]
        assert tb["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train], name
        assert [v for _, v in tb["train/lr"]] == [pytest.approx(r["lr"], rel=1e-6) for r in train]
        evals = [r for r in rows if r["kind"] == "eval"]
        assert [v for _, v in tb["eval/val_loss/math"]] == [pytest.approx(r["val_loss"]["math"], rel=1e-6)
                                                             for r in evals], name
    assert events(tmp_path / "cut" / "out" / "tensorboard")["train/loss"] == \
        events(tmp_path / "whole" / "out" / "tensorboard")["train/loss"]  # the killed run's tail purged


def test_wandb_chosen_but_not_installed_is_one_line(shared, tmp_path, capsys, monkeypatch):
    import builtins

    from cptkit.cli import main

    real = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    small_recipe(tmp_path, shared, STAGES, "loggers: [wandb]")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["run", str(tmp_path / "small.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "loggers: wandb is not installed; pip install wandb" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
