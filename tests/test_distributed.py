"""Several ranks on CPU (gloo, 2 processes under torchrun): the same training as one process."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cptkit.distributed.batch import rank_accum, rank_slice
from cptkit.distributed.fsdp import decoder_layers
from cptkit.errors import CptError

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


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


def plan_recipe(dir: Path, shared: Path) -> Path:
    """A three-stage plan on stories260K, 8 samples a step, that touches what a run does under
    several ranks: stage `a` freezes the embeddings and replays the hardest wiki documents of
    its data (`hard`, scored on every rank); `b` is Strategy 4 from a's pre-cooldown checkpoint
    (the mix switches when the LR crosses LR_max/5), at twice the batch (the inherited LR scaled
    by sqrt 2), with fresh moments for the embeddings it unfreezes; `c` replays the buffer; `m`
    merges three of the checkpoints."""
    import yaml

    stories = {"paths": [f"{shared}/corpora/en/tinystories.txt"], "separator": "<|endoftext|>"}
    wiki = {"paths": [f"{shared}/corpora/en/wikipedia_en.txt"], "format": "lines"}
    recipe = {
        "seed": 0, "model": {"path": f"{shared}/models/stories260K"}, "base_sources": ["stories"],
        "seq_len": 64, "micro_batch": 2, "batch_tokens": 512, "optimizer": {"lr": 2.0e-3, "weight_decay": 0.1},
        "sources": {"stories": stories, "wiki": wiki}, "validation": {"tokens_per_source": 1024},
        "checkpoint": {"every_tokens": 2048},
        "stages": [{"name": "a", "tokens": 6144, "mix": {"stories": 0.25, "wiki": 0.75}, "trainable": ["layers", "norms"],
                    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.25},
                    "buffer_add": {"source": "wiki", "tokens": 2000, "policy": "hard"}},
                   {"name": "b", "tokens": 4096, "batch_tokens": 1024, "init": "a@pre-cooldown", "new": ["wiki"],
                    "strategy": {"name": "strategy4", "N": 10, "alpha0": 0.7}, "optimizer_state": "reset-new"},
                   {"name": "c", "tokens": 1024, "mix": {"stories": 0.5, "buffer": 0.5}},
                   # each rank averages its own shards: the export (this merge) must equal one process's
                   {"name": "m", "kind": "merge", "checkpoints": ["a@final", "c@final", "step-0000004"],
                    "weights": [0.2, 0.5, 0.3]}],
    }
    # downstream tasks: each rank scores its share of the items (eval/scoring.py), the sums agree
    text = (shared / "corpora/en/tinystories.txt").read_text()[:20_000]
    cloze = [dict(zip(("context", "continuation"), st.strip().rsplit(" ", 1))) for st in text.split("<|endoftext|>")[:7]
             if len(st.split()) > 20]
    (dir / "cloze.jsonl").write_text("".join(json.dumps({**c, "continuation": " " + c["continuation"]}) + "\n"
                                             for c in cloze))
    recipe["evals"] = {"cloze": {"kind": "cloze", "path": str(dir / "cloze.jsonl")},
                       "gsm8k": {"kind": "generate", "path": f"{shared}/corpora/math/gsm8k_train.jsonl", "shots": 1,
                                 "limit": 3, "max_new_tokens": 8}}
    path = dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cpt_start(n: int, *args) -> subprocess.Popen:
    """`cpt run` on n ranks (torchrun for n > 1), started: `finished` waits for it. Its output goes
    to files, so that runs side by side never wait on a full pipe."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n > 1 else [sys.executable]
    logs = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([*launch, "-m", "cptkit", "run", *map(str, args)], stdout=logs[0], stderr=logs[1], env=env)
    proc.logs = logs
    return proc


