"""Several ranks on CPU (gloo, 2 processes under torchrun): the same training as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cpt.distributed.batch import rank_accum, rank_slice
from cpt.distributed.fsdp import decoder_layers
from cpt.errors import CptError

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def run_ranks(n: int, script: str, *args) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}  # two ranks share two cores
    if n == 1:
        cmd = [sys.executable, str(HERE / "ranks" / script), *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
               str(HERE / "ranks" / script), *map(str, args)]
        env.pop("WORLD_SIZE", None)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_ranks_train_like_one(tmp_path, shared):
    """The same global batches split over 2 ranks: every loss and gradient norm within 1e-5
    relative of one process's, and the frozen embedding rows bit-identical."""
    model = shared / "models" / "stories260K"
    run_ranks(1, "train_steps.py", model, tmp_path / "one.json")
    run_ranks(2, "train_steps.py", model, tmp_path / "two.json")
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert (one["world"], two["world"]) == (1, 2)
    for a, b in zip(one["steps"], two["steps"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert one["steps"][-1]["loss"] < one["steps"][0]["loss"] - 0.05  # it trained
    assert one["frozen_same"] and two["frozen_same"]


def test_each_rank_takes_its_contiguous_part_of_the_global_batch():
    tokens = torch.arange(8 * 3).reshape(8, 3)
    parts = [rank_slice(tokens, 2, r, 2) for r in range(2)]
    assert [p.shape for p in parts] == [(2, 2, 3), (2, 2, 3)]
    assert torch.equal(torch.cat([p.reshape(-1, 3) for p in parts]), tokens)  # nothing repeated or skipped
    assert rank_slice(tokens, 2, 0, 1).shape == (4, 2, 3)


def test_a_world_that_does_not_divide_the_batch_is_one_line():
    with pytest.raises(CptError, match="micro_batch 4 x 3 ranks"):
        rank_accum(8, 4, 3)
    assert rank_accum(16, 2, 4) == 2


def test_decoder_layers_of_hugging_face_families():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                                         num_attention_heads=2))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=8, n_layer=2, n_head=2))
    assert decoder_layers(llama) is llama.model.layers and decoder_layers(gpt2) is gpt2.transformer.h
    with pytest.raises(CptError, match="Linear has no list of decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))
