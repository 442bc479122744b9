"""The recipes in examples/ load and plan as the README says (they read ../shared/data by their
own relative paths, so they are checked only where that folder sits beside the repository)."""

from pathlib import Path

import pytest

from cpt.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "models" / "stories260K"


@pytest.mark.parametrize("recipe", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_plans(recipe, capsys):
    if not (BESIDE / "config.json").is_file():
        pytest.skip(f"the examples read ../shared/data beside the repository; not found at {BESIDE}")
    assert main(["plan", str(recipe)]) == 0
    assert "stage " in capsys.readouterr().out


def test_strategies_example_expands_its_presets(capsys):
    if not (BESIDE / "config.json").is_file():
        pytest.skip(f"the examples read ../shared/data beside the repository; not found at {BESIDE}")
    assert main(["plan", str(EXAMPLES[0].parent / "strategies.yaml")]) == 0
    out = capsys.readouterr().out
    for line in ("stage code.base:", "stage code:", "from strategy strategy4 (N=10, alpha0=0.7",
                 "cooldown (continued)", "from strategy cooldown-mix (mix=A"):
        assert line in out
    assert "warning" not in out  # starts Strategy 4 at LR_max, reads no source past 4 epochs
