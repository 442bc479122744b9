"""Several ranks on CPU (gloo, 2 processes under torchrun): the same training as one process."""

import contextlib
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


def two_stage_recipe(dir: Path, shared: Path) -> Path:
    """Two stages on stories260K (the second from the first's pre-cooldown checkpoint, replaying the
    hardest wiki documents of the first), 8 samples a step."""
    import yaml

    stories = {"paths": [f"{shared}/corpora/en/tinystories.txt"], "separator": "<|endoftext|>"}
    wiki = {"paths": [f"{shared}/corpora/en/wikipedia_en.txt"], "format": "lines"}
    recipe = {
        "seed": 0, "model": {"path": f"{shared}/models/stories260K"}, "base_sources": ["stories"],
        "seq_len": 64, "micro_batch": 2, "batch_tokens": 512, "optimizer": {"lr": 2.0e-3, "weight_decay": 0.1},
        "sources": {"stories": stories, "wiki": wiki}, "validation": {"tokens_per_source": 1024},
        "checkpoint": {"every_tokens": 2048},
        "stages": [{"name": "a", "tokens": 6144, "mix": {"stories": 0.25, "wiki": 0.75},
                    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.25},
                    "buffer_add": {"source": "wiki", "tokens": 2000, "policy": "hard"}},  # scored on every rank
                   {"name": "b", "tokens": 4096, "init": "a@pre-cooldown", "mix": {"stories": 0.5, "buffer": 0.5},
                    "schedule": {"kind": "cooldown", "shape": "linear", "to": 0.0}}],
    }
    path = dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cpt_run(n: int, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n > 1 else [sys.executable]
    return subprocess.run([*launch, "-m", "cpt", "run", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


def records(out: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def close(a, b, rel=1e-5):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float):
        return b == pytest.approx(a, rel=rel, abs=1e-12)
    return a == b


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared):
    """The two-stage recipe, run uninterrupted by one process."""
    root = tmp_path_factory.mktemp("single")
    recipe = two_stage_recipe(root, shared)
    res = cpt_run(1, recipe, "--out", root / "one")
    assert res.returncode == 0, res.stderr[-3000:]
    return recipe, root / "one"


def test_cpt_run_on_two_ranks_equals_one_process(single, tmp_path):
    """A two-stage recipe under torchrun with 2 ranks: the same samples in the same order (batch
    fingerprints), per-step losses and the summary within 1e-5, checkpoints and an export."""
    recipe, one = single
    two = tmp_path / "two"
    res = cpt_run(1, recipe, "--out", two, "--nproc", "2")  # cpt launches torchrun itself
    assert res.returncode == 0, res.stderr[-3000:]
    assert (two / "checkpoints" / "a@final" / "state" / "__1_0.distcp").is_file()  # written by rank 1
    buffers = [json.loads((o / "buffer" / "manifest.json").read_text())["additions"] for o in (one, two)]
    assert buffers[0][0]["documents"] == buffers[1][0]["documents"]  # the same hardest documents
    assert (one / "buffer" / "v1.bin").read_bytes() == (two / "buffer" / "v1.bin").read_bytes()
    a, b = records(one, "train"), records(two, "train")
    assert [r["batch_crc32"] for r in a] == [r["batch_crc32"] for r in b] and len(a) == 20
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and y["lr"] == x["lr"]
    assert close(json.loads((one / "summary.json").read_text()), json.loads((two / "summary.json").read_text()))
    assert {p.name for p in (one / "checkpoints").iterdir()} == {p.name for p in (two / "checkpoints").iterdir()}
    from transformers import AutoModelForCausalLM

    m1, m2 = (AutoModelForCausalLM.from_pretrained(o / "model") for o in (one, two))
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), n


def killed(n: int, recipe: Path, out: Path, after: str) -> None:
    """Start `cpt run` on n ranks and kill the whole process group once checkpoint `after` exists."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n > 1 else [sys.executable]
    proc = subprocess.Popen([*launch, "-m", "cpt", "run", str(recipe), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / after).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pattern = f"cpt run {recipe} --out {out}"  # torchrun's workers run in sessions of their own
    subprocess.run(["pkill", "-KILL", "-f", pattern])
    proc.wait()
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0 and time.time() < deadline:
        time.sleep(0.1)
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_a_checkpoint_reshards_to_another_world_size(single, tmp_path, before, after):
    """Saved by `before` ranks, resumed on `after`: the same data position (batch fingerprints),
    schedule and optimizer state; the run ends as the uninterrupted one."""
    recipe, full = single
    cut = tmp_path / "cut"
    killed(before, recipe, cut, "step-0000008")
    res = cpt_run(after, recipe, "--out", cut, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = records(full, "train"), records(cut, "train")
    assert [r["batch_crc32"] for r in a] == [r["batch_crc32"] for r in b]  # nothing repeated or skipped
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    assert close(json.loads((full / "summary.json").read_text()), json.loads((cut / "summary.json").read_text()))


def test_what_several_ranks_cannot_run_yet_is_one_line(tmp_path, shared):
    from conftest import small_recipe
    from cpt.build import check_world
    from cpt.distributed.env import Dist

    plain = small_recipe(tmp_path, shared, "  - {name: a, tokens: 2048, mix: {stories: 1.0}}\n")
    check_world(plain, Dist(rank=0, world=1))  # 4 samples a step, micro_batch 4: one rank only
    with pytest.raises(CptError, match=r"stages\[0\] \(a\): batch_tokens: 4 samples a step do not split into "
                                       r"micro_batch 4 x 2 ranks"):
        check_world(plain, Dist(rank=0, world=2))
    wide = small_recipe(tmp_path, shared, "  - {name: a, tokens: 2048, batch_tokens: 512, mix: {stories: 1.0}}\n")
    rows = wide.model_copy(update={"stages": [wide.stages[0].model_copy(update={"trainable": ["layers", "new_input_rows"]})]})
    check_world(wide, Dist(rank=0, world=2))
    with pytest.raises(CptError, match=r"stages\[0\].trainable: `new_input_rows` runs in one process only for now"):
        check_world(rows, Dist(rank=0, world=2))


def test_activation_checkpointing_recomputes_the_same_gradients():
    from transformers import LlamaConfig, LlamaForCausalLM

    from cpt.distributed.config import DistributedCfg
    from cpt.distributed.env import Dist
    from cpt.distributed.fsdp import shard_model

    def grads(cfg):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                             num_attention_heads=2))
        shard_model(model, Dist(), cfg, torch.device("cpu"))
        model.train()
        ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
        model(input_ids=ids, labels=ids).loss.backward()
        return model, [p.grad for p in model.parameters()]

    plain, g0 = grads(DistributedCfg())
    recomputed, g1 = grads(DistributedCfg(activation_checkpointing="full"))
    flag = "is_activation_checkpointing" if hasattr(plain, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(recomputed, flag) and not getattr(plain, flag)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-8) for a, b in zip(g0, g1))


def test_validation_split_over_ranks_sums_to_the_whole():
    """Each rank's part (uneven: 7 windows over 3 ranks, padded to 3 forwards of equal size) sums
    to one process's total loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cpt.distributed.env import Dist
    from cpt.eval.validation import _rank_loss_sum, evaluate

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))
    windows = torch.randint(0, 64, (7, 12), generator=torch.Generator().manual_seed(2))
    whole = evaluate(model, {"a": windows}, 2, torch.device("cpu"), contextlib.nullcontext)["a"]
    parts = [_rank_loss_sum(model, windows, 2, torch.device("cpu"), contextlib.nullcontext, Dist(rank=r, world=3))
             for r in range(3)]
    assert sum(parts) / 7 == pytest.approx(whole, rel=1e-6)
