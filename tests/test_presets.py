"""The cookbook's strategies as presets: the weights and LRs they expand to, Strategy 4's switch at
the first step whose LR is at or below the threshold (planned and trained), the starting-point
warning, optimizer-state reset, and the one-line errors for bad preset input."""

import json
import math
import subprocess
import sys

import pytest

from conftest import fake_checkpoint, small_recipe
from cptkit.cli import main
from cptkit.errors import RecipeError
from cptkit.plan import start_point_warnings
from cptkit.schedules import plan_segments, step_lr

BASE = "base_sources: [stories]"
# D0 pretraining with an infinite-style WSD (LR_max 1e-3, cooled down to 1e-5); math -> buffer
PRE_PLAIN = "  - {name: pre, tokens: 5120, mix: {stories: 1}, schedule: {kind: wsd, warmup: 0.1, decay: 0.2, min_lr: 1.0e-5}"
PRE = PRE_PLAIN + ", buffer_add: {source: math, tokens: 2000}}\n"


def stage(tmp_path, shared, spec: str, before: str = PRE):
    recipe = small_recipe(tmp_path, shared, before + spec, header=BASE)
    return recipe, plan_segments(recipe)


@pytest.mark.parametrize("spec,mix", [
    ("strategy: naive", {"wiki": 1.0}),
    ("strategy: replay", {"stories": 0.05, "wiki": 0.95}),
    ("strategy: {name: replay, alpha0: 0.25}", {"stories": 0.25, "wiki": 0.75}),
    ("strategy: buffer-mix", {"stories": 0.33, "wiki": 0.33, "buffer": 0.34}),
    ("strategy: {name: buffer-mix, mix: B}", {"stories": 0.05, "wiki": 0.48, "buffer": 0.47}),
    ("strategy: {name: buffer-mix, mix: C}", {"wiki": 0.10, "buffer": 0.90}),
    ("strategy: {name: buffer-mix, mix: [0.2, 0.5, 0.3]}", {"stories": 0.2, "wiki": 0.5, "buffer": 0.3}),
])
def test_mix_presets_expand_to_the_cookbooks_weights(tmp_path, shared, spec, mix):
    recipe, segs = stage(tmp_path, shared, f"  - {{name: s, tokens: 2560, init: pre@pre-cooldown, new: [wiki], {spec}}}\n")
    assert recipe.stages[1].mix == pytest.approx(mix) and set(recipe.stages[1].mix) == set(mix)
    assert {step_lr(segs[1], k, 256) for k in range(10)} == {1e-3}  # the stage's own schedule: hold LR_max


def test_d0_share_is_split_over_base_sources(tmp_path, shared):
    recipe = small_recipe(tmp_path, shared, "  - {name: s, tokens: 2560, new: [wiki], strategy: {name: replay, "
                          "alpha0: 0.3}}\n", header="base_sources: [stories, math]")
    assert recipe.stages[0].mix == pytest.approx({"stories": 0.15, "math": 0.15, "wiki": 0.7})


@pytest.mark.parametrize("which,weights", [("A", (0.33, 0.33, 0.34)), ("B", (0.05, 0.47, 0.48))])
def test_cooldown_mix_decays_to_the_end_on_the_mix(tmp_path, shared, which, weights):
    recipe, segs = stage(tmp_path, shared, f"  - {{name: s, tokens: 2560, init: pre@pre-cooldown, new: [wiki], "
                                           f"strategy: {{name: cooldown-mix, mix: {which}}}}}\n")
    assert recipe.stages[1].mix == pytest.approx(dict(zip(["stories", "wiki", "buffer"], weights)))
    assert [step_lr(segs[1], k, 256) for k in range(10)] == pytest.approx(
        [1e-3 * (1 - math.sqrt((k + 1) / 10)) for k in range(10)], rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("spec,peak,alpha0", [
    ("{name: strategy5, peak: 2.0e-3, alpha0: 0.4}", 2e-3, 0.4),
    ("{name: rewarm-replay, peak: 5.0e-4}", 5e-4, 0.05),
])
def test_rewarm_presets(tmp_path, shared, spec, peak, alpha0):
    """From the converged end of `pre` (1e-5): linear to the peak over 1%, cosine to 0.1 x peak."""
    recipe, segs = stage(tmp_path, shared, f"  - {{name: s, tokens: 25600, new: [wiki], strategy: {spec}}}\n")
    assert recipe.stages[1].mix == pytest.approx({"stories": alpha0, "wiki": 1 - alpha0})
    want = [peak * (k + 1) if k < 1 else 0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * k / 99))
            for k in range(100)]
    got = [step_lr(segs[1], k, 256) for k in range(100)]
    assert got == pytest.approx(want, rel=1e-12)


STRATEGY4 = "  - {name: s, tokens: 25600, init: pre@pre-cooldown, new: [wiki], strategy: %s}\n"


