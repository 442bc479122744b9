"""Exact LR values: closed-form formulas at many points, phase boundaries, stage composition."""

import math

import pytest

from cpt.recipe import ConstantSchedule, CooldownSchedule, CosineSchedule, WSDSchedule
from conftest import small_recipe
from cpt.schedules import build_segment, decay_factor, step_lr

B = 1000  # tokens per step
T = 100 * B  # a 100-step stage


def test_decay_shapes_closed_form():
    for x in [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]:
        assert decay_factor("linear", x) == pytest.approx(1 - x, abs=1e-15)
        assert decay_factor("cosine", x) == pytest.approx(0.5 * (1 + math.cos(math.pi * x)), abs=1e-15)
        assert decay_factor("1-sqrt", x) == pytest.approx(1 - math.sqrt(x), abs=1e-15)


def test_constant_warms_up_linearly_then_holds():
    seg = build_segment(ConstantSchedule(kind="constant", warmup=0.1, lr=2e-3), T, B, start_lr=5e-4)
    assert seg.warmup == 10 * B
    lrs = [step_lr(seg, k, B) for k in range(100)]
    for k in range(10):  # step k completes (k+1)*B tokens: lr = peak * (k+1)/10
        assert lrs[k] == pytest.approx(2e-3 * (k + 1) / 10, rel=1e-12)
    assert all(lr == 2e-3 for lr in lrs[9:])
    assert seg.decay_start is None and seg.phase(T) == "hold"


def test_constant_without_lr_continues_at_start_lr():
    seg = build_segment(ConstantSchedule(kind="constant"), T, B, start_lr=7e-4)
    assert {step_lr(seg, k, B) for k in range(100)} == {7e-4}


def test_cosine_to_default_floor():
    seg = build_segment(CosineSchedule(kind="cosine", warmup=0.05, lr=1e-3), T, B, start_lr=1.0)
    W = 5 * B
    for k in range(5, 100):
        t = (k + 1) * B
        want = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))
        assert step_lr(seg, k, B) == pytest.approx(want, rel=1e-12)
    assert seg.end_lr == pytest.approx(1e-4, rel=1e-12)
    assert seg.decay_start == W


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_holds_then_decays_over_last_fraction(shape):
    seg = build_segment(WSDSchedule(kind="wsd", warmup=0.1, lr=1e-3, decay=0.2, shape=shape, min_lr=1e-5),
                        T, B, start_lr=0.0)
    assert seg.decay_start == 80 * B
    for k in range(10, 80):
        assert step_lr(seg, k, B) == 1e-3
    for k in range(80, 100):
        x = ((k + 1) * B - 80 * B) / (20 * B)
        assert step_lr(seg, k, B) == pytest.approx(1e-5 + (1e-3 - 1e-5) * decay_factor(shape, x), rel=1e-12)
    assert step_lr(seg, 99, B) == pytest.approx(1e-5, rel=1e-12)
    assert seg.phase(80 * B) == "hold" and seg.phase(81 * B) == "decay" and seg.phase(T) == "converged"


def test_cooldown_from_start_lr():
    seg = build_segment(CooldownSchedule(kind="cooldown", shape="1-sqrt", to=0.0), T, B, start_lr=6e-4)
    for k in range(100):
        assert step_lr(seg, k, B) == pytest.approx(6e-4 * (1 - math.sqrt((k + 1) / 100)), rel=1e-12, abs=1e-18)
    assert seg.decay_start == 0 and seg.end_lr == 0.0


def test_plan_composes_stages_and_pre_cooldown_init(shared, tmp_path):
    """Later stages continue where the LR stood: at the previous end, or at a checkpoint's LR."""
    from cpt.schedules import plan_segments

    recipe = small_recipe(tmp_path, shared, """
  - {name: a, tokens: 2560, mix: {stories: 1}, schedule: {kind: wsd, warmup: 0.1, decay: 0.5, min_lr: 1.0e-4}}
  - {name: b, tokens: 2560, mix: {stories: 1}, schedule: {kind: constant}}
  - {name: c, tokens: 2560, mix: {stories: 1}, init: a@pre-cooldown, schedule: {kind: constant}}
  - {name: d, tokens: 2560, mix: {stories: 1}, schedule: {kind: cooldown, shape: linear, to: 0.0}}
""")
    a, b, c, d = plan_segments(recipe)
    assert a.end_lr == pytest.approx(1e-4)
    assert [step_lr(b, k, 256) for k in range(10)] == pytest.approx([1e-4] * 10, rel=1e-12)  # continues at a's end
    assert {step_lr(c, k, 256) for k in range(10)} == {1e-3}  # a's LR before its decay began
    assert [step_lr(d, k, 256) for k in range(10)] == pytest.approx([1e-3 * (1 - (k + 1) / 10) for k in range(10)])
