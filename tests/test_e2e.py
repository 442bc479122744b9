"""End to end on the real stories260K model: a two-stage plan with replay buffer, pre-cooldown
init and a cooldown; then kill -9 in the middle of a stage and --resume: the same results."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CPT = [sys.executable, "-m", "cptkit.cli"]


def write_recipe(dir: Path, shared: Path) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    recipe = dir / "recipe.yaml"
    recipe.write_text(f"""
seed: 0
model: {{path: {shared}/models/stories260K}}
base_sources: [stories]
seq_len: 64
micro_batch: 4
batch_tokens: 512
optimizer: {{lr: 2.0e-3, weight_decay: 0.1}}
sources:
  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}
  wiki: {{paths: [{shared}/corpora/en/wikipedia_en.txt], format: lines}}
validation: {{tokens_per_source: 2048}}
data_dir: shards  # beside the recipe: the runs of this module tokenize once
stages:
  - name: a
    tokens: 20480
    mix: {{stories: 0.25, wiki: 0.75}}
    schedule: {{kind: wsd, warmup: 0.1, decay: 0.25}}
    buffer_add: {{source: wiki, tokens: 4000}}
  - name: b
    tokens: 10240
    init: a@pre-cooldown
    mix: {{stories: 0.5, buffer: 0.5}}
    schedule: {{kind: cooldown, shape: linear, to: 0.0}}
eval: {{every_tokens: 5120}}
checkpoint: {{every_tokens: 2048}}
""")
    return recipe


def cpt(*args, cwd=None):
    return subprocess.run([*CPT, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "TQDM_DISABLE": "1"})


def train_records(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("tokens_per_s", None)  # wall-clock, the only things allowed to differ
        r.pop("perf", None)
        r.pop("blocked_s", None)
    return rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared):
    root = tmp_path_factory.mktemp("e2e")
    recipe = write_recipe(root, shared)
    res = cpt("run", recipe, "--out", root / "full")
    assert res.returncode == 0, res.stderr[-3000:]
    return recipe, root / "full"


def test_run_produces_every_artifact(uninterrupted):
    _, out = uninterrupted
    names = {p.name for p in (out / "checkpoints").iterdir()}
    assert {"a@pre-cooldown", "a@final", "b@pre-cooldown", "b@final"} <= names
    assert not any(n.startswith(".") for n in names)  # no temporary leftovers
    for f in ["summary.json", "report.md", "plots/val_loss.png", "plots/lr.png", "model/config.json",
              "model/model.safetensors", "model/tokenizer.json", "buffer/manifest.json"]:
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["a", "b"]
    a, b = summary["stages"]
    assert a["new_sources"] == ["wiki"] and a["earlier_sources"] == ["stories"]
    assert a["val_loss_end"]["wiki"] < summary["base_val_loss"]["wiki"]  # it learned the new domain
    assert "## Forgetting" in (out / "report.md").read_text()


def test_schedule_and_pre_cooldown_checkpoint(uninterrupted):
    _, out = uninterrupted
    rows = [r for r in train_records(out) if r["kind"] == "train"]
    assert len(rows) == 40 + 20
    lrs = [r["lr"] for r in rows]
    assert lrs[:4] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3])  # 4-step warmup
    assert set(lrs[3:30]) == {2e-3}  # hold, then decay over the last 10 steps
    assert lrs[39] == 0.0
    # stage b starts from a@pre-cooldown: it continues at a's held LR, cooling down linearly
    assert lrs[40:] == pytest.approx([2e-3 * (1 - (k + 1) / 20) for k in range(20)], abs=1e-15)
    meta = json.loads((out / "checkpoints/a@pre-cooldown/meta.json").read_text())
    assert (meta["global_step"], meta["lr"], meta["phase"]) == (30, 2e-3, "hold")
    assert rows[29]["tokens"] == meta["tokens"] == 30 * 512
    # 30 steps x 8 samples at 0.25/0.75: what each source has given so far, unique vs repeated
    seen = meta["data_seen"]
    assert (seen["stories"]["samples"], seen["wiki"]["samples"]) == (60, 180)
    for s in seen.values():
        assert s["tokens"] == s["samples"] * 64 == s["unique_tokens"] + s["repeated_tokens"]
    final = json.loads((out / "checkpoints/b@final/meta.json").read_text())["data_seen"]
    assert final["buffer@v1"]["samples"] == 80 and final["buffer@v1"]["repeated_tokens"] == (80 - 4000 // 64) * 64


def test_buffer_holds_exact_tokens_of_stage_source(uninterrupted):
    _, out = uninterrupted
    manifest = json.loads((out / "buffer/manifest.json").read_text())
    assert manifest["version"] == 1
    (added,) = manifest["additions"]
    assert (added["stage"], added["source"], added["tokens"]) == ("a", "wiki", 4000)
    val = set(__import__("numpy").load(out / "data/wiki.val.npy").tolist())
    assert not val & set(added["documents"])  # the buffer never holds validation documents


def test_exported_model_loads_and_generates(uninterrupted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = uninterrupted
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    ids = model.generate(**tok("Once upon a time", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert ids.shape[1] > 5


def killed_run(recipe: Path, out: Path, after: str = "step-0000008") -> None:
    """Start the recipe and kill -9 it as soon as checkpoint `after` exists."""
    proc = subprocess.Popen([*CPT, "run", str(recipe), "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.time() + 120
    while not (out / "checkpoints" / after).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"


def test_kill_and_resume_matches_uninterrupted(uninterrupted, tmp_path):
    recipe, full = uninterrupted
    out = tmp_path / "killed"
    killed_run(recipe, out)
    res = cpt("run", recipe, "--out", out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text()) == json.loads((full / "summary.json").read_text())
    # batch fingerprints included: the same samples in the same order, across the stage boundary
    # where the weights change (0.25/0.75 -> 0.5 with the buffer)
    assert train_records(out) == train_records(full)
    assert len({r["batch_crc32"] for r in train_records(out) if r["kind"] == "train"}) == 60


def test_fresh_run_refuses_existing_out_and_changed_recipe_on_resume(uninterrupted, tmp_path):
    recipe, full = uninterrupted
    before = (full / "summary.json").read_bytes()
    res = cpt("run", recipe, "--out", full)
    assert res.returncode == 2 and "--resume" in res.stderr
    changed = tmp_path / "changed.yaml"
    changed.write_text(recipe.read_text().replace("seed: 0", "seed: 1"))
    res = cpt("run", changed, "--out", full, "--resume")
    assert res.returncode == 2 and "recipe differs" in res.stderr
    assert (full / "summary.json").read_bytes() == before


def test_corrupted_checkpoint_falls_back_and_matches_uninterrupted(uninterrupted, tmp_path):
    """4 KB of garbage in the newest checkpoint's tensor file: --resume warns, takes the one
    before, redoes the steps since, and ends equal to the uninterrupted run."""
    from cptkit.checkpoint.manager import CheckpointManager

    recipe, full = uninterrupted
    out = tmp_path / "corrupted"
    killed_run(recipe, out, after="step-0000012")
    newest = CheckpointManager(out / "checkpoints").latest()
    shard = next((newest / "state").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[100:100 + 4096] = os.urandom(min(4096, len(data) - 100))
    shard.write_bytes(bytes(data))
    res = cpt("run", recipe, "--out", out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [ln for ln in res.stderr.splitlines() if "skipping checkpoint" in ln]
    assert len(warnings) == 1 and newest.name in warnings[0] and "checksum" in warnings[0]
    assert json.loads((out / "summary.json").read_text()) == json.loads((full / "summary.json").read_text())
    assert train_records(out) == train_records(full)
