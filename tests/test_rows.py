"""Row-level `trainable:` and `strategy: eeve` on stories260K extended by 22 tokens (ids 512-533):
rows outside the stage's set are bit-identical after it (weight decay on), the optimizer holds
moments for the trained rows only, their gradient is the matrix's own, resume is exact."""

import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

from conftest import extended_model, killed_at_step

NEW = list(range(512, 534))


def vi_recipe(tmp_path, shared, model, stages: str, header: str = "", name: str = "r"):
    """A recipe over the extended model with a Vietnamese source (and TinyStories): 64-token
    samples, 256 tokens a step, the given `stages:` block."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
model: {{path: {model}}}
seq_len: 64
micro_batch: 4
batch_tokens: 256
sources:
  vi: {{paths: [{shared}/corpora/vi/viwiki.jsonl]}}
  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}
{header}
stages:
{stages}
""")
    return path


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def vi_batch(model_dir, n=4, seq=64):
    """Token ids of Vietnamese text under the extended tokenizer: new ids occur in it."""
    import json

    from transformers import AutoTokenizer

    from conftest import SHARED

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    with open(SHARED / "corpora" / "vi" / "viwiki.jsonl", encoding="utf-8") as f:
        text = " ".join(json.loads(next(f))["text"] for _ in range(3))
    ids = torch.tensor(tok(text).input_ids[: n * seq]).view(1, n, seq)
    assert any(int(i) in NEW for i in ids.flatten())
    return ids


@pytest.mark.parametrize("untie", [False, True])
def test_rows_get_the_matrix_gradient_and_only_they_hold_optimizer_state(tmp_path, shared, untie):
    from cptkit.model.trainable import set_trainable, train_rows
    from cptkit.recipe import OptimizerCfg
    from cptkit.train.step import build_optimizer, train_step

    path = extended_model(shared, tmp_path, untie=untie)
    batch = vi_batch(path)
    groups = ["new_input_rows", "new_output_rows"]
    # the reference: the whole matrices train, so autograd gives their full gradient
    ref = load(path)
    ref(input_ids=batch[0], labels=batch[0]).loss.backward()
    refs = [ref.get_input_embeddings().weight] + ([ref.get_output_embeddings().weight] if untie else [])

    model = load(path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimizerCfg(lr=1e-2, weight_decay=0.1))
    set_trainable(model, groups)
    rows = train_rows(model, opt, groups, NEW)
    assert len(rows) == len(refs)  # tied: one matrix, one set of rows, the sum of both gradients
    model(input_ids=batch[0], labels=batch[0]).loss.backward()
    for r, w in zip(rows, refs):
        torch.testing.assert_close(r.rows.grad, w.grad[NEW], rtol=1e-5, atol=1e-7)
    opt.zero_grad(set_to_none=True)

    train_step(model, opt, batch, lr=1e-2, grad_clip=1.0)
    assert set(opt.state) == {r.rows for r in rows}
    assert all(torch.equal(r.weight[NEW], r.rows) for r in rows)  # the matrix follows after every step
    assert all(opt.state[r.rows]["exp_avg"].shape == (len(NEW), 64) for r in rows)
    for r in rows:
        release_to = r.weight
        r.release()
        assert torch.equal(release_to[NEW], r.rows.detach())
    assert not opt.state and len(opt.param_groups) == 2
    assert not [n for n in model.state_dict() if "cpt_rows" in n]
    for name, p in model.named_parameters():
        if "embed_tokens" in name or "lm_head" in name:
            assert torch.equal(p[:512], before[name][:512]), name  # old rows: weight decay did not touch them
            assert not torch.equal(p[512:], before[name][512:]), name
        else:
            assert torch.equal(p, before[name]), name


def run_eeve(tmp_path, shared, untie: bool, name: str, extra: str = ""):
    from cptkit.build import build_run
    from cptkit.recipe import load_recipe
    from cptkit.train.loop import train

    stages, model = 7 if untie else 4, extended_model(shared, tmp_path, untie=untie)
    recipe = vi_recipe(tmp_path, shared, model,
                       f"  - {{name: vi, tokens: {stages * 512}, mix: {{vi: 0.8, stories: 0.2}}, strategy: eeve}}",
                       header="optimizer: {lr: 1.0e-2, weight_decay: 0.1}\nvalidation: {tokens_per_source: 512}\n" + extra,
                       name=name)
    run = build_run(load_recipe(recipe), name, tmp_path / name, resume=False)
    train(run)
    return run, model


