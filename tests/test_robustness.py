"""Edge cases found in review: a fresh optimizer's checkpoint, `init:` paths with `@`, an output
folder left by a run that failed early, buffer documents keeping their EOS, source roles."""

import numpy as np
import pytest
import torch

from cptkit.build import claim_out_dir
from cptkit.checkpoint.manager import CheckpointManager
from cptkit.data.buffer import ReplayBuffer
from cptkit.data.shards import Shard, ShardWriter
from cptkit.errors import CptError
from cptkit.recipe import StageCfg
from conftest import small_recipe
from test_checkpoint import tiny
from cptkit.train.step import train_step


def test_checkpoint_before_the_first_step_does_not_touch_the_optimizer(tmp_path):
    """DCP's get_state_dict initialises a fresh AdamW with a zero-LR step; that must not count."""
    batch = torch.randint(0, 64, (2, 2, 8), generator=torch.Generator().manual_seed(0))
    model, opt = tiny()
    CheckpointManager(tmp_path).save("pre", model, opt, {"seq": 1})
    assert not opt.state
    a = train_step(model, opt, batch, 1e-2, 1.0)
    ref, ref_opt = tiny()
    b = train_step(ref, ref_opt, batch, 1e-2, 1.0)
    assert a.loss == b.loss
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    # and loading that checkpoint gives a fresh optimizer back
    other, other_opt = tiny(seed=3)
    CheckpointManager.load(tmp_path / "pre", other, other_opt)
    assert not other_opt.state


def test_init_path_may_contain_an_at_sign():
    ref = StageCfg(name="s", tokens=1, mix={"a": 1}, init="a@pre-cooldown")
    path = StageCfg(name="s", tokens=1, mix={"a": 1}, init="/runs/x/checkpoints/a@pre-cooldown")
    assert ref.init_ref == ("a", "pre-cooldown") and ref.init_path is None
    assert path.init_ref is None and str(path.init_path) == "/runs/x/checkpoints/a@pre-cooldown"


def test_output_folder_of_a_run_without_checkpoint_starts_over(tmp_path):
    """Only files the run wrote, and that nobody changed since, are removed; the cache stays."""
    out = tmp_path / "run"
    folder = claim_out_dir(out, resume=False, recipe_hash="h", checkpoints=CheckpointManager(out / "checkpoints"))
    (out / "data").mkdir()
    (out / "data" / "wiki.val.npy").write_bytes(b"stale")
    (out / "recipe.yaml").write_text("old")
    (out / "shards").mkdir()
    (out / "shards" / "wiki.abc.bin").write_bytes(b"cache")
    folder.record()
    (out / "data" / "notes.txt").write_text("mine, added later")
    folder.unlock()
    claim_out_dir(out, resume=False, recipe_hash="h", checkpoints=CheckpointManager(out / "checkpoints"))
    assert not (out / "recipe.yaml").exists() and not (out / "data" / "wiki.val.npy").exists()
    assert (out / "data" / "notes.txt").read_text() == "mine, added later"
    assert (out / "shards" / "wiki.abc.bin").read_bytes() == b"cache"


def test_output_folder_with_foreign_files_or_a_file_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CptError, match="not a cpt run"):
        claim_out_dir(tmp_path / "mine", False, "h", CheckpointManager(tmp_path / "mine" / "checkpoints"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "f").write_text("x")
    with pytest.raises(CptError, match="is a file"):
        claim_out_dir(tmp_path / "f", False, "h", CheckpointManager(tmp_path / "c"))


def test_buffer_cut_keeps_eos_and_exact_budget(tmp_path):
    eos = 2
    with ShardWriter(tmp_path / "src", np.uint16) as w:
        for i in range(10):
            w.add(list(range(10, 10 + 20 + i)) + [eos])
    shard = Shard(tmp_path / "src")
    buf = ReplayBuffer(tmp_path / "buffer")
    v1 = buf.add(0, "a", "src", shard, np.arange(10), tokens=50, seed=0)
    v2 = buf.add(v1, "b", "src", shard, np.arange(10), tokens=33, seed=0)
    first, second = buf.shard(v1), buf.shard(v2)
    assert first.num_tokens == 50 and second.num_tokens == 83
    assert all(int(second[i][-1]) == eos for i in range(len(second)))  # every document still ends
    assert all(np.array_equal(first[i], second[i]) for i in range(len(first)))  # v2 extends v1


def test_source_roles_follow_buffer_add_and_replay(shared, tmp_path):
    """In the issue's example, stage `wiki` adapts to wiki and replays stories (forgetting)."""
    from cptkit.report.summary import source_roles

    recipe = small_recipe(tmp_path, shared, """
  - {name: wiki, tokens: 512, mix: {stories: 0.05, wiki: 0.95}, buffer_add: {source: wiki, tokens: 100}}
  - {name: math, tokens: 512, mix: {stories: 0.33, math: 0.33, buffer: 0.34}}
  - {name: cooldown, tokens: 512, mix: {stories: 0.33, math: 0.33, buffer: 0.34}, schedule: {kind: cooldown}}
""")
    assert source_roles(recipe) == [
        (["wiki"], ["stories"]),
        (["math"], ["stories", "wiki"]),
        ([], ["stories", "wiki", "math"]),
    ]
