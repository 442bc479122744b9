"""`cpt plan`: the dry run's numbers are the training mixture's, and it warns where data repeats."""

from __future__ import annotations

import numpy as np

from cptkit.cli import main
from cptkit.data.mixture import StageMixture
from cptkit.plan import SourceSize, plan_stages, plan_warnings
from cptkit.recipe import load_recipe
from cptkit.schedules import plan_segments


def recipe_file(tmp_path, shared, stages: str, extra: str = "") -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(f"""
model: {{path: {shared}/models/stories260K}}
seq_len: 64
micro_batch: 4
batch_tokens: 256
base_sources: [stories]
{extra}
sources:
  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}
  code: {{paths: [{shared}/corpora/code/human_eval.jsonl], template: "{{prompt}}{{canonical_solution}}"}}
stages:
{stages}""")
    return str(path)


SMALL_NEW = """
  - name: code
    tokens: 1024000
    mix: {stories: 0.05, code: 0.95}
"""


def test_plan_warns_on_a_small_new_source_read_many_times(tmp_path, shared, capsys):
    assert main(["plan", recipe_file(tmp_path, shared, SMALL_NEW)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert any("source `code` is read" in w and "more than 4 epochs" in w for w in warnings), out
    assert any("new source `code`" in w and "much smaller than the data before it" in w for w in warnings), out
    assert "~" in out  # nothing tokenized yet: sizes are estimates, and say so


def test_plan_is_quiet_for_a_balanced_recipe(tmp_path, shared, capsys):
    stages = SMALL_NEW.replace("1024000", "25600").replace("0.05", "0.7").replace("0.95", "0.3")
    assert main(["plan", recipe_file(tmp_path, shared, stages)]) == 0
    assert "warning" not in capsys.readouterr().out


def test_plan_numbers_follow_the_exact_mixture_and_cursors(tmp_path, shared):
    stages = """
  - name: one
    tokens: 51200
    mix: {stories: 0.3, code: 0.7}
    buffer_add: {source: code, tokens: 6400}
  - name: two
    tokens: 25600
    mix: {stories: 0.5, code: 0.25, buffer: 0.25}
"""
    recipe = load_recipe(recipe_file(tmp_path, shared, stages))
    sizes = {"stories": SourceSize(10_000, 640_000), "code": SourceSize(500, 32_000)}
    segments = plan_segments(recipe)
    plans = plan_stages(recipe, segments, sizes)
    first = StageMixture(["stories", "code"], [0.3, 0.7], 200, 4, {})
    second = StageMixture(["stories", "code", "buffer@v1"], [0.5, 0.25, 0.25], 100, 4, first.cursors_after())
    assert [u.samples for u in plans[0].uses] == list(first.counts().values())
    assert [u.samples for u in plans[1].uses] == list(second.counts().values())
    code1, code2 = plans[0].uses[1], plans[1].uses[1]
    assert code1.samples == 560 and code1.unique == 500 * 64 and code1.repeated == 60 * 64
    assert np.isclose(code1.epochs_end, 560 / 500)
    assert code2.unique == 0 and code2.repeated == code2.tokens  # its epoch was used up in stage one
    assert code2.samples == 100 and np.isclose(code2.epochs_end, 660 / 500)
    buf = plans[1].uses[2]  # 6,400 buffer tokens = 100 samples, read once over
    assert buf.samples == 100 and buf.unique == buf.tokens and np.isclose(buf.epochs_end, 1.0)
    def repeats(max_epochs):
        return [w for w in plan_warnings(recipe, segments, plans, sizes, max_epochs) if "times by the end" in w]

    assert repeats(1.5) == []
    assert len(repeats(1.2)) == 1 and "stage two: source `code` is read 1.3 times" in repeats(1.2)[0]
    small = [w for w in plan_warnings(recipe, segments, plans, sizes, 4.0) if "much smaller" in w]
    assert small == [w for w in small if w.startswith("stage one: new source `code` (32,000 tokens)")] and small