def weights_at(run, checkpoint: str, model_dir) -> dict[str, torch.Tensor]:
    from cptkit.checkpoint.manager import CheckpointManager
    from cptkit.train.step import build_optimizer

    m = load(model_dir)
    CheckpointManager.load(run.checkpoints.path(checkpoint), m, build_optimizer(m, run.recipe.optimizer))
    return {n: p.detach().clone() for n, p in m.named_parameters()}


ROW_OF = {"input_embeddings": "new_input_rows", "output_embeddings": "new_output_rows"}


def role(name: str) -> str:
    if "embed_tokens" in name:
        return "input_embeddings"
    if "lm_head" in name:
        return "output_embeddings"
    return "norms" if "norm" in name else "layers"


@pytest.mark.parametrize("untie", [False, True])
def test_every_eeve_stage_leaves_what_it_freezes_bit_identical(tmp_path, shared, untie):
    run, model_dir = run_eeve(tmp_path, shared, untie, "eeve")
    names = [st.name for st in run.recipe.stages]
    assert names == ([f"vi.eeve{k}" for k in range(1, 7)] + ["vi"] if untie else
                     ["vi.eeve1-3", "vi.eeve4-5", "vi.eeve6", "vi"])  # stage 7 keeps the name: `vi@final`
    from cptkit.model.load import new_token_ids
    from cptkit.train.finish import export_model

    export_model(run)
    assert new_token_ids(run.out / "model") == NEW  # the export keeps the record: later runs can train new rows
    before = {n: p.detach().clone() for n, p in load(model_dir).named_parameters()}
    for st in run.recipe.stages:
        after = weights_at(run, f"{st.name}@final", model_dir)
        groups = set(st.trainable)
        for name, p in after.items():
            r = role(name)
            tied_roles = {r} | ({"input_embeddings", "output_embeddings"} if not untie and "embed" in name else set())
            whole = "all" in groups or tied_roles & groups
            rows = {ROW_OF[t] for t in tied_roles if t in ROW_OF} & groups
            if whole:
                assert not torch.equal(p, before[name]), (st.name, name)
            elif rows:
                assert torch.equal(p[:512], before[name][:512]), (st.name, name)
                assert not torch.equal(p[512:], before[name][512:]), (st.name, name)
            else:
                assert torch.equal(p, before[name]), (st.name, name)
        before = after


@pytest.mark.parametrize("untie,die_at", [(False, 2), (True, 6)])
def test_resume_inside_a_row_stage_equals_uninterrupted(tmp_path, shared, monkeypatch, untie, die_at):
    """Killed inside a new-rows stage (tied: step 2 of eeve1-3; untied: step 6, inside eeve3, two
    row parameters), resumed from a checkpoint that holds the rows and their moments: the same
    weights as a run never stopped."""
    import cptkit.train.loop as loop
    from cptkit.build import build_run
    from cptkit.recipe import load_recipe

    whole, _ = run_eeve(tmp_path, shared, untie, "whole")
    killed_at_step(monkeypatch, die_at, lambda: run_eeve(tmp_path / "cut", shared, untie, "cut", extra="checkpoint: {every_tokens: 256}"))
    saved = max((tmp_path / "cut" / "cut" / "checkpoints").glob("step-*"))
    keys = dcp.FileSystemReader(str(saved / "state")).read_metadata().state_dict_metadata
    assert "model.model.embed_tokens.cpt_rows" in keys and "optim.state.model.embed_tokens.cpt_rows.exp_avg" in keys
    assert untie == ("model.lm_head.cpt_rows" in keys)
    resumed = build_run(load_recipe(tmp_path / "cut" / "cut.yaml"), "cut", tmp_path / "cut" / "cut", resume=True)
    loop.train(resumed)
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name


