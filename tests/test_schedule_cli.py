"""`cpt schedule`: per-step LRs that equal the closed-form formulas, across stage boundaries."""

from __future__ import annotations

import csv
import math

from cptkit.cli import main

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


EVERY_KIND = """
  - name: s1
    tokens: 10240
    mix: {stories: 1.0}
    schedule: {kind: infinite, lr: 2.0e-3, warmup: 0.05, cooldown: 0.25, cooldown_shape: inv-sqrt, constant_lr: 5.0e-4}
  - {name: s2, tokens: 5120, batch_tokens: 512, lr_scaling: sqrt, mix: {stories: 1.0}}
  - name: s3
    tokens: 5120
    mix: {stories: 1.0}
    schedule: {kind: linear, lr: 1.0e-3, warmup_steps: 2, min_lr: 1.0e-4}
  - name: s4
    tokens: 5120
    mix: {stories: 1.0}
    schedule: {kind: inverse-sqrt, lr: 1.0e-3, warmup: 0.1, min_lr: 4.0e-4}
  - name: s5
    tokens: 5120
    mix: {stories: 1.0}
    schedule: {kind: rewarm, lr: 1.5e-3, warmup: 0.1, shape: 1-sqrt, min_lr: 3.0e-4}
  - {name: s6, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: cooldown, shape: exponential, to: 1.0e-5}}
  - {name: s7, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: continue}}
"""


def every_kind(stage: str, n: int) -> float:
    """Step n (1-based, within its stage) of each stage above, written out from the formulas."""
    def h(u):
        return 1 / math.sqrt(1 + 10 * u) - 1

    if stage == "s1":  # warmup 2 steps, inv-sqrt cooldown to 5e-4 over 10, hold
        return 2e-3 * n / 2 if n <= 2 else 2e-3 + (5e-4 - 2e-3) * h((n - 2) / 10) / h(1) if n <= 12 else 5e-4
    if stage == "s2":  # holds s1's 5e-4 at twice the batch: x sqrt(2)
        return 5e-4 * math.sqrt(2)
    if stage == "s3":
        return 1e-3 * n / 2 if n <= 2 else 1e-4 + (1e-3 - 1e-4) * (1 - (n - 2) / 18)
    if stage == "s4":
        return 1e-3 * n / 2 if n <= 2 else max(4e-4, 1e-3 * math.sqrt(2 / n))
    if stage == "s5":  # from s4's end (4e-4), not from 0
        return 4e-4 + (1.5e-3 - 4e-4) * n / 2 if n <= 2 else 3e-4 + 1.2e-3 * (1 - math.sqrt((n - 2) / 18))
    m = n + (10 if stage == "s7" else 0)  # one exponential laid over s6 and s7
    return 3e-4 * (1e-5 / 3e-4) ** (m / 20)


