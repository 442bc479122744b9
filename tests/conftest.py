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


def small_recipe(tmp_path: Path, shared: Path, stages: str, header: str = "", optimizer: str = "{lr: 1.0e-3}"):
    """A validated recipe over the shared corpora (stories, wiki, math): 64-token samples,
    256 tokens a step, lr 1e-3, and the given YAML `stages:` block (plus top-level `header` lines)."""
    from cpt.recipe import load_recipe

    path = tmp_path / "small.yaml"
    path.write_text(f"""
model: {{path: {shared}/models/stories260K}}
seq_len: 64
micro_batch: 4
batch_tokens: 256
optimizer: {optimizer}
sources:
  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}
  wiki: {{paths: [{shared}/corpora/en/wikipedia_en.txt], format: lines}}
  math: {{paths: [{shared}/corpora/math/gsm8k_train.jsonl], template: "{{question}}"}}
{header}
stages:
{stages}""")
    return load_recipe(path)
