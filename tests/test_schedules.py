"""Exact LR values: every schedule against its closed-form formula at every step, phase
boundaries, and composition across stages (continuing, pre-cooldown, continued curves, scaling)."""

import math

import pytest

from conftest import small_recipe
from cptkit.schedules import (ConstantSchedule, CooldownSchedule, CosineSchedule, InfiniteSchedule, InverseSqrtSchedule,
                           LinearSchedule, RewarmSchedule, Segment, WSDSchedule, build_curve, decay_factor,
                           plan_segments, step_lr)

B = 1000  # tokens per step
T = 100 * B  # a 100-step stage


def segment(sched, start_lr=0.0, total=T):
    return Segment(build_curve(sched, total, B, start_lr), 0, total, start_lr)


def lrs(seg):
    return [step_lr(seg, k, B) for k in range(seg.total // B)]


def close(got, want):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-18), (k, g, w)


def test_decay_shapes_closed_form():
    for x in [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]:
        assert decay_factor("linear", x) == pytest.approx(1 - x, abs=1e-15)
        assert decay_factor("cosine", x) == pytest.approx(0.5 * (1 + math.cos(math.pi * x)), abs=1e-15)
        assert decay_factor("1-sqrt", x) == pytest.approx(1 - math.sqrt(x), abs=1e-15)
        h = lambda u: 1 / math.sqrt(1 + 10 * u) - 1  # noqa: E731 (Ibrahim et al.'s h, alpha = 10)
        assert decay_factor("inv-sqrt", x) == pytest.approx(1 - h(x) / h(1), abs=1e-15)


def test_constant_warms_up_linearly_then_holds():
    seg = segment(ConstantSchedule(kind="constant", warmup=0.1, lr=2e-3), start_lr=5e-4)
    close(lrs(seg), [2e-3 * min(k + 1, 10) / 10 for k in range(100)])
    assert seg.decay_start is None and seg.phase(T) == "hold" and seg.phase(5 * B) == "warmup"


def test_warmup_in_steps_equals_the_same_fraction():
    by_steps = segment(CosineSchedule(kind="cosine", warmup_steps=7, lr=1e-3))
    close(lrs(by_steps), lrs(segment(CosineSchedule(kind="cosine", warmup=0.07, lr=1e-3))))
    assert by_steps.curve.phases[0].end == 7 * B


def test_constant_without_lr_continues_at_start_lr():
    assert set(lrs(segment(ConstantSchedule(kind="constant"), start_lr=7e-4))) == {7e-4}


def test_cosine_to_default_floor():
    W = 5 * B
    want = [1e-3 * (k + 1) / 5 if k < 5 else
            1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * ((k + 1) * B - W) / (T - W))) for k in range(100)]
    seg = segment(CosineSchedule(kind="cosine", warmup=0.05, lr=1e-3), start_lr=1.0)
    close(lrs(seg), want)
    assert seg.end_lr == pytest.approx(1e-4, rel=1e-12) and seg.decay_start == W


def test_linear_decay():
    want = [1e-3 * (k + 1) / 10 if k < 10 else 2e-5 + (1e-3 - 2e-5) * (1 - ((k + 1) * B - 10 * B) / (90 * B))
            for k in range(100)]
    close(lrs(segment(LinearSchedule(kind="linear", warmup=0.1, lr=1e-3, min_lr=2e-5))), want)


def test_inverse_sqrt_is_megatrons():
    """max(min_lr, peak * sqrt(W / t)) after a warmup of W tokens."""
    W = 4 * B
    want = [1e-3 * (k + 1) / 4 if k < 4 else max(2e-4, 1e-3 * math.sqrt(W / ((k + 1) * B))) for k in range(100)]
    close(lrs(segment(InverseSqrtSchedule(kind="inverse-sqrt", warmup=0.04, lr=1e-3, min_lr=2e-4))), want)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "exponential"])
def test_wsd_holds_then_decays_over_last_fraction(shape):
    seg = segment(WSDSchedule(kind="wsd", warmup=0.1, lr=1e-3, decay=0.2, shape=shape, min_lr=1e-5))
    assert seg.decay_start == 80 * B

    def f(x):
        if shape == "exponential":
            return 1e-3 * (1e-5 / 1e-3) ** x
        return 1e-5 + (1e-3 - 1e-5) * decay_factor(shape, x)

    want = [1e-3 * (k + 1) / 10 if k < 10 else 1e-3 if k < 80 else f(((k + 1) * B - 80 * B) / (20 * B))
            for k in range(100)]
    close(lrs(seg), want)
    assert seg.phase(80 * B) == "hold" and seg.phase(81 * B) == "decay" and seg.phase(T) == "converged"


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "exponential"])
def test_cooldown_from_start_lr(shape):
    seg = segment(CooldownSchedule(kind="cooldown", shape=shape, to=3e-5), start_lr=6e-4)
    x = [(k + 1) / 100 for k in range(100)]
    if shape == "exponential":
        want = [6e-4 * (3e-5 / 6e-4) ** u for u in x]
    else:
        want = [3e-5 + (6e-4 - 3e-5) * {"linear": 1 - u, "cosine": 0.5 * (1 + math.cos(math.pi * u)),
                                        "1-sqrt": 1 - math.sqrt(u)}[shape] for u in x]
    close(lrs(seg), want)
    assert seg.decay_start == 0 and seg.end_lr == pytest.approx(3e-5, rel=1e-12)


