"""Behavioural tests for replay-buffer additions: exact budgets, the three policies, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cptkit.data.buffer import ReplayBuffer, length_quartiles
from cptkit.eval.document_loss import document_losses
from cptkit.data.shards import Shard, ShardWriter
from cptkit.recipe import BufferAddCfg, budget_tokens, load_recipe
import test_recipe
from test_recipe import changed, error_of, write

base = test_recipe.base  # the small valid recipe fixture of test_recipe
EOS = 1
POLICIES = ["uniform", "representative", "hard"]


def make_shard(prefix: Path, docs: list[np.ndarray], files: list[int] | None = None) -> Shard:
    """A shard of `docs`; with `files` (documents per input file) also its `<prefix>.json`."""
    with ShardWriter(prefix, np.uint16) as w:
        for d in docs:
            w.add(d)
    if files is not None:
        inputs, first = [], 0
        for i, n in enumerate(files):
            inputs.append({"path": f"input{i}.txt", "first_document": first, "documents": n})
            first += n
        Path(f"{prefix}.json").write_text(json.dumps({"inputs": inputs}))
    return Shard(prefix)


def random_docs(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[np.ndarray]:
    return [np.append(rng.integers(2, 60, size=rng.integers(lo, hi) - 1), EOS) for _ in range(n)]


def by_mean(docs: list[np.ndarray]) -> np.ndarray:
    """A stand-in scorer for tests about budgets rather than the model."""
    return np.array([float(d.mean()) for d in docs])


def add(root: Path, shard: Shard, doc_ids: np.ndarray, tokens: int, policy: str, seed: int = 0,
        version: int = 0, stage: str = "one", **kw) -> tuple[Shard, dict]:
    buf = ReplayBuffer(root)
    v = buf.add(version, stage, "src", shard, doc_ids, tokens, seed, policy=policy,
                score=kw.pop("score", by_mean), **kw)
    return buf.shard(v), json.loads((root / "manifest.json").read_text())["additions"][-1]


@pytest.fixture
def source(tmp_path) -> tuple[Shard, np.ndarray]:
    """200 documents of 5..80 tokens; every 5th is held out for validation."""
    docs = random_docs(np.random.default_rng(0), 200, 5, 80)
    shard = make_shard(tmp_path / "src", docs)
    train = np.setdiff1d(np.arange(200), np.arange(0, 200, 5))
    return shard, train


# ---------------------------------------------------------------------------------------------
# budgets and provenance, for every policy


@pytest.mark.parametrize("policy", POLICIES)
def test_exact_token_budget_and_documents_are_source_prefixes(source, tmp_path, policy):
    shard, train = source
    buf, rec = add(tmp_path / "buf", shard, train, 1000, policy)
    assert buf.num_tokens == 1000
    assert rec["tokens"] == 1000 and rec["budget"] == 1000 and rec["policy"] == policy
    assert len(buf) == len(rec["documents"])
    for i, doc_id in enumerate(rec["documents"]):
        got, want = buf[i], shard[doc_id]
        assert got[-1] == EOS  # a cut document keeps its EOS
        assert np.array_equal(got[:-1], want[: len(got) - 1])


@pytest.mark.parametrize("policy", POLICIES)
def test_never_takes_a_document_outside_doc_ids(source, tmp_path, policy):
    shard, train = source
    everything = int(shard.lengths[train].sum())  # the whole training split: nothing else may fill it
    _, rec = add(tmp_path / "buf", shard, train, everything, policy, pool=1.0)
    assert sorted(rec["documents"]) == sorted(train.tolist())
    assert not set(rec["documents"]) & set(range(0, 200, 5))


@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_buffer_other_seed_other_buffer(source, tmp_path, policy):
    shard, train = source
    a, ra = add(tmp_path / "a", shard, train, 800, policy, seed=3)
    b, rb = add(tmp_path / "b", shard, train, 800, policy, seed=3)
    c, rc = add(tmp_path / "c", shard, train, 800, policy, seed=4)
    assert ra["documents"] == rb["documents"] and np.array_equal(a.tokens, b.tokens)
    assert ra["documents"] != rc["documents"]


def test_second_addition_keeps_the_first(source, tmp_path):
    shard, train = source
    first, _ = add(tmp_path / "buf", shard, train, 500, "representative")
    second, _ = add(tmp_path / "buf", shard, train, 300, "hard", version=1, stage="two")
    assert second.num_tokens == 800
    assert np.array_equal(second.tokens[:500], first.tokens)


def test_fraction_budget_resolves_against_the_source(source, tmp_path):
    shard, train = source
    train_tokens = int(shard.lengths[train].sum())
    cfg = BufferAddCfg(source="src", fraction=0.25)
    assert budget_tokens(cfg, train_tokens) == int(0.25 * train_tokens)
    assert budget_tokens(BufferAddCfg(source="src", fraction=1.0), train_tokens) == train_tokens
    assert budget_tokens(BufferAddCfg(source="src", tokens=700), train_tokens) == 700
    buf, _ = add(tmp_path / "buf", shard, train, budget_tokens(cfg, train_tokens), "uniform")
    assert buf.num_tokens == int(0.25 * train_tokens)


def test_uniform_order_unchanged_from_before_policies(source, tmp_path):
    """Runs recorded before policies existed must rebuild the same buffer on resume."""
    from cptkit.data.rng import generator

    shard, train = source
    _, rec = add(tmp_path / "buf", shard, train, 600, "uniform", seed=7)
    old = train[generator(7, "buffer", "one").permutation(len(train))]
    assert rec["documents"] == old[: len(rec["documents"])].tolist()


# ---------------------------------------------------------------------------------------------
# representative: the buffer keeps the new data's mix of files and lengths


@pytest.mark.parametrize("with_metadata", [True, False])
def test_representative_keeps_file_and_length_quartile_shares(tmp_path, with_metadata):
    rng = np.random.default_rng(1)
    short, long = random_docs(rng, 300, 4, 40), random_docs(rng, 100, 150, 400)
    shard = make_shard(tmp_path / "src", short + long, files=[300, 100] if with_metadata else None)
    train = np.setdiff1d(np.arange(400), np.arange(0, 400, 7))
    file_of = (train >= 300).astype(int)
    quart = length_quartiles(shard.lengths[train])
    for budget in (1500, 4000, 9000):
        _, rec = add(tmp_path / f"buf{budget}", shard, train, budget, "representative")
        chosen = np.array(rec["documents"])
        pos = np.searchsorted(train, chosen)
        n = len(chosen)
        for f in (0, 1):
            assert abs(np.sum(file_of[pos] == f) - n * np.mean(file_of == f)) <= 2, (budget, f)
        for q in range(4):
            assert abs(np.sum(quart[pos] == q) - n * np.mean(quart == q)) <= 2, (budget, q)


# ---------------------------------------------------------------------------------------------
# hard: the documents the end-of-stage model finds hardest


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def pattern_doc(start: int, n: int = 32) -> np.ndarray:
    return np.append((start + np.arange(n - 1)) % 8 + 2, EOS)  # 2,3,...,9,2,3,...


@pytest.fixture(scope="module")
def trained():
    """A tiny model that has learned the counting pattern (and nothing else)."""
    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.from_numpy(np.stack([pattern_doc(s) for s in range(8)]).astype(np.int64))
    model.train()
    for _ in range(50):
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_hard_policy_keeps_the_documents_the_model_finds_hardest(trained, tmp_path):
    rng = np.random.default_rng(2)
    noise = [np.append(rng.integers(10, 64, size=31), EOS) for _ in range(4)]
    docs = [pattern_doc(s) for s in range(8)] + noise  # noise is documents 8..11
    shard = make_shard(tmp_path / "src", docs)
    score = lambda d: document_losses(trained, d, 16, torch.device("cpu"), 3)  # noqa: E731
    _, rec = add(tmp_path / "buf", shard, np.arange(12), 4 * 32, "hard", pool=4.0, score=score)
    assert sorted(rec["documents"]) == [8, 9, 10, 11]
    assert rec["scores"] == sorted(rec["scores"], reverse=True) and len(rec["scores"]) == 4
    assert min(rec["scores"]) > 2.0  # near-uniform guessing over the noise tokens


def test_hard_pool_is_a_seeded_sample_of_about_pool_times_the_budget(source, tmp_path):
    shard, train = source
    seen = []
    score = lambda d: (seen.append(sum(len(x) for x in d)), by_mean(d))[1]  # noqa: E731
    add(tmp_path / "buf", shard, train, 500, "hard", pool=2.0, score=score)
    assert 1000 <= seen[0] < 1000 + shard.lengths.max()


def test_scoring_leaves_weights_and_train_mode_unchanged(trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.train()
    document_losses(trained, [pattern_doc(0), pattern_doc(3, 20)], 16, torch.device("cpu"), 2)
    assert trained.training
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


def test_scores_do_not_depend_on_batching_padding_or_text_past_the_window(trained):
    rng = np.random.default_rng(3)
    docs = [np.append(rng.integers(2, 64, size=n - 1), EOS) for n in (5, 40, 12, 2, 16, 30)]
    cpu = torch.device("cpu")
    one_by_one = document_losses(trained, docs, 16, cpu, 1)
    batched = document_losses(trained, docs, 16, cpu, 4)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
    window = document_losses(trained, [d[:16] for d in docs], 64, cpu, 1)
    np.testing.assert_allclose(one_by_one, window, rtol=1e-5, atol=1e-6)
    x = torch.from_numpy(docs[1][:16].astype(np.int64))[None]
    with torch.no_grad():
        trained.eval()
        direct = trained(input_ids=x, labels=x).loss.item()
        trained.train()
    assert one_by_one[1] == pytest.approx(direct, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# recipe errors: one line each, naming the field


RECIPE_BAD = {
    "tokens_and_fraction": ({"tokens": 128, "fraction": 0.5}, ["stages[0].buffer_add", "exactly one of `tokens`"]),
    "neither": ({}, ["stages[0].buffer_add", "exactly one of `tokens`"]),
    "fraction_zero": ({"fraction": 0}, ["stages[0].buffer_add.fraction"]),
    "fraction_above_one": ({"fraction": 1.5}, ["stages[0].buffer_add.fraction"]),
    "pool_below_one": ({"tokens": 128, "pool": 0.5}, ["stages[0].buffer_add.pool"]),
    "unknown_policy": ({"tokens": 128, "policy": "easy"}, ["stages[0].buffer_add.policy"]),
}


@pytest.mark.parametrize("case", list(RECIPE_BAD))
def test_bad_buffer_add_is_one_problem_naming_the_field(base, tmp_path, case):
    fields, expected = RECIPE_BAD[case]
    e = error_of(write(tmp_path, changed(base, lambda d: d["stages"][0].update(buffer_add={"source": "a", **fields}))))
    for text in expected:
        assert text in str(e)
    assert len(e.problems) == 1, e.problems
    assert "\n" not in str(e)


def test_fraction_and_policy_accepted(base, tmp_path):
    data = changed(base, lambda d: d["stages"][0].update(
        buffer_add={"source": "a", "fraction": 0.5, "policy": "hard", "pool": 2}))
    add_cfg = load_recipe(write(tmp_path, data)).stages[0].buffer_add
    assert (add_cfg.fraction, add_cfg.tokens, add_cfg.policy, add_cfg.pool) == (0.5, None, "hard", 2.0)


def test_a_run_fills_the_buffer_with_its_hardest_documents(tmp_path, shared):
    """Through `cpt run`: a `fraction` budget and the `hard` policy scored by the end-of-stage
    model; the next stage replays exactly those documents."""
    from cptkit.runner import run_recipe

    recipe = tmp_path / "hard.yaml"
    recipe.write_text(f"""
