"""Guards and the fallback ladder (ladder.py, train/forgetting.py, train/attempts.py): naive CPT on
GSM8K questions makes stories260K forget TinyStories past the guard, the stage rolls back and
succeeds with replay; both attempts are kept and reported; a kill inside the second attempt
resumes that attempt; the default ladder follows the stage's position; bad guards are one line."""

import json
from pathlib import Path

import pytest

from conftest import corpus_heads, killed_at_step, write_recipe

GUARD = "{source: stories, max_rise: 0.3, ladder: [{name: replay, alpha0: 0.5}]}"


def recipe(tmp_path, shared, guard=GUARD, extra=""):
    stories, math = corpus_heads(tmp_path.parent / "heads", shared, 150_000, 2_000)
    sources = f"""  stories: {{paths: [{stories}], separator: "<|endoftext|>"}}
  math: {{paths: [{math}], template: "{{question}}"}}"""
    header = (f"data_dir: {tmp_path.parent / 'shards'}\nbase_sources: [stories]\nvalidation: {{tokens_per_source: 1024}}\n"
              f"checkpoint: {{every_tokens: 1024}}{extra}")
    stages = f"  - {{name: shift, tokens: 4096, new: [math], strategy: naive, guard: {guard}}}\n"
    return write_recipe(tmp_path / "r.yaml", shared, sources, stages, header)