def test_rewarm_starts_from_the_current_lr():
    """Linear from the inherited 1e-4 to the new peak over 1% (default), then cosine to 0.1 x peak."""
    seg = segment(RewarmSchedule(kind="rewarm", lr=2e-3), start_lr=1e-4, total=200 * B)
    W, S = 2 * B, 200 * B
    want = [1e-4 + (2e-3 - 1e-4) * (k + 1) / 2 if k < 2 else
            2e-4 + (2e-3 - 2e-4) * 0.5 * (1 + math.cos(math.pi * ((k + 1) * B - W) / (S - W))) for k in range(200)]
    close(lrs(seg), want)
    assert seg.phase(B) == "warmup" and seg.phase(S) == "converged"


@pytest.mark.parametrize("cooldown_shape", ["cosine", "inv-sqrt"])
def test_infinite_schedule_is_ibrahims(cooldown_shape):
    """Warmup 2%, cooldown to eta_const over 20%, hold, exponential anneal over the last 30%."""
    sched = InfiniteSchedule(kind="infinite", lr=1e-3, warmup=0.02, cooldown=0.2, cooldown_shape=cooldown_shape,
                             constant_lr=3e-4, anneal=0.3, min_lr=1e-5)
    seg = segment(sched)
    Tw, Tcd, Tann = 2 * B, 22 * B, 70 * B

    def h(u):
        return 1 / math.sqrt(1 + 10 * u) - 1

    def eta(t):
        if t <= Tw:
            return 1e-3 * t / Tw
        if t <= Tcd:
            x = (t - Tw) / (Tcd - Tw)
            if cooldown_shape == "cosine":
                return 3e-4 + (1e-3 - 3e-4) / 2 * (1 + math.cos(math.pi * x))
            return 1e-3 + (3e-4 - 1e-3) * h(x) / h(1)
        if t <= Tann:
            return 3e-4
        return 3e-4 * (1e-5 / 3e-4) ** ((t - Tann) / (T - Tann))

    close(lrs(seg), [eta((k + 1) * B) for k in range(100)])
    assert seg.decay_start == Tann and seg.phase(50 * B) == "hold" and seg.phase(T) == "converged"


def test_infinite_without_anneal_ends_holding():
    seg = segment(InfiniteSchedule(kind="infinite", lr=1e-3, constant_lr=2e-4))
    assert seg.decay_start is None and seg.end_lr == 2e-4 and seg.phase(T) == "hold"


def test_plan_composes_stages_and_pre_cooldown_init(shared, tmp_path):
    """Later stages continue where the LR stood: at the previous end, or at a checkpoint's LR."""
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


def test_continued_curve_runs_across_stages(shared, tmp_path):
    """`continue`: one cosine laid over both stages' tokens, each stage a window of it."""
    recipe = small_recipe(tmp_path, shared, """
  - {name: a, tokens: 2560, mix: {stories: 1}, schedule: {kind: cosine, lr: 1.0e-3, min_lr: 0.0}}
  - {name: b, tokens: 7680, mix: {stories: 1}, schedule: {kind: continue}}
""")
    a, b = plan_segments(recipe)
    got = [step_lr(a, k, 256) for k in range(10)] + [step_lr(b, k, 256) for k in range(30)]
    close(got, [1e-3 * 0.5 * (1 + math.cos(math.pi * (k + 1) / 40)) for k in range(40)])
    assert a.decay_start == 0 and b.decay_start is None and b.phase(b.total) == "converged"


@pytest.mark.parametrize("rule,factor", [("sqrt", 2.0), ("linear", 4.0), ("none", 1.0)])
def test_batch_change_scales_the_inherited_lr(shared, tmp_path, rule, factor):
    recipe = small_recipe(tmp_path, shared, f"""
  - {{name: a, tokens: 2560, mix: {{stories: 1}}, schedule: {{kind: constant, lr: 1.0e-3}}}}
  - {{name: b, tokens: 10240, batch_tokens: 1024, lr_scaling: {rule}, mix: {{stories: 1}}}}
""")
    a, b = plan_segments(recipe)
    assert recipe.stage_steps(recipe.stages[1]) == 10
    assert [step_lr(b, k, 1024) for k in range(10)] == pytest.approx([1e-3 * factor] * 10, rel=1e-12)
    assert b.scale == factor