def test_row_entries_need_an_extended_model(tmp_path, shared):
    from conftest import small_recipe

    with pytest.raises(Exception, match=r"stages\[0\].trainable: `new_input_rows` names nothing"):
        small_recipe(tmp_path, shared, "  - {name: a, tokens: 512, mix: {stories: 1}, trainable: [new_input_rows]}\n")
    with pytest.raises(Exception, match=r"stages\[0\].strategy: `eeve` trains the rows of added tokens"):
        small_recipe(tmp_path, shared, "  - {name: a, tokens: 2048, mix: {stories: 1}, strategy: eeve}\n")
    p = subprocess.run([sys.executable, "-m", "cptkit.cli", "plan", str(tmp_path / "small.yaml")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "eeve" in p.stderr


def test_eeve_budgets_must_match_its_stages(tmp_path, shared):
    from cptkit.errors import RecipeError
    from cptkit.recipe import load_recipe

    recipe = vi_recipe(tmp_path, shared, extended_model(shared, tmp_path),
                       "  - {name: vi, tokens: 2560, mix: {vi: 1}, strategy: {name: eeve, tokens: [512, 512, 512]}}")
    with pytest.raises(RecipeError, match=r"strategy.tokens: 3 budgets for 4 EEVE stages \(tied embeddings\)"):
        load_recipe(recipe)
    recipe.write_text(recipe.read_text().replace("[512, 512, 512]", "[256, 512, 768, 1024]"))
    stages = load_recipe(recipe).stages
    assert [s.tokens for s in stages] == [256, 512, 768, 1024]
    assert [s.trainable for s in stages] == [["new_input_rows"], ["input_embeddings"], ["all"], ["layers", "norms"]]
    assert [s.schedule.kind for s in stages][1:] == ["continue"] * 3


def test_rows_stand_in_exactly_for_a_linear_head_with_bias_and_refuse_other_modules():
    """Attaching rows (R = W's rows) changes nothing a model computes, bias included (Phi's
    lm_head); an embedding module with its own forward is refused rather than mis-computed."""
    from transformers import PhiConfig, PhiForCausalLM

    from cptkit.errors import CptError
    from cptkit.model.trainable import train_rows
    from cptkit.recipe import OptimizerCfg
    from cptkit.train.step import build_optimizer

    torch.manual_seed(0)
    model = PhiForCausalLM(PhiConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=64)).eval()
    ids = torch.randint(0, 600, (2, 16))
    ids[0, :4] = torch.tensor([512, 530, 599, 7])
    with torch.no_grad():
        before = model(ids).logits
    opt = build_optimizer(model, OptimizerCfg())
    rows = train_rows(model, opt, ["new_input_rows", "new_output_rows"], list(range(512, 600)))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-6)
    for r in rows:
        r.release()

    class Scaled(torch.nn.Embedding):
        def forward(self, x):
            return super().forward(x) * 2.0

    scaled = Scaled(600, 32)
    model.set_input_embeddings(scaled)
    with pytest.raises(CptError, match=r"`new_input_rows` cannot train rows of this model: its Scaled is not a plain"):
        train_rows(model, opt, ["new_input_rows"], list(range(512, 600)))


def test_an_extended_model_runs_with_its_own_tokenizer(tmp_path, shared):
    from cptkit.build import build_run
    from cptkit.errors import CptError
    from cptkit.recipe import load_recipe

    path = vi_recipe(tmp_path, shared, extended_model(shared, tmp_path),
                     "  - {name: vi, tokens: 1024, mix: {vi: 1}, trainable: [new_input_rows]}",
                     header=f"tokenizer: {shared}/models/stories260K")
    with pytest.raises(CptError, match="tokenizer: 512 tokens, but .* extended to 534 .*use the tokenizer saved"):
        build_run(load_recipe(path), "r", tmp_path / "out", resume=False)


def test_a_later_stage_starts_from_the_eeve_stage_by_its_name(tmp_path, shared):
    from cptkit.recipe import load_recipe

    vi_recipe(tmp_path, shared, extended_model(shared, tmp_path), """
  - {name: vi, tokens: 2048, mix: {vi: 0.9, stories: 0.1}, strategy: eeve, schedule: {kind: constant, lr: 1.0e-3}}
  - {name: after, tokens: 512, init: vi@final, mix: {stories: 1}}""", header="base_sources: [stories]")
    stages = load_recipe(tmp_path / "r.yaml").stages
    assert [s.name for s in stages] == ["vi.eeve1-3", "vi.eeve4-5", "vi.eeve6", "vi", "after"]
    assert all(s.new == ["vi"] for s in stages[:4])  # every EEVE stage measures adaptation on vi


@pytest.mark.parametrize("stage,message", [
    ("{name: vi, tokens: 2048, mix: {vi: 1}, strategy: eeve, trainable: [layers]}",
     r"stages\[0\].trainable: the strategy `eeve` sets what each of its stages trains"),
    ("{name: vi, tokens: 2048, mix: {vi: 1}, strategy: {name: eeve, tokens: [512, 512, 512, 256]}}",
     r"budgets \[512, 512, 512, 256\] must each be at least one step \(256 tokens\) and sum to the stage's tokens"),
    ("{name: vi, tokens: 2048, mix: {vii: 1}, strategy: eeve}", r"^[^;]*stages\[0\].mix.vii: unknown source[^;]*$"),
])
def test_eeve_refuses_what_it_would_override(tmp_path, shared, stage, message):
    from cptkit.errors import RecipeError
    from cptkit.recipe import load_recipe

    vi_recipe(tmp_path, shared, extended_model(shared, tmp_path), f"  - {stage}")
    with pytest.raises(RecipeError) as e:
        load_recipe(tmp_path / "r.yaml")
    assert __import__("re").search(message, str(e.value).split(": ", 1)[1]), str(e.value)
