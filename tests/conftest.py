"""Shared fixtures. Real models and corpora come from ../shared/data (override: CPT_SHARED_DATA);
tests that need them skip with a reason where it is absent, as on a user's fresh clone."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CPT_SHARED_DATA", ROOT.parent / "shared" / "data"))
STORIES = SHARED / "models" / "stories260K"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (STORIES / "config.json").is_file():
        pytest.skip(f"shared test data not found at {SHARED} (set CPT_SHARED_DATA)")
    return SHARED


def write_recipe(path: Path, shared: Path, sources: str, stages: str, header: str = "", seq_len: int = 64,
                 micro_batch: int = 4, batch_tokens: int = 256, optimizer: str = "{lr: 1.0e-3}") -> Path:
    """A recipe file on stories260K with the given YAML blocks: `sources:` and `stages:` entries
    (indented as under those keys) and top-level `header` lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""
model: {{path: {shared}/models/stories260K}}
seq_len: {seq_len}
micro_batch: {micro_batch}
batch_tokens: {batch_tokens}
optimizer: {optimizer}
sources:
{sources}
{header}
stages:
{stages}""")
    return path


def small_recipe(tmp_path: Path, shared: Path, stages: str, header: str = "", optimizer: str = "{lr: 1.0e-3}"):
    """A validated recipe over the shared corpora (stories, wiki, math): 64-token samples,
    256 tokens a step, lr 1e-3, and the given YAML `stages:` block (plus top-level `header` lines)."""
    from cptkit.recipe import load_recipe

    sources = f"""  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}
  wiki: {{paths: [{shared}/corpora/en/wikipedia_en.txt], format: lines}}
  math: {{paths: [{shared}/corpora/math/gsm8k_train.jsonl], template: "{{question}}"}}"""
    return load_recipe(write_recipe(tmp_path / "small.yaml", shared, sources, stages, header, optimizer=optimizer))


def corpus_heads(folder: Path, shared: Path, stories_chars: int, math_lines: int) -> tuple[Path, Path]:
    """The heads of TinyStories and GSM8K (enough tokens, a fraction of the tokenizing time),
    written once into `folder`."""
    stories, math = folder / "stories.txt", folder / "math.jsonl"
    if not stories.exists():
        folder.mkdir(parents=True, exist_ok=True)
        stories.write_text((shared / "corpora/en/tinystories.txt").read_text()[:stories_chars])
        math.write_text("\n".join((shared / "corpora/math/gsm8k_train.jsonl").read_text().splitlines()[:math_lines]) + "\n")
    return stories, math


VI_CHARS = ["ư", "ơ", "ạ", "ệ", "ế", "ộ", "ờ", "ả", "ị", "đ", "à", "á", "ố", "ủ", "ớ", "ì", "ấ", "ậ", "ồ", "ể"]


def hand_extended_tokenizer(shared: Path, out: Path) -> Path:
    """The stories260K tokenizer with 20 Vietnamese letters and two merges appended by hand (a
    fixture that does not depend on `cpt vocab extend`): ids 512-533, every old id in place."""
    import json
    import shutil

    out.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(STORIES / f, out / f)  # not the shared files' read-only mode: one is rewritten below
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab, merges = tok["model"]["vocab"], tok["model"]["merges"]
    for c in VI_CHARS:
        vocab[c] = len(vocab)
    for a, b in (("▁n", "g"), ("▁ng", "ư")):
        vocab[a + b] = len(vocab)
        merges.append([a, b])
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    return out


def extended_model(shared: Path, tmp_path: Path, untie: bool = False) -> Path:
    """stories260K with the hand-extended tokenizer, rows initialised by `cpt vocab init`."""
    from cptkit.vocab.init import init_model

    tokenizer = hand_extended_tokenizer(shared, tmp_path / "tok-ext")
    out = tmp_path / ("model-untied" if untie else "model-ext")
    init_model(STORIES, tokenizer, out, untie=untie)
    return out


def killed_at_step(monkeypatch, step: int, train) -> None:
    """Run `train()` with the loop's optimizer step interrupted at its `step`-th call (1-based), as a
    kill would stop it; the loop is whole again afterwards."""
    import cptkit.train.loop as loop

    real, calls = loop.train_step, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(loop, "train_step", real)


def fake_checkpoint(folder: Path, meta: str = "{}", state: bool = True) -> Path:
    """A checkpoint folder with `meta.json` and a placeholder `state/`, its checksums written:
    enough for what the recipe checks at load (no weights are ever read from it)."""
    from cptkit.checkpoint.integrity import write_manifest

    folder.mkdir(parents=True)
    if state:
        (folder / "state").mkdir()
        (folder / "state" / ".metadata").write_bytes(b"placeholder")
    (folder / "meta.json").write_text(meta)
    if state:
        write_manifest(folder)
    return folder


_PACKAGE: dict = {}  # the background install of tests/test_package.py, started once the test is collected


def pytest_collection_modifyitems(session, config, items):
    """Start the package test's install (a minute of pip) in the background as the session starts,
    when that test will run, so the rest of the suite does not wait for it."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("build") is None or not any(i.nodeid.startswith("tests/test_package.py")
                                                            for i in items if i.get_closest_marker("slow")):
        return
    from test_package import start_install

    folder = Path(tempfile.mkdtemp(prefix="cpt-package-"))
    _PACKAGE["run"] = (start_install(folder), folder)


@pytest.fixture(scope="session")
def package_install():
    if "run" not in _PACKAGE:
        pytest.skip("the `build` package is not installed (pip install build)")
    proc, folder = _PACKAGE["run"]
    yield proc, folder
    if proc.poll() is None:
        proc.kill()
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
