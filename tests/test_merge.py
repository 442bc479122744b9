"""Merge stages (merging.py, train/merge.py): a `kind: merge` stage's weights are the weighted
average of its checkpoints (to 1e-6), a later stage trains from it, the presets pick the right
checkpoints, and bad input is refused in one line before any work."""

import json
from pathlib import Path

import pytest
import torch

from conftest import corpus_heads, write_recipe as conftest_recipe
from cptkit.merging import ema_weights

HEADER = """
validation: {tokens_per_source: 512}
checkpoint: {every_tokens: 256}
"""


def write_recipe(tmp_path: Path, shared: Path, stages: str, header: str = HEADER) -> Path:
    stories, math = corpus_heads(tmp_path, shared, 120_000, 600)
    sources = f"""  stories: {{paths: [{stories}], separator: "<|endoftext|>"}}
  math: {{paths: [{math}], template: "{{question}}"}}"""
    return conftest_recipe(tmp_path / "merge.yaml", shared, sources, stages, header, optimizer="{lr: 3.0e-3}")


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's model tensors, read with DCP into plain tensors."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = folder.parent / f"{folder.name}.pt"
    dcp_to_torch_save(folder / "state", out)
    state = torch.load(out, weights_only=False)["model"]
    out.unlink()
    return state


def test_ema_weights_sum_to_one_and_favour_the_last():
    w = ema_weights(3, 0.5)
    assert w == [0.25, 0.25, 0.5] and sum(ema_weights(7, 0.9)) == pytest.approx(1.0, abs=1e-12)


def test_merge_stage_is_the_weighted_average_and_a_later_stage_trains_from_it(shared, tmp_path):
    from cptkit.runner import run_recipe

    stages = """
  - {name: a, tokens: 1024, mix: {stories: 1.0}}
  - {name: b, tokens: 1024, mix: {math: 1.0}}
  - {name: soup, kind: merge, checkpoints: [a@final, b@final, step-0000002], weights: [0.5, 0.3, 0.2]}
  - {name: c, tokens: 512, mix: {stories: 0.5, math: 0.5}}
  - {name: back, kind: merge, strategy: {name: soup-with-base, of: c, alpha: 0.25}}
  - {name: ema, kind: merge, checkpoints: [a@final, b@final], method: ema, ema_beta: 0.5}
"""
    out = tmp_path / "out"
    run_recipe(write_recipe(tmp_path, shared, stages), out)
    ck = out / "checkpoints"
    a, b, s2 = (weights_of(ck / n) for n in ("a@final", "b@final", "step-0000002"))
    soup, c = weights_of(ck / "soup@final"), weights_of(ck / "c@final")
    for k in a:
        want = 0.5 * a[k].double() + 0.3 * b[k].double() + 0.2 * s2[k].double()
        assert torch.allclose(soup[k].double(), want, atol=1e-6, rtol=0), k
        assert not torch.equal(soup[k], a[k]), k  # the stages trained: the average is not a copy
    # c started from the soup and trained; `back` is 0.25 c + 0.75 of where c started (the soup)
    back = weights_of(ck / "back@final")
    for k in a:
        assert torch.allclose(back[k].double(), 0.25 * c[k].double() + 0.75 * soup[k].double(), atol=1e-6, rtol=0)
        assert not torch.equal(c[k], soup[k]), k
    ema = weights_of(ck / "ema@final")
    for k in a:
        assert torch.allclose(ema[k].double(), 0.5 * a[k].double() + 0.5 * b[k].double(), atol=1e-6, rtol=0)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    merges = [r for r in records if r["kind"] == "merge"]
    assert [m["stage"] for m in merges] == ["soup", "back", "ema"]
    assert merges[1]["checkpoints"] == ["c@final", "soup@final"] and merges[1]["weights"] == [0.25, 0.75]
    trained = [r for r in records if r["kind"] == "train"]
    assert {r["stage"] for r in trained} == {"a", "b", "c"}  # merges take no step
    ends = {r["stage"]: r["val_loss"] for r in records if r["kind"] == "eval" and r["tag"] == "end"}
    assert set(ends) == {"a", "b", "soup", "c", "back", "ema"}  # each evaluated like any stage
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]][2] == "soup"


def test_step_names_are_written_as_the_saves_are(shared, tmp_path):
    from cptkit.recipe import load_recipe

    stages = """
  - {name: a, tokens: 1024, mix: {stories: 1.0}}
  - {name: m, kind: merge, checkpoints: [a@final, step-2]}
"""
    assert load_recipe(write_recipe(tmp_path, shared, stages)).stages[1].checkpoints == ["a@final", "step-0000002"]


def test_wsm_averages_the_stable_phase(shared, tmp_path):
    from cptkit.recipe import load_recipe

    stages = """
  - {name: a, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: wsd, lr: 1.0e-3, decay: 0.2}}
  - {name: w, kind: merge, strategy: {name: wsm, of: a, last: 3}}
"""
    r = load_recipe(write_recipe(tmp_path, shared, stages))
    # 10 steps, the decay starts after step 8: saves at steps 1..7, then a@pre-cooldown
    assert r.stages[1].checkpoints == ["step-0000006", "step-0000007", "a@pre-cooldown"]
    assert r.stages[1].weights is None and r.stages[1].kind == "merge"


