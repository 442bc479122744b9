"""Context extension as a stage (model/rope.py, per-stage seq_len): 256 -> 1024 tokens with a new
RoPE base trains, a kill inside the long stage resumes to the same run, the export's config.json
carries the new theta and positions, cursors carry over in tokens (nothing read twice), the
report shows loss by position, and bad input is one line before any work."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import corpus_heads, killed_at_step, write_recipe as conftest_recipe

STAGES = """
  - {name: short, tokens: 2048, mix: {stories: 1.0}}
  - name: long
    seq_len: 1024
    micro_batch: 1            # a longer sample, fewer of them per forward
    rope: {theta: 100000}
    tokens: 4096
    mix: {stories: 0.5, math: 0.5}
    schedule: {kind: cosine, lr: 2.0e-3, warmup: 0.25}
"""


def write_recipe(tmp_path: Path, shared: Path, name: str, stages: str = STAGES, header: str = "") -> Path:
    stories, math = corpus_heads(tmp_path / "corpora", shared, 150_000, 600)
    sources = f"""  stories: {{paths: [{stories}], separator: "<|endoftext|>", upsample_long: {{min_tokens: 300, factor: 2}}}}
  math: {{paths: [{math}], template: "{{question}}\\n{{answer}}"}}"""
    header = ("validation: {tokens_per_source: 2048}\ncheckpoint: {every_tokens: 2048}\n"
              "eval: {passkey: {lengths: [1024], depths: [0.5], trials: 1}}\n" + header)
    return conftest_recipe(tmp_path / name / "recipe.yaml", shared, sources, stages, header, seq_len=256,
                           micro_batch=2, batch_tokens=2048, optimizer="{lr: 2.0e-3}")


def records(out: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "perf", "blocked_s")} for r in rows
            if r["kind"] == kind]


def test_carry_moves_a_cursor_to_another_length_without_rereading():
    from cptkit.data.packing import carry

    # 10 samples of 256 in an epoch of 10,000 tokens end at token 2,560: the next 1024-sample is the 3rd
    assert carry(10, 10_000, 256, 1024) == 3
    assert carry(3, 10_000, 1024, 256) == 12  # 3,072 tokens: exactly sample 12 of 256
    assert carry(39 + 2, 10_000, 256, 1024) == 9 + 1  # epoch 1 (39 samples of 256), 512 tokens in
    assert carry(38, 10_000, 256, 1024) == 9  # past the last 1024-sample: the next epoch's first
    assert carry(7, 10_000, 512, 512) == 7


def test_context_extension_stage_trains_resumes_and_exports(shared, tmp_path, monkeypatch):
    from cptkit.build import build_run
    from cptkit.recipe import load_recipe
    from cptkit.train import loop
    from cptkit.train.finish import finish

    def run(name: str, resume: bool = False):
        r = build_run(load_recipe(tmp_path / name / "recipe.yaml"), name, tmp_path / name / "out", resume=resume)
        loop.train(r)
        return r

    write_recipe(tmp_path, shared, "whole")
    whole = run("whole")
    finish(whole)
    out = tmp_path / "whole" / "out"
    train = records(out, "train")
    assert [r["stage"] for r in train] == ["short"] + ["long"] * 2
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 100000.0 and config["max_position_embeddings"] == 1024
    from transformers import AutoModelForCausalLM
    exported = AutoModelForCausalLM.from_pretrained(out / "model")
    assert exported.config.rope_parameters["rope_theta"] == 100000.0
    inv = exported.model.rotary_emb.inv_freq
    assert torch.allclose(inv, 1.0 / 100000.0 ** (torch.arange(0, 8, 2).float() / 8))  # head_dim 8
    [context] = records(out, "context")
    assert context["stage"] == "long" and context["seq_len"] == 1024 and context["max_position_embeddings"] == 1024

    # the long stage reads stories where the short one stopped: 1 step x 8 x 256 = 2,048 tokens
    # in (8 samples of 256) -> sample 2 of 1024 (no token read twice, none skipped)
    data = {r["stage"]: r["data_seen"] for r in records(out, "data")}
    assert data["short"]["stories"]["samples"] == 8
    long = data["long"]["stories"]
    assert long["samples"] == 2 + 2 and long["tokens"] == 4 * 1024  # 2 of the 4 samples, each 1024 tokens
    # its first sample is the next four samples the short stage would have read, end to end
    short_next = np.concatenate([whole.data.stream("stories", 256).sample(k) for k in range(8, 12)])
    assert np.array_equal(whole.data.stream("stories", 1024).sample(2), short_next)

    # evaluated by position up to 1024, at every eval; the report shows it around the long stage
    evals = records(out, "eval")
    assert evals[0]["position_edges"] == [0, 64, 128, 256, 512, 1024]
    start = next(e for e in evals if e["stage"] == "long" and e["tag"] == "start")
    end = next(e for e in evals if e["stage"] == "long" and e["tag"] == "end")
    assert len(end["position_loss"]["stories"]) == 5
    assert end["position_loss"]["stories"][-1] < start["position_loss"]["stories"][-1]  # it learned 512-1024
    report = (out / "report.md").read_text()
    assert "Loss by token position" in report and "512-1024" in report
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["base_passkey"]) == {"1024"} and summary["stages"][1]["passkey_end"]["1024"]["0.5"] in (0, 1)
    assert "## Passkey retrieval" in report

    # killed in the long stage's 2nd step, resumed: the same batches, losses and weights
    write_recipe(tmp_path, shared, "cut")
    killed_at_step(monkeypatch, 3, lambda: run("cut"))
    resumed = run("cut", resume=True)
    cut = tmp_path / "cut" / "out"
    assert records(cut, "train") == train
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    assert resumed.model.config.rope_parameters["rope_theta"] == 100000.0
    done = run("cut", resume=True)  # after the last stage: nothing trains, the model is the extended one
    assert done.model.config.rope_parameters["rope_theta"] == 100000.0 and done.model.config.max_position_embeddings == 1024


@pytest.mark.parametrize("stage,expected", [
    ("{name: long, seq_len: 1024, tokens: 4096, mix: {stories: 1.0}}",
     "stages[1].seq_len: 1024 is more than the 512 positions the model supports; give the stage a `rope:`"),
    ("{name: long, seq_len: 1024, tokens: 4096, mix: {stories: 1.0}, rope: {theta: 0}}",
     "stages[1].rope.theta: Input should be greater than 0"),
    ("{name: long, seq_len: 1024, tokens: 4096, mix: {stories: 1.0}, rope: {scaling: {type: yarn, factor: 0.5}}}",
     "stages[1].rope.scaling.factor: Input should be greater than 1"),
    ("{name: long, seq_len: 1024, tokens: 4096, mix: {stories: 1.0}, rope: {scaling: {type: dynamic, factor: 2}}}",
     "stages[1].rope.scaling.type: Input should be 'linear', 'yarn' or 'llama3'"),
    ("{name: long, seq_len: 1000, tokens: 8192, mix: {stories: 1.0}, rope: {theta: 20000}}",
     "stages[1].batch_tokens: 2048 is not a multiple of seq_len x micro_batch = 2000"),
])
def test_bad_context_input_is_one_line(shared, tmp_path, capsys, stage, expected):
    from cptkit.cli import main

    stages = f"""
  - {{name: short, tokens: 2048, mix: {{stories: 1.0}}}}
  - {stage}
