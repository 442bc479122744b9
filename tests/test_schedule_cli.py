"""`cpt schedule`: per-step LRs that equal the closed-form formulas, across stage boundaries."""

from __future__ import annotations

import csv
import math

from cpt.cli import main

STAGES = """
  - name: pre
    tokens: 51200
    mix: {stories: 1.0}
    schedule: {kind: wsd, warmup: 0.1, lr: 2.0e-3, decay: 0.2, shape: cosine, min_lr: 1.0e-4}
  - name: cool
    tokens: 25600
    init: pre@pre-cooldown
    mix: {stories: 1.0}
    schedule: {kind: cooldown, shape: 1-sqrt, to: 0.0}
  - name: again
    tokens: 12800
    init: base
    mix: {stories: 1.0}
    schedule: {kind: cosine, warmup: 0.2, lr: 1.0e-3}
"""


def closed_form(step: int) -> tuple[str, float]:
    """The formulas, written out for this plan (256 tokens a step): 200 + 100 + 50 steps."""
    if step <= 200:  # wsd: warmup 20 steps, hold to step 160, cosine to 1e-4 over the last 40
        if step <= 20:
            return "pre", 2e-3 * step / 20
        if step <= 160:
            return "pre", 2e-3
        x = (step - 160) / 40
        return "pre", 1e-4 + (2e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * x))
    if step <= 300:  # from pre's held LR to 0 with 1 - sqrt(x)
        return "cool", 2e-3 * (1 - math.sqrt((step - 200) / 100))
    k = step - 300  # fresh: warmup 10 steps to 1e-3, cosine to 1e-4 over the remaining 40
    if k <= 10:
        return "again", 1e-3 * k / 10
    return "again", 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (k - 10) / 40))


def test_csv_matches_the_formulas_at_every_step(tmp_path, shared, capsys):
    from conftest import small_recipe

    small_recipe(tmp_path, shared, STAGES)  # writes and validates tmp_path/small.yaml
    out = tmp_path / "lr.csv"
    assert main(["schedule", str(tmp_path / "small.yaml"), "--csv", str(out), "--plot", str(tmp_path / "lr.png")]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 350
    for row in rows:
        step = int(row["step"])
        stage, lr = closed_form(step)
        assert row["stage"] == stage and int(row["tokens"]) == step * 256
        assert math.isclose(float(row["lr"]), lr, rel_tol=1e-9, abs_tol=1e-15), row
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "cool: cooldown, 25,600 tokens, starts at 0.002" in printed and "wrote 350 steps" in printed
