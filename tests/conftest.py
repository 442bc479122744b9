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
