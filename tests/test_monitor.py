"""The stability gap (`monitor:`, train/monitor.py, report/stability.py): dense evaluations over
each stage's first part, exactly at the configured stage tokens; the summary's peak rise, recovery
and final change computed from them; a run killed inside the window writes the same points."""

import json

import pytest

from conftest import corpus_heads, killed_at_step, write_recipe

STAGES = """  - {name: shift, tokens: 4096, mix: {math: 0.75, stories: 0.25}, schedule: {kind: constant, warmup: 0.1}}
  - {name: back, tokens: 2048, mix: {stories: 1.0}, schedule: {kind: constant}}
"""


def recipe(tmp_path, shared, monitor="{sources: [stories, math], every_tokens: 512, first_fraction: 0.5}"):
    stories, math = corpus_heads(tmp_path.parent / "heads", shared, 150_000, 2_000)
    sources = f"""  stories: {{paths: [{stories}], separator: "<|endoftext|>"}}
  math: {{paths: [{math}], template: "{{question}}"}}"""
    header = f"data_dir: {tmp_path.parent / 'shards'}\nvalidation: {{tokens_per_source: 512}}\n" \
        f"checkpoint: {{every_tokens: 1024}}\nmonitor: {monitor}"
    return write_recipe(tmp_path / "r.yaml", shared, sources, STAGES, header, optimizer="{lr: 3.0e-3}")


def records(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_monitor_measures_the_gap_and_survives_a_kill(shared, tmp_path, monkeypatch):
    from cptkit.runner import run_recipe

    path = recipe(tmp_path, shared)
    run_recipe(path, tmp_path / "whole")
    points = records(tmp_path / "whole", "monitor")
    # every 512 stage tokens up to half of each stage (the end eval covers the rest)
    assert [(r["stage"], r["stage_tokens"]) for r in points] == \
        [("shift", t) for t in (512, 1024, 1536, 2048)] + [("back", 512), ("back", 1024)]
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    shift = summary["stages"][0]
    start, gap = shift["val_loss_start"]["stories"], shift["stability"]["stories"]
    curve = [(r["stage_tokens"], r["val_loss"]["stories"]) for r in points if r["stage"] == "shift"]
    curve.append((4096, shift["val_loss_end"]["stories"]))
    peak, at = max((loss - start, t) for t, loss in curve)
    assert gap["peak_rise"] == pytest.approx(peak) and gap["peak_at_tokens"] == at and peak > 0.05  # GSM8K hurt stories
    back = next((t for t, loss in curve if t > at and loss <= start), None)
    assert gap["recovered_at_tokens"] == back
    assert gap["final_delta"] == pytest.approx(shift["val_loss_end"]["stories"] - start)
    report = (tmp_path / "whole" / "report.md").read_text()
    assert "## Stability gap" in report and (tmp_path / "whole" / "plots" / "stability_gap.png").stat().st_size > 0

    # killed at step 7: resumed from the save at step 4 (1,024 tokens), whose point comes after it
    killed_at_step(monkeypatch, 7, lambda: run_recipe(path, tmp_path / "killed"))
    run_recipe(path, tmp_path / "killed", resume=True)
    assert records(tmp_path / "killed", "monitor") == points


def test_monitor_naming_an_unknown_source_is_one_line(shared, tmp_path, capsys):
    from cptkit.cli import main

    path = recipe(tmp_path, shared, monitor="{sources: [storis], every_tokens: 512}")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "monitor.sources: unknown source `storis`; did you mean `stories`?" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
