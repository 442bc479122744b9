"""`strategy: anneal` (presets.py): the LR decays to its floor while a new mix is in force, given
as weights or as the previous stage's mix with the sources carrying a tag upweighted to a share;
`cpt plan` prints the mix it computed; a tag no source carries is one line."""

import pytest

from conftest import write_recipe
from cptkit.errors import RecipeError


def recipe(tmp_path, shared, anneal: str, first_mix: str = "{stories: 0.8, wiki: 0.2}"):
    from cptkit.recipe import load_recipe

    sources = f"""  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}
  wiki: {{paths: [{shared}/corpora/en/wikipedia_en.txt], format: lines, tags: {{quality: high}}}}
  math: {{paths: [{shared}/corpora/math/gsm8k_train.jsonl], template: "{{question}}", tags: {{quality: high, kind: math}}}}"""
    stages = f"""  - {{name: main, tokens: 2560, mix: {first_mix}, schedule: {{kind: constant, lr: 2.0e-3}}}}
  - {{name: anneal, tokens: 1280, strategy: {anneal}}}
"""
    return write_recipe(tmp_path / "anneal.yaml", shared, sources, stages), load_recipe


def test_upweight_a_tag_from_the_previous_mix(shared, tmp_path):
    from cptkit.schedules import plan_segments, step_lr

    path, load = recipe(tmp_path, shared, "{name: anneal, upweight: {tag: quality=high, share: 0.5}, decay: 0.5}")
    r = load(path)
    mix = r.stages[1].mix
    # wiki had 0.2 and math none (it counts as the tagged ones' mean, 0.2): 0.25 each; stories keeps the rest
    assert mix == pytest.approx({"wiki": 0.25, "math": 0.25, "stories": 0.5}, abs=1e-12)
    seg = plan_segments(r)[1]
    lrs = [step_lr(seg, k, 256) for k in range(5)]
    assert lrs[:3] == [2.0e-3] * 3 and lrs[3] < 2.0e-3 and seg.end_lr == 0.0  # hold, then linear to 0
    # half of 5 steps, rounded to whole steps: linear over the last 512 tokens
    assert lrs[3] == pytest.approx(2.0e-3 * (1 - 256 / 512), rel=1e-9) and lrs[4] == 0.0


def test_plan_prints_the_computed_mix(shared, tmp_path, capsys):
    from cptkit.cli import main

    path, _ = recipe(tmp_path, shared, "{name: anneal, upweight: {tag: kind=math, share: 0.3}}")
    capsys.readouterr()
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "anneal mix: stories 0.56, wiki 0.14, math 0.3" in out, out


def test_anneal_with_target_weights(shared, tmp_path):
    path, load = recipe(tmp_path, shared, "{name: anneal, mix: {stories: 0.4, math: 0.6}, shape: cosine, to: 1.0e-5}")
    r = load(path)
    assert r.stages[1].mix == {"stories": 0.4, "math": 0.6}
    assert r.stages[1].schedule.shape == "cosine" and r.stages[1].schedule.min_lr == 1.0e-5


@pytest.mark.parametrize("anneal,expected", [
    ("{name: anneal, upweight: {tag: quality=gold, share: 0.3}}",
     "stages[1].strategy.upweight.tag: no source carries `quality=gold` (tags in this recipe: kind=math, quality=high)"),
    ("{name: anneal}", "stages[1].strategy: give anneal exactly one of `mix` (target weights) or `upweight`"),
    ("{name: anneal, mix: {stories: 0.4, math: 0.4}}", "stages[1].mix: weights sum to 0.8; they must sum to 1"),
    ("{name: anneal, upweight: {tag: quality, share: 0.3}}", "stages[1].strategy.upweight.tag: Value error, `quality` is not key=value"),
])
def test_bad_anneal_is_one_line(shared, tmp_path, anneal, expected):
    path, load = recipe(tmp_path, shared, anneal)
    with pytest.raises(RecipeError) as e:
        load(path)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