def test_csv_matches_every_schedule_kind_across_boundaries(tmp_path, shared):
    from conftest import small_recipe

    small_recipe(tmp_path, shared, EVERY_KIND)
    out = tmp_path / "lr.csv"
    assert main(["schedule", str(tmp_path / "small.yaml"), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["stage"] for r in rows] == [s for s, n in [("s1", 40), ("s2", 10), ("s3", 20), ("s4", 20), ("s5", 20),
                                                         ("s6", 10), ("s7", 10)] for _ in range(n)]
    n, tokens, last = 0, 0, None
    for row in rows:
        n = n + 1 if row["stage"] == last else 1
        last = row["stage"]
        tokens += 512 if last == "s2" else 256
        assert int(row["tokens"]) == tokens
        assert math.isclose(float(row["lr"]), every_kind(last, n), rel_tol=1e-9), row


THE_REST = """
  - {name: i1, tokens: 5120, mix: {stories: 1.0}, schedule: {kind: infinite, lr: 1.0e-3, warmup: 0.1, cooldown: 0.3,
     cooldown_shape: cosine, constant_lr: 3.0e-4}}
  - {name: i2, tokens: 2560, mix: {stories: 1.0}}
  - {name: i3, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: cooldown, shape: exponential, to: 1.0e-5}}
  - {name: i4, tokens: 10240, mix: {stories: 1.0}, schedule: {kind: infinite, lr: 1.0e-3, warmup: 0.05, cooldown: 0.25,
     cooldown_shape: inv-sqrt, constant_lr: 2.0e-4, anneal: 0.3, min_lr: 2.0e-5}}
  - {name: w1, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: wsd, lr: 2.0e-3, warmup_steps: 1, decay: 0.5,
     shape: linear, min_lr: 1.0e-4}}
  - {name: c1, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: cooldown, shape: cosine, to: 1.0e-5}}
  - {name: k1, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: constant, lr: 5.0e-4, warmup: 0.2}}
  - {name: s4, tokens: 5120, new: [wiki], strategy: {name: strategy4, N: 10, alpha0: 0.7}}
  - {name: r1, tokens: 25600, mix: {wiki: 1.0}, schedule: {kind: rewarm, lr: 1.0e-3}}
  - {name: c2, tokens: 2560, mix: {wiki: 1.0}, schedule: {kind: cooldown, shape: linear}}
  - {name: w2, tokens: 2560, mix: {wiki: 1.0}, schedule: {kind: wsd, lr: 1.0e-3, decay: 0.2, shape: exponential,
     min_lr: 1.0e-5}}
"""


def the_rest(stage: str, n: int, s4_base_steps: int) -> float:
    """Step n (1-based, within its stage) of THE_REST, from the formulas (256 tokens a step)."""
    def h(u):
        return 1 / math.sqrt(1 + 10 * u) - 1

    def cos(x):
        return 0.5 * (1 + math.cos(math.pi * x))

    if stage == "i1":  # Ibrahim: warm up 2 steps, cosine cooldown to eta_const over 6, hold
        return 1e-3 * n / 2 if n <= 2 else 3e-4 + 7e-4 * cos((n - 2) / 6) if n <= 8 else 3e-4
    if stage == "i2":  # later tasks hold eta_const
        return 3e-4
    if stage == "i3":  # and the last anneals exponentially
        return 3e-4 * (1e-5 / 3e-4) ** (n / 10)
    if stage == "i4":  # the whole infinite schedule in one stage: inv-sqrt cooldown over 10, anneal over 12
        if n <= 12:
            return 1e-3 * n / 2 if n <= 2 else 1e-3 + (2e-4 - 1e-3) * h((n - 2) / 10) / h(1)
        return 2e-4 if n <= 28 else 2e-4 * (2e-5 / 2e-4) ** ((n - 28) / 12)
    if stage == "w1":  # one warmup step, hold to step 5, linear over the last half
        return 2e-3 if n <= 5 else 1e-4 + 1.9e-3 * (1 - (n - 5) / 5)
    if stage == "c1":  # from w1's 1e-4
        return 1e-5 + 9e-5 * cos(n / 10)
    if stage == "k1":
        return 5e-4 * n / 2 if n <= 2 else 5e-4
    if stage in ("s4.base", "s4"):  # Strategy 4: one cosine from 5e-4 to 5e-4/10 over both halves
        m = n + (s4_base_steps if stage == "s4" else 0)
        return 5e-5 + 4.5e-4 * cos(m / 20)
    if stage == "r1":  # rewarm from s4's 5e-5 (not 0) over 1% = 1 step, cosine to 0.1 x peak
        return 1e-3 if n == 1 else 1e-4 + 9e-4 * cos((n - 1) / 99)
    if stage == "c2":
        return 1e-4 * (1 - n / 10)
    return 1e-3 if n <= 8 else 1e-3 * (1e-5 / 1e-3) ** ((n - 8) / 2)  # w2


def test_csv_matches_the_other_shapes_infinite_across_stages_and_strategy4(tmp_path, shared):
    from conftest import small_recipe

    small_recipe(tmp_path, shared, THE_REST, header="base_sources: [stories]")
    out = tmp_path / "lr.csv"
    assert main(["schedule", str(tmp_path / "small.yaml"), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    # Strategy 4 switches at the first step whose LR (closed form) is at or below LR_max/5 = 1e-4
    switch = next(m for m in range(1, 21) if the_rest("s4.base", m, 0) <= 1e-4) - 1
    sizes = [("i1", 20), ("i2", 10), ("i3", 10), ("i4", 40), ("w1", 10), ("c1", 10), ("k1", 10),
             ("s4.base", switch), ("s4", 20 - switch), ("r1", 100), ("c2", 10), ("w2", 10)]
    assert [r["stage"] for r in rows] == [s for s, k in sizes for _ in range(k)]
    n, last = 0, None
    for step, row in enumerate(rows, 1):
        n = n + 1 if row["stage"] == last else 1
        last = row["stage"]
        assert int(row["step"]) == step and int(row["tokens"]) == 256 * step
        assert math.isclose(float(row["lr"]), the_rest(last, n, switch), rel_tol=1e-9, abs_tol=0.0), row