def finished(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out = []
    for f in proc.logs:
        with f:
            f.seek(0)
            out.append(f.read())
    return subprocess.CompletedProcess(proc.args, proc.returncode, *out)


def cpt_run(n: int, *args) -> subprocess.CompletedProcess:
    return finished(cpt_start(n, *args))


def records(out: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def one_and_two_ranks(recipe: Path, tmp_path: Path) -> tuple[dict[int, Path], list[dict]]:
    """The recipe run by one process and by 2 ranks (run folders w1, w2): the same batches, and
    the same losses within 1e-5. Returns the folders and one process's train records."""
    outs = {n: tmp_path / f"w{n}" for n in (1, 2)}
    one = cpt_start(1, recipe, "--out", outs[1])  # beside the 2 ranks: one process keeps to one core
    for res in (cpt_run(2, recipe, "--out", outs[2]), finished(one)):
        assert res.returncode == 0, res.stderr[-3000:]
    return outs, same_steps(outs)


def same_steps(outs: dict[int, Path]) -> list[dict]:
    """The runs of one process and of 2 ranks (`outs`): the same batches, and the same losses
    within 1e-5. Returns one process's train records."""
    a, b = records(outs[1], "train"), records(outs[2], "train")
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and y["batch_crc32"] == x["batch_crc32"]
    return a


def close(a, b, rel=1e-5):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float):
        return b == pytest.approx(a, rel=rel, abs=1e-12)
    return a == b


@pytest.fixture(scope="module")
def single_started(tmp_path_factory, shared):
    """The plan recipe, run uninterrupted by one process: started (the first test that needs it
    runs its own beside it), and `single` once it has finished."""
    root = tmp_path_factory.mktemp("single")
    recipe = plan_recipe(root, shared)
    proc = cpt_start(1, recipe, "--out", root / "one")
    yield recipe, root / "one", proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def single(single_started):
    recipe, out, proc = single_started
    res = finished(proc)
    assert res.returncode == 0, res.stderr[-3000:]
    return recipe, out


def test_cpt_run_on_two_ranks_equals_one_process(single_started, tmp_path, shared, request):
    """The plan under torchrun with 2 ranks, writing its checkpoints asynchronously: the same
    samples in the same order (batch fingerprints), per-step losses and LRs, the summary within
    1e-5, the frozen embeddings bit-identical, the same checkpoints (sealed; stage b starts from
    one) and export."""
    import yaml

    recipe = single_started[0]
    two = tmp_path / "two"
    spec = yaml.safe_load(recipe.read_text())
    spec["checkpoint"]["async"] = True
    (tmp_path / "async.yaml").write_text(yaml.safe_dump(spec))
    res = cpt_run(1, tmp_path / "async.yaml", "--out", two, "--nproc", "2")  # cpt launches torchrun itself
    assert res.returncode == 0, res.stderr[-3000:]
    one = request.getfixturevalue("single")[1]  # the one process, run meanwhile
    saves = records(two, "checkpoint")
    assert all(r["async"] and r["blocked_s"] >= 0 for r in saves)
    assert sorted(r["name"] for r in saves) == sorted(p.name for p in (two / "checkpoints").iterdir())  # all sealed
    assert (two / "checkpoints" / "a@final" / "state" / "__1_0.distcp").is_file()  # written by rank 1
    buffers = [json.loads((o / "buffer" / "manifest.json").read_text())["additions"] for o in (one, two)]
    assert buffers[0][0]["documents"] == buffers[1][0]["documents"]  # the same hardest documents
    assert (one / "buffer" / "v1.bin").read_bytes() == (two / "buffer" / "v1.bin").read_bytes()
    a, b = records(one, "train"), records(two, "train")
    assert [r["batch_crc32"] for r in a] == [r["batch_crc32"] for r in b] and len(a) == 18
    stages = [r["stage"] for r in a]
    assert stages.index("b.base") == 12 and stages.index("b") > 12  # Strategy 4 switched mid-stage
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and y["lr"] == pytest.approx(x["lr"], rel=1e-12)
    assert close(json.loads((one / "summary.json").read_text()), json.loads((two / "summary.json").read_text()))
    assert set(json.loads((two / "summary.json").read_text())["base_evals"]) == {"cloze", "gsm8k"}  # tasks, sharded
    assert {p.name for p in (one / "checkpoints").iterdir()} == {p.name for p in (two / "checkpoints").iterdir()}
    from transformers import AutoModelForCausalLM

    from cptkit.checkpoint.manager import CheckpointManager
    from cptkit.recipe import OptimizerCfg
    from cptkit.train.step import build_optimizer

    m1, m2 = (AutoModelForCausalLM.from_pretrained(o / "model") for o in (one, two))
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), n
    base, at_a = (AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K") for _ in range(2))
    CheckpointManager.load(two / "checkpoints" / "a@final", at_a, build_optimizer(at_a, OptimizerCfg()))
    assert torch.equal(at_a.get_input_embeddings().weight, base.get_input_embeddings().weight)  # frozen in a, 2 ranks


def killed(n: int, recipe: Path, out: Path, after: str, resume: bool = False) -> str:
    """Start `cpt run` (or `cpt run --resume`) on n ranks and, once checkpoint `after` exists,
    SIGKILL one process: the one process, or rank 1 of several, after which torchrun must end the
    others by itself. Returns what the run printed."""
    import signal
    import tempfile
    import time

    assert not (out / "checkpoints" / after).exists(), f"{after} was written before its run started"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n > 1 else [sys.executable]
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([*launch, "-m", "cptkit", "run", str(recipe), "--out", str(out), *(["--resume"] if resume else [])],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pattern = f"cptkit run {recipe} --out {out}"  # torchrun's workers run in sessions of their own
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / after).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if not (out / "checkpoints" / after).exists():
            log.seek(0)
            raise AssertionError(f"no {after} from the run: {log.read()[-3000:]}")
        os.kill(proc.pid if n == 1 else rank_pid(pattern, 1), signal.SIGKILL)
        assert proc.wait(timeout=120) != 0  # torchrun saw its worker die and stopped the rest
        assert not rank_pids(pattern), "a rank outlived the failure"
    finally:
        subprocess.run(["pkill", "-KILL", "-f", pattern])
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    with log:
        log.seek(0)
        return log.read()


def rank_pids(pattern: str) -> dict[int, int]:
    """rank -> PID of the torchrun workers whose command line holds `pattern`."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in map(int, found):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
        if rank is not None and b"TORCHELASTIC_RUN_ID" in b"\0".join(env):
            ranks[rank] = pid
    return ranks


def rank_pid(pattern: str, rank: int) -> int:
    import time

    for _ in range(100):
        pids = rank_pids(pattern)
        if rank in pids:
            return pids[rank]
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} process found")


def test_a_checkpoint_reshards_to_another_world_size(single, tmp_path):
    """Saved by one world size, resumed on another, three times over in one run: 4 ranks -> 2
    -> 1 process -> 2 ranks. Each run but the last dies by SIGKILL to one rank (torchrun ends the
    others) in the middle of a stage, once a checkpoint exists: step 4 and step 8 of stage a, step
    14 in b.base. Each resume takes up the same data position (batch fingerprints), schedule and
    optimizer state: every step's batch and loss, and the summary, are the uninterrupted run's."""
    recipe, full = single
    cut = tmp_path / "cut"
    worlds = [4, 2, 1, 2]  # each hand-over: 4 -> 2, 2 -> 1, 1 -> 2
    logs = [killed(n, recipe, cut, after, resume=i > 0)
            for i, (n, after) in enumerate(zip(worlds, ["step-0000004", "step-0000008", "step-0000014"]))]
    res = cpt_run(worlds[-1], recipe, "--out", cut, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    for log in [*logs[1:], res.stdout + res.stderr]:  # each run after the first took up the one before
        assert f"resuming from {cut / 'checkpoints'}" in log, log[-3000:]
    a, b = records(full, "train"), records(cut, "train")
    assert [r["batch_crc32"] for r in a] == [r["batch_crc32"] for r in b]  # nothing repeated or skipped
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    assert close(json.loads((full / "summary.json").read_text()), json.loads((cut / "summary.json").read_text()))


def test_a_world_size_that_does_not_split_the_batch_is_refused(tmp_path, shared):
    from conftest import small_recipe
    from cptkit.build import check_world
    from cptkit.distributed.env import Dist

    plain = small_recipe(tmp_path, shared, "  - {name: a, tokens: 2048, mix: {stories: 1.0}}\n")
    check_world(plain, Dist(rank=0, world=1))  # 4 samples a step, micro_batch 4: one rank only
    with pytest.raises(CptError, match=r"stages\[0\] \(a\): batch_tokens: 4 samples a step do not split into "
                                       r"micro_batch 4 x 2 ranks"):
        check_world(plain, Dist(rank=0, world=2))
    wide = small_recipe(tmp_path, shared, "  - {name: a, tokens: 2048, batch_tokens: 512, mix: {stories: 1.0}}\n")
    check_world(wide, Dist(rank=0, world=2))


def test_new_rows_under_two_ranks_train_like_one_and_leave_the_rest_bit_identical(tmp_path, shared):
    """EEVE at scale: a `new_input_rows` stage of the extended (tied) stories260K under FSDP2 with
    2 ranks. Every old row of the sharded matrix and every other parameter keeps every bit; the new
    rows train, with the losses and final rows of one process."""
    import yaml
    from safetensors.torch import load_file

    from conftest import extended_model

    model = extended_model(shared, tmp_path)
    recipe = {"model": {"path": str(model)}, "seq_len": 64, "micro_batch": 2, "batch_tokens": 512,
              "optimizer": {"lr": 1.0e-2, "weight_decay": 0.1}, "validation": {"tokens_per_source": 256},
              "sources": {"vi": {"paths": [f"{shared}/corpora/vi/viwiki.jsonl"]}},
              "stages": [{"name": "rows", "tokens": 2048, "mix": {"vi": 1.0}, "trainable": ["new_input_rows"]}]}
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump(recipe))
    outs, a = one_and_two_ranks(path, tmp_path)
    base = load_file(model / "model.safetensors")
    ends = {n: load_file(out / "model" / "model.safetensors") for n, out in outs.items()}
    key = next(k for k in base if "embed_tokens" in k)
    for name, w in base.items():
        old = w[:512] if name == key else w
        assert torch.equal(ends[2][name][: len(old)], old), name  # frozen: every bit, under FSDP2
    assert not torch.equal(ends[2][key][512:], base[key][512:])  # the new rows trained
    torch.testing.assert_close(ends[2][key][512:], ends[1][key][512:], rtol=1e-4, atol=1e-6)


def tiny_llama_grads(cfg, layers: int = 2):
    """A tiny Llama under `shard_model(cfg)` on one process: the model and its gradients on a
    fixed batch (the same weights and batch for every cfg)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cptkit.distributed.env import Dist
    from cptkit.distributed.fsdp import shard_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                         num_attention_heads=2))
    shard_model(model, Dist(), cfg, torch.device("cpu"))
    model.train()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return model, float(loss.detach()), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_recomputes_the_same_gradients(mode, monkeypatch):
    from torch.utils import checkpoint

    from cptkit.distributed.config import DistributedCfg

    plain, _, g0 = tiny_llama_grads(DistributedCfg())
    policies = []
    make = checkpoint.create_selective_checkpoint_contexts
    monkeypatch.setattr(checkpoint, "create_selective_checkpoint_contexts",
                        lambda policy, *a, **k: policies.append(policy) or make(policy, *a, **k))
    recomputed, _, g1 = tiny_llama_grads(DistributedCfg(activation_checkpointing=mode))
    flag = "is_activation_checkpointing" if hasattr(plain, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(recomputed, flag) and not getattr(plain, flag)
    assert len(policies) == (2 if mode == "selective" else 0)  # one selective context per block
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-8) for a, b in zip(g0, g1))


