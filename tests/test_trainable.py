"""`trainable:` and `optimizer_state:` on the real stories260K model: frozen parameters stay
bit-identical through a stage (weight decay on), and AdamW's moments are kept, reset, or reset only
for what the stage before kept frozen, measured by each parameter's step count."""

import pytest
import torch

from conftest import killed_at_step, small_recipe


def train_recipe(tmp_path, shared, stages: str, name: str):
    from cptkit.build import build_run
    from cptkit.train.loop import train

    recipe = small_recipe(tmp_path, shared, stages, header="validation: {tokens_per_source: 512}",
                          optimizer="{lr: 1.0e-3, weight_decay: 0.1}")
    run = build_run(recipe, name, tmp_path / name, resume=False)
    train(run)
    return run


def steps(run, param_name: str) -> int:
    param = dict(run.model.named_parameters())[param_name]
    return int(run.optimizer.state[param]["step"]) if param in run.optimizer.state else 0


def test_frozen_parameters_are_bit_identical(tmp_path, shared):
    from transformers import AutoModelForCausalLM

    from cptkit.checkpoint.manager import CheckpointManager
    from cptkit.train.step import build_optimizer

    run = train_recipe(tmp_path, shared, """
  - {name: a, tokens: 2560, mix: {stories: 1}}
  - {name: b, tokens: 2560, mix: {wiki: 1}, trainable: [norms]}
""", "frozen")
    before = AutoModelForCausalLM.from_pretrained(str(shared / "models" / "stories260K"))
    CheckpointManager.load(run.checkpoints.path("a@final"), before, build_optimizer(before, run.recipe.optimizer))
    old, new = dict(before.named_parameters()), dict(run.model.named_parameters())
    frozen = [n for n in new if "norm" not in n]
    assert len(frozen) == 36 and all(torch.equal(old[n], new[n]) for n in frozen)
    assert all(not torch.equal(old[n], new[n]) for n in new if "norm" in n)


@pytest.mark.parametrize("policy,layer,norm", [("keep", 4 + 2, 4 + 3 + 2), ("reset-new", 2, 4 + 3 + 2),
                                               ("reset", 2, 2)])
def test_optimizer_state_policies(tmp_path, shared, policy, layer, norm):
    """a trains all for 4 steps, b only norms for 3, c all for 2 with the policy: a layer's moments
    come from a and c (keep), from c alone (reset-new: it was frozen in b), or c alone (reset)."""
    run = train_recipe(tmp_path, shared, f"""
  - {{name: a, tokens: 1024, mix: {{stories: 1}}}}
  - {{name: b, tokens: 768, mix: {{wiki: 1}}, trainable: [norms]}}
  - {{name: c, tokens: 512, mix: {{wiki: 1}}, optimizer_state: {policy}}}
""", policy)
    assert steps(run, "model.layers.0.mlp.up_proj.weight") == layer
    assert steps(run, "model.norm.weight") == norm
    assert steps(run, "model.embed_tokens.weight") == layer


def test_resume_inside_a_frozen_stage_equals_uninterrupted(tmp_path, shared, monkeypatch):
    """Killed in the middle of the norms-only stage, resumed: the same weights and moments as a run
    that was never stopped (the frozen layers' moments from stage a survive the checkpoint)."""
    import cptkit.train.loop as loop
    from cptkit.build import build_run

    stages = """
  - {name: a, tokens: 1024, mix: {stories: 1}}
  - {name: b, tokens: 1024, mix: {wiki: 1}, trainable: [norms]}
  - {name: c, tokens: 512, mix: {wiki: 1}}
"""
    whole = train_recipe(tmp_path, shared, stages, "whole")
    recipe = small_recipe(tmp_path, shared, stages, header="validation: {tokens_per_source: 512}\n"
                          "checkpoint: {every_tokens: 256}", optimizer="{lr: 1.0e-3, weight_decay: 0.1}")
    killed_at_step(monkeypatch, 7, lambda: loop.train(build_run(recipe, "cut", tmp_path / "cut", resume=False)))
    resumed = build_run(recipe, "cut", tmp_path / "cut", resume=True)
    loop.train(resumed)
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
        assert steps(whole, name) == steps(resumed, name) > 0
        if p in whole.optimizer.state:
            assert torch.equal(whole.optimizer.state[p]["exp_avg"], resumed.optimizer.state[q]["exp_avg"]), name