model: {{path: {shared}/models/stories260K}}
seq_len: 64
micro_batch: 4
batch_tokens: 256
sources:
  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}
  math: {{paths: [{shared}/corpora/math/gsm8k_train.jsonl], template: "{{question}}"}}
validation: {{tokens_per_source: 1024}}
stages:
  - name: a
    tokens: 2560
    mix: {{stories: 0.5, math: 0.5}}
    buffer_add: {{source: math, fraction: 0.002, policy: hard, pool: 3}}
  - name: b
    tokens: 1280
    mix: {{stories: 0.5, buffer: 0.5}}
""")
    out = tmp_path / "run"
    run_recipe(recipe, out)
    added = json.loads((out / "buffer/manifest.json").read_text())["additions"][0]
    train = np.setdiff1d(np.arange(len(Shard(added["shard"]))), np.load(out / "data/math.val.npy"))
    expected = int(0.002 * int(Shard(added["shard"]).lengths[train].astype(np.int64).sum()))
    assert (added["policy"], added["budget"], added["tokens"]) == ("hard", expected, expected)
    assert added["scores"] == sorted(added["scores"], reverse=True) and len(added["scores"]) == len(added["documents"])
    assert not set(added["documents"]) & set(np.load(out / "data/math.val.npy").tolist())
    final = json.loads((out / "checkpoints/b@final/meta.json").read_text())["data_seen"]
    assert final["buffer@v1"]["samples"] == 10  # half of stage b's 20 samples came from the buffer