@pytest.mark.parametrize("stage,expected", [
    ("{name: m, kind: merge, checkpoints: [a@final, base], weights: [0.7, 0.5]}",
     "stages[1].weights: they sum to 1.2; they must sum to 1"),
    ("{name: m, kind: merge, checkpoints: [a@final, base], weights: [1.5, -0.5]}",
     "stages[1].weights: -0.5 is negative"),
    ("{name: m, kind: merge, checkpoints: [a@final, nope@final]}",
     "stages[1].checkpoints[1]: `nope@final` names no earlier stage"),
    ("{name: m, kind: merge, checkpoints: [a@final, step-0000003]}",
     "stages[1].checkpoints[1]: `step-0000003` is not a periodic checkpoint written before this stage"),
    ("{name: m, kind: merge, checkpoints: [a@final, base], tokens: 256}",
     "stages[1].tokens: a merge stage trains nothing; remove `tokens`"),
    ("{name: m, kind: merge, checkpoints: [a@final, base], method: ema, weights: [0.5, 0.5]}",
     "stages[1].weights: method ema sets the weights"),
    ("{name: m, tokens: 256, mix: {stories: 1.0}, checkpoints: [a@final]}",
     "stages[1].checkpoints: only a merge stage (kind: merge) averages checkpoints"),
    ("{name: m, kind: merge, strategy: {name: wsm, of: a, last: 3}}",
     "stages[1].strategy.last: stage `a` writes 2 checkpoint(s) before its decay (step-0000002, a@final)"),
    ("{name: m, kind: merge, strategy: {name: wsm, of: a, last: 2}, method: ema}",
     "stages[1].method: `wsm` averages its checkpoints equally"),
    ("{name: m, kind: merge, checkpoints: [a@final, base]}\n  - {name: c, tokens: 256, mix: {stories: 1.0}, "
     "schedule: {kind: continue}}", "stages[2].schedule: the stage before is a merge, which has no schedule"),
])
def test_bad_merge_is_one_line_before_any_work(shared, tmp_path, capsys, stage, expected):
    from cptkit.cli import main

    stages = f"""
  - {{name: a, tokens: 1024, mix: {{stories: 1.0}}}}
  - {stage}
"""
    recipe = write_recipe(tmp_path, shared, stages, header="validation: {tokens_per_source: 512}\ncheckpoint: {every_tokens: 512}")
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_merge_of_a_checkpoint_of_another_shape_names_both(shared, tmp_path, capsys):
    """A checkpoint folder of a wider vocabulary: refused before any training, naming the tensor,
    both shapes and both sides."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    from cptkit.checkpoint.integrity import write_manifest
    from cptkit.cli import main

    other = AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K")
    other.resize_token_embeddings(600)
    folder = tmp_path / "elsewhere" / "x@final"
    folder.mkdir(parents=True)
    dcp.save({"model": other.state_dict()}, checkpoint_id=str(folder / "state"))
    (folder / "meta.json").write_text("{}")
    write_manifest(folder)
    stages = f"""
  - {{name: a, tokens: 512, mix: {{stories: 1.0}}}}
  - {{name: m, kind: merge, checkpoints: [a@final, {folder}]}}
"""
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["run", str(write_recipe(tmp_path, shared, stages)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "stages[1].checkpoints[1]: " in err and "embed_tokens.weight [600, 64], the model (" in err, err
    assert "[512, 64]" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before --out was touched


def test_wsm_of_a_stage_that_never_decays_ends_with_its_final(shared, tmp_path):
    from cptkit.recipe import load_recipe

    stages = """
  - {name: a, tokens: 2560, mix: {stories: 1.0}}
  - {name: w, kind: merge, strategy: {name: wsm, of: a, last: 3}}
"""
    r = load_recipe(write_recipe(tmp_path, shared, stages))
    assert r.stages[1].checkpoints == ["step-0000008", "step-0000009", "a@final"]


@pytest.mark.parametrize("key", ["init", "checkpoints"])
def test_a_checkpoint_of_another_tokenizer_is_refused(shared, tmp_path, capsys, key):
    """A checkpoint records the fingerprint of its tokenizer: starting from, or merging, one of
    another tokenizer is refused before any work, naming both."""
    from conftest import fake_checkpoint
    from cptkit.cli import main

    folder = fake_checkpoint(tmp_path / "elsewhere" / "x@final", meta='{"tokenizer": "0123456789abcdef", "lr": 0.001}')
    second = (f"{{name: b, tokens: 256, mix: {{stories: 1.0}}, init: {folder}}}" if key == "init" else
              f"{{name: m, kind: merge, checkpoints: [a@final, {folder}]}}")
    stages = f"\n  - {{name: a, tokens: 256, mix: {{stories: 1.0}}}}\n  - {second}\n"
    out = tmp_path / "out"
    assert main(["run", str(write_recipe(tmp_path, shared, stages)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    where = "stages[1].init" if key == "init" else "stages[1].checkpoints[1]"
    assert f"{where}: {folder} was trained with tokenizer 0123456789ab, this run's (" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