@pytest.mark.parametrize("checkpointing", ["none", "selective", "full"])
def test_compiled_blocks_give_the_same_loss_and_gradients_under_the_same_names(checkpointing):
    """Each block's forward compiled into a graph (with activation checkpointing too: a graph
    break there would leave every block silently eager), the numbers of eager mode, the names."""
    from torch._dynamo.utils import counters

    from cptkit.distributed.config import DistributedCfg
    from cptkit.distributed.fsdp import decoder_layers

    plain, l0, g0 = tiny_llama_grads(DistributedCfg(), layers=1)
    torch._dynamo.reset()
    counters.clear()
    compiled, l1, g1 = tiny_llama_grads(DistributedCfg(compile=True, activation_checkpointing=checkpointing), layers=1)
    assert counters["stats"]["unique_graphs"] >= 1
    assert all(hasattr(b.forward, "_torchdynamo_orig_callable") for b in decoder_layers(compiled))
    assert not any(hasattr(b.forward, "_torchdynamo_orig_callable") for b in decoder_layers(plain))
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints and exports unchanged
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g0, g1))


def test_validation_split_over_ranks_sums_to_the_whole():
    """Each rank's part (uneven: 7 windows over 3 ranks, padded to 3 forwards of equal size) sums
    to one process's total loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cptkit.distributed.env import Dist
    from cptkit.eval.validation import _rank_loss_sum, evaluate

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))
    windows = torch.randint(0, 64, (7, 12), generator=torch.Generator().manual_seed(2))
    whole = evaluate(model, {"a": windows}, 2, torch.device("cpu"), contextlib.nullcontext)["a"]
    parts = [_rank_loss_sum(model, windows, 2, torch.device("cpu"), contextlib.nullcontext, Dist(rank=r, world=3))
             for r in range(3)]
    assert sum(parts) / 7 == pytest.approx(whole, rel=1e-6)


@pytest.fixture(scope="module")
def refused(tmp_path_factory, shared):
    """`cpt run --nproc N` on the plan where it must stop before it launches anything, both
    commands side by side: name -> (the result, its --out). `gpu`: `device: cuda` on 2 ranks;
    `split`: 3 ranks, which do not split the batch."""
    import yaml

    root = tmp_path_factory.mktemp("refused")
    plan = plan_recipe(root, shared)
    (root / "gpu.yaml").write_text(yaml.safe_dump(yaml.safe_load(plan.read_text()) | {"device": "cuda"}))
    started = {name: cpt_start(1, recipe, "--out", root / f"out-{name}", "--nproc", n)
               for name, recipe, n in (("gpu", root / "gpu.yaml", 2), ("split", plan, 3))}
    return {name: (finished(proc), root / f"out-{name}") for name, proc in started.items()}


def test_gpu_ranks_without_gpus_or_nccl_are_one_line(refused, monkeypatch):
    """`device: cuda` with more ranks than GPUs (none here) and a torch without NCCL: one line,
    exit 2, before any process starts or anything is written."""
    from cptkit.distributed import env

    res, out = refused["gpu"]
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "device: cuda: --nproc asks for 2 ranks on this node but it has 0 GPU(s)" in res.stderr
    assert not out.exists()

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CptError, match="LOCAL_RANK asks for 2 ranks on this node but it has 1 GPU"):
        env.from_env(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(env.dist, "is_nccl_available", lambda: False)
    with pytest.raises(CptError, match="needs NCCL, which this torch build lacks"):
        env.from_env(torch.device("cuda"))


def test_nproc_that_does_not_split_the_batch_is_refused_before_launch(refused):
    res, out = refused["split"]
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "stages[0] (a): batch_tokens: 8 samples a step do not split into micro_batch 2 x 3 ranks" in res.stderr
    assert not out.exists()


def test_relora_under_two_ranks_merges_like_one_process(tmp_path, shared):
    """A ReLoRA stage (warm start, two merges with 90% of the moments pruned, `hard` buffer
    scoring) under FSDP2 with 2 ranks: each rank merges s.B.A into its shard of W. The losses,
    the pruned shares and the weights, merged (the export) and mid-cycle (a checkpoint's base
    weights, adapters and moments), are those of one process, and so is a resume by one process
    from the 2 ranks' checkpoint in the middle of a cycle. Random pruning: magnitude pruning
    is discontinuous at its threshold, where the last bits of a moment summed in another order
    can choose another entry (the losses still agree; the weights then differ by ~LR there)."""
    import yaml
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    stories = {"paths": [f"{shared}/corpora/en/tinystories.txt"], "separator": "<|endoftext|>"}
    wiki = {"paths": [f"{shared}/corpora/en/wikipedia_en.txt"], "format": "lines"}
    recipe = {"model": {"path": f"{shared}/models/stories260K"}, "seq_len": 64, "micro_batch": 2, "batch_tokens": 512,
              "optimizer": {"lr": 2.0e-3, "weight_decay": 0.1}, "validation": {"tokens_per_source": 512},
              "sources": {"stories": stories, "wiki": wiki}, "checkpoint": {"every_tokens": 1536},
              "stages": [{"name": "r", "tokens": 4096, "mix": {"stories": 0.5, "wiki": 0.5},
                          "schedule": {"kind": "cosine", "warmup": 0.125},
                          "relora": {"rank": 4, "alpha": 8, "merge_every_tokens": 1024, "warm_start": 1024,
                                     "restart_warmup_tokens": 1024, "prune": {"method": "random", "ratio": 0.9}},
                          "buffer_add": {"source": "wiki", "tokens": 1000, "policy": "hard"}}]}
    path = tmp_path / "relora.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # the 2 ranks first; then, side by side, one process's run and one process resuming a copy of
    # the 2 ranks' run from its checkpoint in the middle of the first cycle (step 3)
    outs = {n: tmp_path / f"w{n}" for n in (1, 2)}
    res = cpt_run(2, path, "--out", outs[2])
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = tmp_path / "w2-resumed"
    shutil.copytree(outs[2], resumed, symlinks=True)
    for name in ("step-0000006", "r@final"):
        shutil.rmtree(resumed / "checkpoints" / name)
    started = [cpt_start(1, path, "--out", outs[1]), cpt_start(1, path, "--out", resumed, "--resume")]
    res, again = (finished(p) for p in started)
    assert res.returncode == 0, res.stderr[-3000:]
    a = same_steps(outs)
    events = [records(o, "relora") for o in outs.values()]
    assert [e["event"] for e in events[1]] == ["start", "merge", "merge", "end"]
    assert [e.get("pruned") for e in events[0]] == [e.get("pruned") for e in events[1]]
    assert close(records(outs[1], "eval"), records(outs[2], "eval"))
    docs = [json.loads((o / "buffer" / "manifest.json").read_text())["additions"][0]["documents"] for o in outs.values()]
    assert docs[0] == docs[1]
    ends = [load_file(o / "model" / "model.safetensors") for o in outs.values()]
    assert ends[0].keys() == ends[1].keys() and not any("lora" in k for k in ends[0])
    for k in ends[0]:  # Adam divides by sqrt(v): a gradient summed in another order moves a few entries ~1e-6
        torch.testing.assert_close(ends[1][k], ends[0][k], rtol=1e-4, atol=1e-5)
    mid = []
    for o in outs.values():  # step 6 (3,072 tokens): at the second merge point, B trained for 2 steps
        dcp_to_torch_save(o / "checkpoints" / "step-0000006" / "state", tmp_path / f"{o.name}.pt")
        mid.append(torch.load(tmp_path / f"{o.name}.pt", weights_only=False))
    flat = [{k: v for k, v in _flatten(m).items() if torch.is_tensor(v)} for m in mid]
    assert any("lora_B" in k for k in flat[0]) and any("base_layer" in k for k in flat[0])
    assert flat[0].keys() == flat[1].keys()
    for k in flat[0]:  # a pruned entry's next steps divide by sqrt(v) ~ 0.03 |g|: on a near-zero gradient
        # summation order shows most there (one entry of A 7e-5 apart, seen)
        if k.startswith("model.") or k.startswith("optim.state"):
            tol = 2e-4 if "lora_" in k else 1e-5
            torch.testing.assert_close(flat[1][k], flat[0][k], rtol=1e-4, atol=tol, msg=lambda m: f"{k}: {m}")
    # the 2 ranks' checkpoint in the middle of the first cycle (step 3), resumed by one process
    assert again.returncode == 0 and "resuming from" in again.stdout + again.stderr, again.stderr[-3000:]
    for x, y in zip(a, records(resumed, "train"), strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    model = load_file(resumed / "model" / "model.safetensors")
    for k in ends[0]:
        torch.testing.assert_close(model[k], ends[0][k], rtol=1e-4, atol=1e-5)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out