def first_at_or_below(start: float, n: float, threshold: float, steps: int) -> int:
    """Closed form: cosine from start to start/N over `steps` steps; the first step at/below."""
    return next(k for k in range(steps)
                if start / n + (start - start / n) * 0.5 * (1 + math.cos(math.pi * (k + 1) / steps)) <= threshold)


@pytest.mark.parametrize("spec,n,threshold", [
    ("strategy4", 10, 1e-3 / 5),
    ("{name: strategy4, N: 100, switch_at: 5.0e-4, alpha0: 0.6}", 100, 5e-4),
])
def test_strategy4_switches_at_the_first_step_at_or_below_the_threshold(tmp_path, shared, spec, n, threshold):
    recipe, segs = stage(tmp_path, shared, STRATEGY4 % spec)
    base, mixed = recipe.stages[1:]
    switch = first_at_or_below(1e-3, n, threshold, 100)
    assert (base.name, base.tokens, base.init, base.mix) == ("s.base", switch * 256, "pre@pre-cooldown", {"stories": 1.0})
    alpha0 = 0.7 if spec == "strategy4" else 0.6
    assert (mixed.name, mixed.tokens) == ("s", (100 - switch) * 256)
    assert mixed.mix == pytest.approx({"stories": alpha0, "wiki": 1 - alpha0})
    lrs = [step_lr(segs[1], k, 256) for k in range(switch)] + [step_lr(segs[2], k, 256) for k in range(100 - switch)]
    want = [1e-3 / n + (1e-3 - 1e-3 / n) * 0.5 * (1 + math.cos(math.pi * (k + 1) / 100)) for k in range(100)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert max(lrs[switch:]) <= threshold < min(lrs[:switch])


def test_strategy4_takes_the_optimizer_policy_at_its_start_only(tmp_path, shared):
    """`optimizer_state: reset` resets at the stage's start, not again at the switch, mid-decay."""
    recipe, _ = stage(tmp_path, shared, STRATEGY4.replace("strategy: %s", "strategy: strategy4, optimizer_state: reset"))
    assert [s.optimizer_state for s in recipe.stages[1:]] == ["reset", "keep"]


def test_plan_prints_the_expansion(tmp_path, shared, capsys):
    stage(tmp_path, shared, STRATEGY4 % "strategy4")
    assert main(["plan", str(tmp_path / "small.yaml")]) == 0
    out = capsys.readouterr().out
    assert "stage s.base:" in out and "stage s:" in out and "from strategy strategy4 (N=10, alpha0=0.7" in out
    assert "cooldown (continued)" in out


def test_strategy4_run_switches_mixes_at_the_threshold(tmp_path, shared):
    """Train it: the first step of the mixed stage is the first whose LR is at or below LR_max/5,
    the base stage reads no new data, and the mixed one reads its share."""
    from cptkit.runner import run_recipe

    small_recipe(tmp_path, shared, PRE_PLAIN.replace("5120", "2560") + "}\n" + (STRATEGY4 % "strategy4").replace("25600", "7680"),
                 header=BASE + "\nvalidation: {tokens_per_source: 512}")
    run_recipe(tmp_path / "small.yaml", tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train" and r["stage"].startswith("s")]
    assert len(train) == 30
    first_mixed = next(i for i, r in enumerate(train) if r["stage"] == "s")
    assert first_mixed == next(i for i, r in enumerate(train) if r["lr"] <= 1e-3 / 5) > 0
    assert all(r["stage"] == "s" for r in train[first_mixed:])
    seen = {r["stage"]: r["data_seen"] for r in records if r["kind"] == "data"}
    assert "wiki" not in seen["s.base"] and seen["s"]["wiki"]["samples"] > 0


def test_warns_when_holding_the_lr_of_a_cooled_down_checkpoint(tmp_path, shared):
    recipe, segs = stage(tmp_path, shared, "  - {name: s, tokens: 2560, new: [wiki], strategy: replay}\n")
    (warning,) = start_point_warnings(recipe, segs)
    assert "stage s:" in warning and "pre@final" in warning and "init: pre@pre-cooldown" in warning
    recipe, segs = stage(tmp_path, shared, "  - {name: s, tokens: 2560, init: pre@pre-cooldown, new: [wiki], "
                                           "strategy: replay}\n")
    assert start_point_warnings(recipe, segs) == []


def test_warns_when_strategy4_starts_from_a_cooled_down_checkpoint(tmp_path, shared):
    recipe, segs = stage(tmp_path, shared, STRATEGY4.replace("init: pre@pre-cooldown", "init: pre@final") % "strategy4")
    (warning,) = start_point_warnings(recipe, segs)
    assert "stage s.base: decays (Strategy 4) from the LR (1e-05) but starts from pre@final" in warning
    assert "init: pre@pre-cooldown" in warning
    recipe, segs = stage(tmp_path, shared, STRATEGY4 % "strategy4")
    assert start_point_warnings(recipe, segs) == []


def test_warns_for_a_converged_checkpoint_folder(tmp_path, shared):
    ckpts = tmp_path / "old" / "checkpoints"
    for name, phase, lr in [("pre@final", "converged", 1e-5), ("pre@pre-cooldown", "hold", 1e-3)]:
        fake_checkpoint(ckpts / name, json.dumps({"phase": phase, "lr": lr}))
    recipe, segs = stage(tmp_path, shared, f"  - {{name: s, tokens: 2560, init: {ckpts / 'pre@final'}, "
                                           "mix: {wiki: 1}}\n", before="")
    (warning,) = start_point_warnings(recipe, segs)
    assert f"init: {ckpts / 'pre@pre-cooldown'}" in warning and "converged" in warning
    assert step_lr(segs[0], 0, 256) == 1e-5  # it does hold the stored LR


BAD = [
    (STRATEGY4 % "{name: strategy4, switch_at: 5.0e-5}", "stages[1].strategy.switch_at: the LR decays from 0.001 to 0.0001"),
    (STRATEGY4 % "{name: strategy4, switch_at: 2.0e-3}", "stages[1].strategy.switch_at: 0.002 is at or above"),
    ("  - {name: s, tokens: 2560, new: [wiki], strategy: {name: buffer-mix, mix: [0.3, 0.3, 0.3]}}\n",
     "stages[1].strategy.mix: weights [0.3, 0.3, 0.3] sum to 0.9"),
    ("  - {name: s, tokens: 2560, mix: {wiki: 1}, schedule: {kind: cosine, lr: 1.0e-3, min_lr: 2.0e-3}}\n",
     "stages[1].schedule: the floor 0.002 is above the LR it decays from (0.001)"),
    ("  - {name: s, tokens: 2560, init: pre@pre-cooldown, mix: {wiki: 1}, schedule: {kind: cooldown, to: 2.0e-3}}\n",
     "stages[1].schedule: the floor 0.002 is above"),
    ("  - {name: c, tokens: 2560, mix: {wiki: 1}, schedule: {kind: cooldown}}\n  - {name: s, tokens: 2560, mix: {wiki: 1}}\n",
     "stages[2].schedule: the LR is 0 throughout"),
    ("  - {name: s, tokens: 2560, mix: {wiki: 1}, schedule: {kind: cooldown, shape: exponential}}\n",
     "stages[1].schedule.to: an exponential decay needs a positive final LR"),
    ("  - {name: s, tokens: 2560, mix: {wiki: 1}, schedule: {kind: constant, lr: 0}}\n",
     "stages[1].schedule.lr: Input should be greater than 0"),
    ("  - {name: s, tokens: 2560, mix: {wiki: 1}, optimizer_state: reset-new}\n",
     "stages[1].optimizer_state: reset-new gives fresh moments only to newly trainable parameters, but this "
     "stage trains nothing that its starting point kept frozen"),
    ("  - {name: s, tokens: 2560, mix: {wiki: 1}, new: [wiki], strategy: naive}\n",
     "stages[1].mix: the strategy `naive` sets the mix"),
    ("  - {name: s, tokens: 2560, strategy: replay}\n", "stages[1].new: the strategy `replay` needs"),
    ("  - {name: s, tokens: 2560, new: [wiki], strategy: {name: rewarm-replay, peak: 1.0e-3}, "
     "schedule: {kind: constant}}\n", "stages[1].schedule: the strategy `rewarm-replay` sets the schedule"),
]


@pytest.mark.parametrize("spec,message", BAD)
def test_bad_preset_and_schedule_input_is_one_line(tmp_path, shared, spec, message):
    with pytest.raises(RecipeError) as e:
        stage(tmp_path, shared, spec)
    assert message in str(e.value)


def test_bad_input_exits_2_with_one_line(tmp_path, shared):
    with pytest.raises(RecipeError):
        stage(tmp_path, shared, BAD[0][0])
    p = subprocess.run([sys.executable, "-m", "cptkit.cli", "plan", str(tmp_path / "small.yaml")], capture_output=True,
                       text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "never reaches 5e-05" in p.stderr


def test_buffer_presets_need_a_filled_buffer_and_replay_needs_d0(tmp_path, shared):
    with pytest.raises(RecipeError, match="mixes in the replay buffer, which is empty here"):
        stage(tmp_path, shared, "  - {name: s, tokens: 2560, new: [wiki], strategy: cooldown-mix}\n", before="")
    with pytest.raises(RecipeError, match="list the base model's data in `base_sources`"):
        small_recipe(tmp_path, shared, "  - {name: s, tokens: 2560, new: [wiki], strategy: replay}\n")