def records(path, kind):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def test_a_failed_guard_rolls_back_and_replay_is_kept(shared, tmp_path, monkeypatch):
    from cptkit.runner import run_recipe

    path = recipe(tmp_path, shared)
    run_recipe(path, tmp_path / "whole")
    out = tmp_path / "whole"
    summary = json.loads((out / "summary.json").read_text())
    naive, replay = summary["attempts"]["shift"]
    assert (naive["attempt"], naive["strategy"], naive["result"]) == (0, "naive", "failed")
    assert "stories loss rose" in naive["failed"] and "more than max_rise 0.3" in naive["failed"]
    assert (replay["attempt"], replay["strategy"], replay["result"]) == (1, "replay(alpha0=0.5)", "kept")
    assert summary["stages"][0]["mix"] == {"stories": 0.5, "math": 0.5}  # the run kept is the replay one
    # the failed attempt: its records up to the failing check, and its checkpoints, set aside
    kept = out / naive["folder"]
    checks = records(kept / "metrics.jsonl", "guard")
    assert checks[-1]["loss"] - checks[-1]["start"] > 0.3 >= max(c["loss"] - c["start"] for c in checks[:-1])
    assert checks[-1]["stage_tokens"] == naive["stage_tokens"]
    saved = [f"step-{n:07d}" for n in range(4, naive["stage_tokens"] // 256 + 1, 4)]  # every 1,024 tokens
    assert saved and sorted(p.name for p in (kept / "checkpoints").iterdir()) == sorted({saved[0], saved[-1]})
    # the run's own log holds the kept attempt only: a whole stage, every check under the guard
    assert len(records(out / "metrics.jsonl", "train")) == 16
    assert all(c["loss"] - c["start"] <= 0.3 for c in records(out / "metrics.jsonl", "guard"))
    assert "## Guarded stages: attempts" in (out / "report.md").read_text()

    # killed in the middle of the rollback (its record written, nothing moved yet), resumed; then
    # killed in the second attempt (after its save at 1,024 tokens), resumed: the run ends as the whole one
    import cptkit.train.attempts as attempts

    def dies(*args):
        raise KeyboardInterrupt

    again = tmp_path / "killed"
    monkeypatch.setattr(attempts, "finish_pending", dies)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path, again)
    monkeypatch.undo()
    record = json.loads((again / "attempts.json").read_text())["stages"]["shift"]
    assert record["attempt"] == 0 and record["pending"]["move"] == saved
    killed_at_step(monkeypatch, 6, lambda: run_recipe(path, again, resume=True))
    assert json.loads((again / "attempts.json").read_text())["stages"]["shift"]["attempt"] == 1
    run_recipe(path, again, resume=True)
    assert json.loads((again / "summary.json").read_text())["attempts"] == summary["attempts"]
    for kind in ("train", "guard"):  # the failed attempt's records and the kept one's, as in the whole run
        for log in (Path(naive["folder"]) / "metrics.jsonl", Path("metrics.jsonl")):
            assert [(r.get("loss"), r.get("batch_crc32")) for r in records(again / log, kind)] == \
                [(r.get("loss"), r.get("batch_crc32")) for r in records(out / log, kind)]


def test_the_default_ladder_follows_the_stage_position():
    from cptkit.ladder import ladders

    data = {"stages": [
        {"name": "a", "strategy": "naive", "guard": {"source": "s"}, "buffer_add": {"source": "x"}},
        {"name": "b", "strategy": {"name": "replay", "alpha0": 0.05}, "guard": {"source": "s"}},
        {"name": "c", "strategy": {"name": "cooldown-mix", "mix": "A"}, "guard": {"source": "s"}},
        {"name": "d", "mix": {"x": 1.0}, "guard": {"source": "s", "ladder": ["strategy4"]}}]}
    table = ladders(data)
    assert table["a"] == ["naive", {"name": "replay", "alpha0": 0.05}, {"name": "replay", "alpha0": 0.25}]
    assert table["b"] == [{"name": "replay", "alpha0": 0.05}, {"name": "replay", "alpha0": 0.3},
                          *({"name": "buffer-mix", "mix": m} for m in "ABC")]  # the rungs after its own
    assert table["c"] == [{"name": "cooldown-mix", "mix": "A"}, {"name": "cooldown-mix", "mix": "B"}]
    assert table["d"] == [None, "strategy4"]


def test_plan_prints_the_ladder(shared, tmp_path, capsys):
    from cptkit.cli import main

    path = recipe(tmp_path, shared, guard="{source: stories, max_rise: 0.3, recover_within: 0.5}")
    assert main(["plan", str(path)]) == 0
    assert ("guard: stories loss may rise at most 0.3 nats over the stage's start; stories back at its start within "
            "50% of the stage; on failure, roll back and try: replay(alpha0=0.05) -> replay(alpha0=0.25)") \
        in capsys.readouterr().out


@pytest.mark.parametrize("guard,extra,expected", [
    ("{source: storis, max_rise: 0.3}", "", "stages[0].guard.source: unknown source `storis`; did you mean `stories`?"),
    ("{source: stories, max_rise: 0.3, ladder: [replai]}", "",
     "stages[0].guard.ladder[0]: unknown preset `replai`; did you mean `replay`?"),
    ("{task: lambda, min_score: 0.5}", "", "stages[0].guard.task: unknown task `lambda`"),
    ("{source: stories}", "", "give max_rise and/or recover_within"),
    ("{source: stories, max_rise: 0.3, ladder: [{name: buffer-mix, mix: A}]}", "",
     "stage shift, guard ladder rung 1 (buffer-mix(mix=A)): stages[0].strategy: `buffer-mix` mixes in the replay "
     "buffer, which is empty here"),
])
def test_a_bad_guard_is_one_line(shared, tmp_path, capsys, guard, extra, expected):
    from cptkit.cli import main

    path = recipe(tmp_path, shared, guard=guard, extra=extra)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_ladder_used_up_stops_in_one_line_also_on_resume(shared, tmp_path, capsys):
    from cptkit.cli import main

    path = recipe(tmp_path, shared, guard="{source: stories, max_rise: 0.01, ladder: []}")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "guard: stage shift failed with every strategy of its ladder (naive)" in err
    assert (out / "attempts" / "shift-0" / "metrics.jsonl").is_file()
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "stage shift: every strategy of its guard's ladder failed (naive)" in err and len(err.splitlines()) == 1


def test_expanded_stages_belong_to_the_stage_as_written():
    from cptkit.ladder import group

    written = ["x", "x.v2", "y"]
    assert group("x.base", ["x"], written) == "x" and group("x", ["x"], written) == "x"
    assert group("x.v2", ["x"], written) is None and group("y.eeve1", ["x"], written) is None
