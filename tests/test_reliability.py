"""Injected faults (issue 13): a run folder that holds the user's data, a second run on a locked
folder, a diverging LR, corrupted, incomplete and hostile checkpoints, a full disk."""

import errno
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cptkit.build import recipe_fingerprint
from cptkit.checkpoint.integrity import MANIFEST, write_manifest
from cptkit.checkpoint.manager import CheckpointManager
from cptkit.cli import main
from cptkit.errors import CptError
from cptkit.recipe import OptimizerCfg, load_recipe
from cptkit.runfolder import RunFolder
from cptkit.train.step import build_optimizer
from test_checkpoint import tiny, trained

SRC = Path(__file__).resolve().parents[1] / "src"


def recipe_text(shared: Path, lr: str = "1.0e-3", extra: str = "", tokens: int = 2048) -> str:
    return textwrap.dedent(f"""\
        model: {{path: {shared}/models/stories260K}}
        seq_len: 64
        micro_batch: 4
        batch_tokens: 256
        optimizer: {{lr: {lr}, grad_clip: null}}
        sources:
          stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}
        validation: {{tokens_per_source: 512}}
        {extra}
        stages:
          - name: a
            tokens: {tokens}
            mix: {{stories: 1.0}}
        """)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if "cpt: error:" in ln]
    assert all(ln.startswith("cpt: error:") for ln in lines), err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# the run folder


def test_out_onto_the_project_folder_deletes_nothing(tmp_path, shared, capsys, monkeypatch):
    """The reported data loss: `cpt run recipe.yaml --out .` in a folder of corpora and results."""
    project = tmp_path / "project"
    for rel, text in {"recipe.yaml": recipe_text(shared), "data/corpus.txt": "my corpus",
                      "buffer/picked.txt": "mine", "plots/fig.png": "png", "summary.json": "{}",
                      "report.md": "# notes"}.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    before = snapshot(project)
    monkeypatch.chdir(project)
    for out in (".", ".."):  # the recipe's folder, or a folder that contains it
        assert main(["run", "recipe.yaml", "--out", out]) == 2
        assert "holds the recipe" in one_error_line(capsys.readouterr().err)
    # the same files in a folder that is not the recipe's: foreign, refused, untouched
    other = tmp_path / "other.yaml"
    other.write_text(recipe_text(shared))
    assert main(["run", str(other), "--out", str(project)]) == 2
    assert "not a cpt run" in one_error_line(capsys.readouterr().err)
    assert snapshot(project) == before


def test_a_restart_removes_only_unchanged_files_it_wrote(tmp_path, shared):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(shared, extra="nonfinite: {max_bad_steps: 1}", lr="1.0e+4"))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 2  # diverges before its first checkpoint
    assert RunFolder(out).is_run() and not (out / "checkpoints").exists()
    (out / "data" / "mine.txt").write_text("added by the user")
    (out / "plots").mkdir()
    (out / "plots" / "mine.png").write_text("also the user's")
    val = out / "data" / "stories.val.npy"
    before = val.stat().st_mtime_ns
    recipe.write_text(recipe_text(shared, tokens=256))
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    assert val.stat().st_mtime_ns != before  # the run's own file was removed, then written anew
    assert (out / "data" / "mine.txt").read_text() == "added by the user"
    assert (out / "plots" / "mine.png").read_text() == "also the user's"
    assert (out / "summary.json").is_file()