"""
    path = write_recipe(tmp_path, shared, "bad", stages)
    out = tmp_path / "bad" / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_rope_on_a_model_without_rotary_embeddings_is_refused(shared, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from cptkit.cli import main

    gpt2 = tmp_path / "gpt2-tiny"
    GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=256, n_embd=16, n_layer=1, n_head=2)).save_pretrained(gpt2)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (gpt2 / f).write_bytes((shared / "models/stories260K" / f).read_bytes())
    path = write_recipe(tmp_path, shared, "gpt2", """
  - {name: a, tokens: 2048, mix: {stories: 1.0}, rope: {theta: 20000}}
""")
    path.write_text(path.read_text().replace(f"{shared}/models/stories260K", str(gpt2)))
    capsys.readouterr()
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages[0].rope: the model has no rotary position embeddings to change" in err, err


def test_plan_warns_when_a_later_stage_trains_shorter_than_the_extension(shared, tmp_path, capsys):
    from cptkit.cli import main

    stages = STAGES + "  - {name: after, seq_len: 256, tokens: 2048, mix: {stories: 1.0}}\n"
    capsys.readouterr()
    assert main(["plan", str(write_recipe(tmp_path, shared, "warn", stages))]) == 0
    text = capsys.readouterr().out
    assert "warning: stage after: trains at seq_len 256, shorter than the 1,024 an earlier stage extended" in text
    assert "seq_len 1,024; rope theta 100000" in text
