"""Checkpoints: exact round trip of model and optimizer, atomic writes, newest by save order."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cptkit.checkpoint import manager as mgr
from cptkit.checkpoint.manager import CheckpointManager
from cptkit.errors import CptError
from cptkit.recipe import OptimizerCfg
from cptkit.train.step import build_optimizer, train_step


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    return model, build_optimizer(model, OptimizerCfg(lr=1e-2, weight_decay=0.1))


def trained(seed=0, steps=2):
    model, opt = tiny(seed)
    for k in range(steps):
        tokens = torch.randint(0, 64, (2, 2, 8), generator=torch.Generator().manual_seed(k))
        train_step(model, opt, tokens, 1e-2, 1.0)
    return model, opt


def test_round_trip_is_bit_exact_and_training_continues_identically(tmp_path):
    model, opt = trained()
    ckpts = CheckpointManager(tmp_path)
    ckpts.save("a", model, opt, {"seq": 1, "lr": 1e-2})
    other, other_opt = tiny(seed=1)
    meta = ckpts.load(tmp_path / "a", other, other_opt)
    assert meta["name"] == "a" and meta["lr"] == 1e-2
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters()):
        assert torch.equal(p, q), n
    batch = torch.randint(0, 64, (2, 2, 8), generator=torch.Generator().manual_seed(99))
    a = train_step(model, opt, batch, 1e-2, 1.0)
    b = train_step(other, other_opt, batch, 1e-2, 1.0)
    assert a.loss == b.loss
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)  # equal optimizer moments too, or this step would differ


def test_failed_save_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    model, opt = trained()
    ckpts = CheckpointManager(tmp_path)
    ckpts.save("a", model, opt, {"seq": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mgr.dcp, "save", crash)
    with pytest.raises(OSError):
        ckpts.save("b", model, opt, {"seq": 2})
    with pytest.raises(OSError):
        ckpts.save("a", model, opt, {"seq": 3})  # overwriting keeps the old copy intact
    assert not (tmp_path / "b").exists()
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["seq"] == 1
    assert ckpts.latest() == tmp_path / "a"


def test_latest_is_by_save_sequence(tmp_path):
    model, opt = trained()
    ckpts = CheckpointManager(tmp_path)
    for seq, name in [(1, "z@final"), (2, "step-0000010"), (3, "b@pre-cooldown")]:
        ckpts.save(name, model, opt, {"seq": seq})
    assert ckpts.latest().name == "b@pre-cooldown"


def test_loading_into_another_architecture_is_a_clear_error(tmp_path):
    model, opt = trained()
    CheckpointManager(tmp_path).save("a", model, opt, {"seq": 1})
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    bigger = LlamaForCausalLM(cfg)
    with pytest.raises(CptError, match="cannot load checkpoint"):
        CheckpointManager.load(tmp_path / "a", bigger, build_optimizer(bigger, OptimizerCfg()))


def test_an_async_save_writes_the_state_of_when_it_was_called(tmp_path):
    """`checkpoint: {async: true}`: the weights are copied before training goes on, so changing
    them while the write runs does not change the checkpoint; it is named only once sealed."""
    from cptkit.checkpoint.integrity import verify

    def tiny():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2))

    model = tiny()
    opt = build_optimizer(model, OptimizerCfg())
    model(input_ids=torch.arange(8)[None], labels=torch.arange(8)[None]).loss.backward()
    opt.step()
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    manager = CheckpointManager(tmp_path, asynchronous=True)
    final = manager.save("c", model, opt, {"seq": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # training goes on while the thread writes
    assert manager.pending is not None or final.is_dir()
    manager.wait()
    assert manager.pending is None and manager.last_good == final and not list(tmp_path.glob(".tmp-*"))
    verify(final)
    back = tiny()
    CheckpointManager.load(final, back, build_optimizer(back, OptimizerCfg()))
    for n, p in back.named_parameters():
        assert torch.equal(p, saved[n]), n


def test_an_async_write_that_fails_surfaces_and_leaves_earlier_checkpoints(tmp_path, monkeypatch):
    """The writer thread's error is raised when the save is finished (`wait`), its temporary
    folder is gone, and the checkpoint before it is intact and still the last good one."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    from cptkit.checkpoint.integrity import verify

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))
    opt = build_optimizer(model, OptimizerCfg())
    manager = CheckpointManager(tmp_path, asynchronous=True)
    first = manager.save("first", model, opt, {"seq": 1})
    manager.wait()

    def broken(self, *args, **kwargs):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(FileSystemWriter, "write_data", broken)
    manager.save("second", model, opt, {"seq": 2})
    with pytest.raises(OSError, match="Input/output error"):
        manager.wait()
    assert manager.pending is None and manager.last_good == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]
    verify(first)