def test_a_restart_never_follows_links_or_manifest_paths_out_of_the_run(tmp_path):
    from cptkit.build import claim_out_dir

    mine = tmp_path / "myplots"
    (mine / "sub").mkdir(parents=True)
    (mine / "fig.png").write_text("my figure")
    (tmp_path / "notes.txt").write_text("my notes")
    out = tmp_path / "run"
    folder = claim_out_dir(out, False, "h", CheckpointManager(out / "checkpoints"))
    (out / "plots").symlink_to(mine)  # a link where the run's plots/ goes
    (out / "data").mkdir()
    (out / "data" / "wiki.val.npy").write_bytes(b"the run's")
    (out / "data" / "link.txt").symlink_to(tmp_path / "notes.txt")
    folder.record()
    files = json.loads((out / ".cpt-files.json").read_text())
    assert set(files) == {"data/wiki.val.npy"}
    files.update({"../notes.txt": files["data/wiki.val.npy"], str(tmp_path / "notes.txt"): [8, 0],
                  "plots/fig.png": [9, (mine / "fig.png").stat().st_mtime_ns]})  # an edited manifest
    (out / ".cpt-files.json").write_text(json.dumps(files))
    folder.unlock()
    claim_out_dir(out, False, "h", CheckpointManager(out / "checkpoints"))
    assert not (out / "data" / "wiki.val.npy").exists()  # the run's own file went
    assert (mine / "fig.png").read_text() == "my figure" and (mine / "sub").is_dir()
    assert (tmp_path / "notes.txt").read_text() == "my notes" and (out / "plots").is_symlink()


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, shared):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(shared))
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from cptkit.build import claim_out_dir
        from cptkit.checkpoint.manager import CheckpointManager
        claim_out_dir(__import__('pathlib').Path({str(out)!r}), False, 'h', CheckpointManager({str(out / 'checkpoints')!r}))
        print('locked', flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = subprocess.run([sys.executable, "-m", "cptkit.cli", "run", str(recipe), "--out", str(out)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
        assert res.returncode == 2
        assert f"PID {holder.pid}" in one_error_line(res.stderr)
    finally:
        holder.kill()
        holder.wait()
    # a dead holder's lock is stale: the OS released it, the next run takes it
    folder = RunFolder(out)
    folder.lock()
    assert (out / ".cpt-lock").read_text().startswith(f"{os.getpid()} on ")
    folder.unlock()


def test_resume_with_nothing_to_resume_says_a_new_run_starts(tmp_path, shared, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(shared, tokens=256))
    assert main(["run", str(recipe), "--out", str(tmp_path / "new"), "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err


def test_a_comment_does_not_change_the_recipe(tmp_path, shared):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(recipe_text(shared))
    b.write_text("# tuned on Monday\n" + recipe_text(shared).replace("seq_len: 64", "seq_len: 64  # as before"))
    assert recipe_fingerprint(load_recipe(a)) == recipe_fingerprint(load_recipe(b))
    b.write_text(recipe_text(shared, lr="2.0e-3"))
    assert recipe_fingerprint(load_recipe(a)) != recipe_fingerprint(load_recipe(b))


# ------------------------------------------------------------------------------------------------
# divergence


def strict_json(line: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_a_diverging_run_stops_and_writes_nothing_non_finite(tmp_path, shared, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(shared, lr="1.0e+4", extra="checkpoint: {every_tokens: 256}"))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "diverged" in line and "step 4" in line and "lr 1e+04" in line and "step-0000004" in line
    assert err.count("step skipped") == 3
    records = [strict_json(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    bad = [r for r in records if r.get("skipped")]
    assert [r["step"] for r in bad] == [2, 3, 4] and all(r["grad_norm"] is None and r["nonfinite"] for r in bad)
    assert not (out / "model").exists()
    from transformers import AutoModelForCausalLM

    for ckpt in (out / "checkpoints").iterdir():
        model = AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K")
        CheckpointManager.load(ckpt, model, build_optimizer(model, OptimizerCfg()))
        assert all(torch.isfinite(p).all() for p in model.parameters()), ckpt


def test_a_run_with_skipped_steps_finishes_and_reports_them(tmp_path, shared):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(shared, lr="1.0e+4", extra="nonfinite: {max_bad_steps: 100}"))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    (stage,) = json.loads((out / "summary.json").read_text())["stages"]
    assert stage["skipped_steps"] == [2, 3, 4, 5, 6, 7, 8]  # step 1 blew the weights up; no update after
    assert "**Skipped steps** (NaN or Inf loss or gradient, no update made): 7" in (out / "report.md").read_text()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_weights_are_never_written(tmp_path):
    model, opt = trained()
    ckpts = CheckpointManager(tmp_path)
    ckpts.save("good", model, opt, {"seq": 1})
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(CptError, match="NaN or Inf"):
        ckpts.save("bad", model, opt, {"seq": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["good"]


# ------------------------------------------------------------------------------------------------
# corrupted, incomplete and hostile checkpoints


def saved(tmp_path, names=("a", "b")):
    model, opt = trained()
    ckpts = CheckpointManager(tmp_path)
    for seq, name in enumerate(names, 1):
        ckpts.save(name, model, opt, {"seq": seq})
    return ckpts


def flip(path: Path, at: int = 64, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    junk = os.urandom(min(n, len(data) - at))
    data[at:at + len(junk)] = junk
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-metadata", "no-manifest"])
def test_a_damaged_checkpoint_is_skipped_for_the_one_before(tmp_path, capsys, damage):
    ckpts = saved(tmp_path)
    state = tmp_path / "b" / "state"
    shard = next(state.glob("*.distcp"))
    if damage == "flip":
        flip(shard)
    elif damage == "truncate":
        (state / ".metadata").write_bytes((state / ".metadata").read_bytes()[:40])
    elif damage == "no-metadata":
        (state / ".metadata").unlink()
    else:
        (tmp_path / "b" / MANIFEST).unlink()
    assert ckpts.latest().name == "b"
    assert ckpts.newest_intact().name == "a"
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and "skipping checkpoint" in warning and "b" in warning
    model, opt = tiny()
    with pytest.raises(CptError) as e:  # named explicitly (an `init:`): a one-line error
        CheckpointManager.load(tmp_path / "b", model, opt)
    assert "\n" not in str(e.value) and str(tmp_path / "b") in str(e.value)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Payload.marker}",))


def test_a_planted_pickle_payload_is_not_executed(tmp_path, capsys, shared):
    saved(tmp_path, names=("a",))
    Payload.marker = tmp_path / "pwned"
    (tmp_path / "a" / "state" / ".metadata").write_bytes(pickle.dumps(Payload()))
    write_manifest(tmp_path / "a")  # a hostile author rewrites the checksums too
    model, opt = tiny()
    with pytest.raises(CptError, match="refused.*posix.system|refused.*os.system") as e:
        CheckpointManager.load(tmp_path / "a", model, opt)
    assert "\n" not in str(e.value)
    assert not Payload.marker.exists()
    # and through the command line, as the `init:` of a stage
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(shared, tokens=256).replace("mix: {stories: 1.0}",
                                                              f"mix: {{stories: 1.0}}\n    init: {tmp_path / 'a'}"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    assert "refused" in one_error_line(capsys.readouterr().err)
    assert not Payload.marker.exists()


def test_a_byte_item_that_names_code_is_refused(tmp_path, monkeypatch):
    """Non-tensor items (optimizer hyperparameters) go through torch's weights-only unpickler."""
    model, opt = trained()
    opt.param_groups[0]["hostile"] = Payload()
    Payload.marker = tmp_path / "pwned"
    CheckpointManager(tmp_path).save("a", model, opt, {"seq": 1})
    assert not Payload.marker.exists()
    other, other_opt = tiny()
    other_opt.param_groups[0]["hostile"] = None
    with pytest.raises(CptError, match="refused"):
        CheckpointManager.load(tmp_path / "a", other, other_opt)
    assert not Payload.marker.exists()


# ------------------------------------------------------------------------------------------------
# a full disk


def small_disk(tmp_path: Path, monkeypatch, how: str) -> Path:
    """A 2 MB disk: a tmpfs where this machine lets us mount one, else DCP's writes fail with
    ENOSPC past 2 MB (and the free space reported shrinks with them)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if how == "tmpfs":
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                                               capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (the patched variant covers it)")
        return disk
    from contextlib import contextmanager
    from torch.distributed.checkpoint.filesystem import FileSystem

    budget = [2 << 20]
    real = FileSystem.create_stream

    class Limited:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            budget[0] -= len(data)
            if budget[0] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextmanager
    def limited(self, path, mode):
        with real(self, path, mode) as f:
            yield Limited(f) if "w" in mode else f

    monkeypatch.setattr(FileSystem, "create_stream", limited)
    monkeypatch.setattr("cptkit.checkpoint.manager._free", lambda path: max(budget[0], 0))
    return disk


@pytest.mark.parametrize("how", ["tmpfs", "patched"])
def test_disk_full_while_saving_keeps_earlier_checkpoints(tmp_path, monkeypatch, capsys, how):
    disk = small_disk(tmp_path, monkeypatch, how)
    try:
        small, small_opt = trained()
        ckpts = CheckpointManager(disk / "checkpoints")
        ckpts.save("a", small, small_opt, {"seq": 1})
        torch.manual_seed(0)
        big = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                                           num_hidden_layers=2, num_attention_heads=4))  # ~3 MB of weights
        with pytest.raises(CptError, match="no space left.*needs about") as e:
            ckpts.save("b", big, build_optimizer(big, OptimizerCfg()), {"seq": 2})
        assert "\n" not in str(e.value)
        assert "warning" in capsys.readouterr().err  # said before it started writing
        assert sorted(p.name for p in (disk / "checkpoints").iterdir()) == ["a"]  # no temporary left
        assert ckpts.newest_intact().name == "a"
        model, opt = tiny()
        CheckpointManager.load(disk / "checkpoints" / "a", model, opt)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), small.parameters()))
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(disk)], capture_output=True)


def test_meta_with_wrong_types_is_not_a_traceback(tmp_path):
    saved(tmp_path, names=("a",))
    (tmp_path / "a" / "meta.json").write_text("[1, 2]")
    with pytest.raises(CptError, match="not a cpt checkpoint"):
        CheckpointManager.read_meta(tmp_path / "a")


def test_losses_that_are_not_finite_stay_valid_json(tmp_path):
    from cptkit.train.metrics import MetricsLog

    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"loss": math.nan, "val_loss": {"a": math.inf, "b": 1.0}})
    (rec,) = [strict_json(ln) for ln in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rec == {"loss": None, "val_loss": {"a": None, "b": 1.0}, "nonfinite": ["loss", "val_loss.a"]}


def test_train_state_with_wrong_types_is_refused():
    from cptkit.train.state import TrainState

    good = TrainState(stage_index=1, cursors={"a": 3}).state_dict()
    TrainState().load_state_dict(good)
    for key, bad in [("stage_index", "1"), ("entered", 1), ("cursors", {"a": -1}), ("tokens", None), ("cursors", [1])]:
        with pytest.raises(ValueError, match=f"train_state.{key}"):
            TrainState().load_state_dict({**good, key: bad})


def test_checkpoints_of_a_model_path_run_are_byte_reproducible(tmp_path, shared):
    """The RNG state a checkpoint saves is seeded from the recipe, also when `model.path` is used."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(shared, tokens=256))
    torch.manual_seed(12345)  # whatever the process did before must not matter
    assert main(["run", str(recipe), "--out", str(tmp_path / "one")]) == 0
    torch.manual_seed(54321)
    assert main(["run", str(recipe), "--out", str(tmp_path / "two")]) == 0
    one, two = (snapshot(tmp_path / name / "checkpoints" / "a@final" / "state") for name in ("one", "two"))
    for files in (one, two):
        files.pop(".metadata")  # DCP's own record holds the folder's path and a save id
    assert one == two and len(one) == 1  # the tensors: weights, moments and the RNG state


def test_an_output_that_is_a_device_is_written_into_not_replaced(tmp_path):
    from cptkit.fileio import write_text_atomic

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    write_text_atomic(fifo, "step,lr\n")
    assert reader.communicate(timeout=10)[0] == "step,lr\n"
    assert fifo.is_fifo()  # still the pipe, not a regular file in its place
    with pytest.raises(OSError) as e:
        write_text_atomic(Path("/dev/full"), "x")
    assert e.value.errno == errno.ENOSPC and Path("/dev/full").is_char_device()


def test_metadata_that_patches_an_allowed_class_is_refused(tmp_path):
    """BUILD sets attributes on whatever it is given: an allowed class must not be one of them."""
    import pathlib

    saved(tmp_path, names=("a",))
    fspath = pathlib.PosixPath.__fspath__
    name = b"__fspath__"
    payload = (b"\x80\x02cpathlib\nPosixPath\nN}X" + len(name).to_bytes(4, "little") + name
               + b"ctorch.serialization\n_get_layout\ns\x86b.")  # PosixPath.__fspath__ = _get_layout
    (tmp_path / "a" / "state" / ".metadata").write_bytes(payload)
    write_manifest(tmp_path / "a")
    with pytest.raises(CptError, match="refused.*sets attributes of `PosixPath`"):
        CheckpointManager.load(tmp_path / "a", *tiny())
    assert pathlib.PosixPath.__fspath__ is fspath


def test_metadata_that_points_outside_the_checkpoint_is_refused(tmp_path):
    """Tensor locations come from the metadata: they must stay inside the verified files."""
    saved(tmp_path, names=("a",))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 1_000_000)
    meta_path = tmp_path / "a" / "state" / ".metadata"
    original = meta_path.read_bytes()
    for change in ({"relative_path": str(outside)}, {"relative_path": "../../outside.bin"}, {"length": 10**12}):
        metadata = pickle.loads(original)  # our own file: a trusted read in the test
        for info in metadata.storage_data.values():
            info.__dict__.update(change)
        meta_path.write_bytes(pickle.dumps(metadata))
        write_manifest(tmp_path / "a")
        with pytest.raises(CptError, match="points outside the checkpoint's files"):
            CheckpointManager.load(tmp_path / "a", *tiny())


def test_a_manifest_with_malformed_entries_is_a_corrupt_checkpoint(tmp_path):
    ckpts = saved(tmp_path)
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    for bad in ({"state/.metadata": "abc"}, {"../../etc/passwd": {"size": 1, "sha256": "x"}}):
        (tmp_path / "b" / MANIFEST).write_text(json.dumps({**manifest, "files": {**manifest["files"], **bad}}))
        assert ckpts.newest_intact().name == "a"


def test_resume_with_every_checkpoint_corrupted_is_one_line(tmp_path, shared, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(shared, tokens=512, extra="checkpoint: {every_tokens: 256}"))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    recipe.write_text(recipe_text(shared, tokens=512, extra="checkpoint: {every_tokens: 256}"))
    for ckpt in (out / "checkpoints").iterdir():
        flip(next((ckpt / "state").glob("*.distcp")))
    (out / "summary.json").unlink()
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint is intact" in one_error_line(err) and err.count("skipping checkpoint") == 2


def test_a_checkpoint_swapped_out_when_a_save_died_is_put_back(tmp_path):
    from cptkit.build import claim_out_dir

    out = tmp_path / "run"
    claim_out_dir(out, False, "h", CheckpointManager(out / "checkpoints")).unlock()
    ckpts = saved(out / "checkpoints", names=("a",))
    os.replace(out / "checkpoints" / "a", out / "checkpoints" / ".old-a")  # killed between the renames
    assert ckpts.latest() is None
    claim_out_dir(out, True, "h", ckpts).unlock()
    assert ckpts.newest_intact().name == "a"
