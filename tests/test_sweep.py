"""`cpt sweep` and `cpt compare` (sweep/): a grid of alpha0 x peak LR runs as normal run folders and
is compared with its Pareto front; a killed sweep run again finishes only the missing runs; bad
keys and bad values are one line naming the closest key or the point, before anything is written."""

import json

import pytest

from conftest import corpus_heads, killed_at_step, write_recipe

GRID = ["stages.shift.strategy.alpha0=0,0.05,0.25", "stages.shift.schedule.lr=1.0e-3,3.0e-3"]
NAMES = [f"alpha0={a}_lr={lr}" for a in ("0", "0.05", "0.25") for lr in ("0.001", "0.003")]


def recipe(tmp_path, shared):
    stories, math = corpus_heads(tmp_path.parent / "heads", shared, 150_000, 2_000)
    sources = f"""  stories: {{paths: [{stories}], separator: "<|endoftext|>"}}
  math: {{paths: [{math}], template: "{{question}}"}}"""
    header = f"data_dir: {tmp_path.parent / 'shards'}\nbase_sources: [stories]\nvalidation: {{tokens_per_source: 512}}"
    stages = ("  - {name: shift, tokens: 1024, new: [math], strategy: replay, "
              "schedule: {kind: rewarm, lr: 1.0e-3, warmup: 0.25}}\n")
    return write_recipe(tmp_path / "r.yaml", shared, sources, stages, header)


def test_a_sweep_compares_its_runs_and_a_killed_one_finishes_only_what_is_missing(shared, tmp_path, monkeypatch):
    import cptkit.runner
    from cptkit.sweep.run import sweep

    path, out = recipe(tmp_path, shared), tmp_path / "sweep"
    killed_at_step(monkeypatch, 2 * 4 + 2, lambda: sweep(path, GRID, out))  # inside the third run
    assert [n for n in NAMES if (out / "runs" / n / "summary.json").is_file()] == NAMES[:2]
    ran, real = [], cptkit.runner.run_recipe
    monkeypatch.setattr(cptkit.runner, "run_recipe", lambda p, o, **kw: ran.append(o.name) or real(p, o, **kw))
    report = sweep(path, GRID, out)
    assert ran == NAMES[2:]  # the finished runs are skipped
    # each point's recipe holds its values; each run is a normal run folder
    point = json.loads((out / "runs" / NAMES[5] / "summary.json").read_text())
    assert point["stages"][0]["mix"] == {"stories": 0.25, "math": 0.75} and point["stages"][0]["lr_end"] > 0
    rows = json.loads((out / "comparison.json").read_text())["runs"]
    assert [r["run"] for r in rows] == NAMES
    for r in rows:  # forgetting on D0 and adaptation on Di against each run's own summary
        s = json.loads((out / "runs" / r["run"] / "summary.json").read_text())
        end = s["stages"][-1]["val_loss_end"]
        assert r["forgetting"] == {"stories": pytest.approx(end["stories"] - s["base_val_loss"]["stories"])}
        assert r["adaptation"] == {"math": pytest.approx(s["base_val_loss"]["math"] - end["math"])}
        assert r["point"] == {"stages.shift.strategy.alpha0": float(r["run"].split("=")[1].split("_")[0]),
                              "stages.shift.schedule.lr": float(r["run"].split("=")[2])}
    # the front, found another way: sorted by forgetting, a run is on it iff it adapts more than all before it
    best, front = float("-inf"), set()
    for r in sorted(rows, key=lambda r: (r["mean_forgetting"], -r["mean_adaptation"])):
        if r["mean_adaptation"] > best:
            front.add(r["run"])
            best = r["mean_adaptation"]
    assert {r["run"] for r in rows if r["pareto"]} == front and front
    assert "alpha0=0.25_lr=0.001 *" in report.read_text() or "alpha0=0.25_lr=0.001" not in front
    assert (out / "plots" / "pareto.png").stat().st_size > 0

    from cptkit.cli import main

    assert main(["compare", str(out / "runs" / NAMES[0]), str(out / "runs" / NAMES[1]), "--out",
                 str(tmp_path / "cmp")]) == 0
    assert [r["run"] for r in json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]] == NAMES[:2]


@pytest.mark.parametrize("grid,expected", [
    ("stages.shift.schedul.lr=1.0e-3", "--grid stages.shift.schedul.lr: the recipe has no `stages.shift.schedul` to "
                                       "set `lr` in; the closest key the recipe has: stages.shift.schedule"),
    ("stages.shfit.tokens=512", "--grid stages.shfit.tokens: unknown stage `shfit`; did you mean `shift`?"),
    ("stages.shift.schedule.lrr=1.0e-3", "--grid stages.shift.schedule.lrr: no such key in the recipe; the closest "
                                         "key the recipe has: stages.shift.schedule.lr"),
    ("stages.shift.strategy.alpha0=0.5,2", "sweep point alpha0=2: stages[0].strategy.alpha0: Input should be less "
                                           "than or equal to 1"),
    ("alpha0", "--grid alpha0: write KEY=V1,V2,..."),
    ("stages.shift=1", "--grid stages.shift: give a key of the stage after its name, e.g. stages.shift.tokens"),
])
def test_a_bad_grid_is_one_line_and_writes_nothing(shared, tmp_path, capsys, grid, expected):
    from cptkit.cli import main

    path = recipe(tmp_path, shared)
    assert main(["sweep", str(path), "--grid", grid, "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "sweep").exists()


def test_compare_refuses_an_unfinished_run(tmp_path, capsys):
    from cptkit.cli import main

    (tmp_path / "half").mkdir()
    assert main(["compare", str(tmp_path / "half"), "--out", str(tmp_path / "cmp")]) == 2
    assert "half: no summary.json; the run has not finished" in capsys.readouterr().err


def test_point_recipes_keep_relative_paths_through_base_dir(shared, tmp_path):
    from cptkit.recipe import load_recipe
    from cptkit.sweep.run import prepare

    stories, math = corpus_heads(tmp_path / "data", shared, 150_000, 2_000)
    sources = """  stories: {paths: [data/stories.txt], separator: "<|endoftext|>"}
  math: {paths: [data/math.jsonl], template: "{question}"}"""
    path = write_recipe(tmp_path / "r.yaml", shared, sources, "  - {name: a, tokens: 512, mix: {math: 1.0}}\n",
                        "data_dir: cache")
    (name, _, text), = prepare(path, ["seed=7"], tmp_path / "sweep")
    moved = tmp_path / "elsewhere" / f"{name}.yaml"
    moved.parent.mkdir()
    moved.write_text(text)
    original, point = load_recipe(path), load_recipe(moved)
    assert point.sources["stories"].paths == original.sources["stories"].paths == [stories]
    assert point.data_dir == original.data_dir == tmp_path / "cache" and point.seed == 7


def test_parallel_runs_go_in_their_own_processes(shared, tmp_path):
    from cptkit.sweep.run import sweep

    path, out = recipe(tmp_path, shared), tmp_path / "sweep"
    sweep(path, ["stages.shift.tokens=512,768"], out, parallel=2)
    rows = json.loads((out / "comparison.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["tokens=512", "tokens=768"]
    for name, steps in (("tokens=512", 2), ("tokens=768", 3)):
        assert len(json.loads((out / "runs" / name / "summary.json").read_text())["stages"][0]["mix"]) == 2
        assert sum(r["kind"] == "train" for r in map(json.loads, (out / "runs" / name / "metrics.jsonl")
                                                     .read_text().splitlines())) == steps
        assert "done: report at" in (out / "logs" / f"{name}.log").read_text()
