"""Behavioural tests for cptkit.report: tables from summary.json, report.md and plots."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cptkit.report import render
from cptkit.report.render import write_report
from cptkit.report.tables import adaptation_rows, forgetting_rows, markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SOURCES = ["stories", "wiki", "math"]
# Multiples of 1/4 are exact in binary, so every difference below is exact too.
BASE = {"stories": 1.25, "wiki": 4.5, "math": 5.0}
WIKI_END = {"stories": 1.5, "wiki": 3.0, "math": 4.75}
MATH_END = {"stories": 1.75, "wiki": 3.25, "math": 2.5}
WIKI_TOKENS = (0, 999_424)
MATH_TOKENS = (999_424, 1_998_848)
TOKENS_PER_STEP = 16_384


def two_stage_summary() -> dict:
    """Summary of a stories-pretrained base model trained on wiki, then math."""
    return {
        "sources": SOURCES,
        "base_val_loss": BASE,
        "stages": [
            {"name": "wiki", "tokens_start": WIKI_TOKENS[0], "tokens_end": WIKI_TOKENS[1],
             "new_sources": ["wiki"], "earlier_sources": ["stories"],
             "val_loss_start": BASE, "val_loss_end": WIKI_END},
            {"name": "math", "tokens_start": MATH_TOKENS[0], "tokens_end": MATH_TOKENS[1],
             "new_sources": ["math"], "earlier_sources": ["stories", "wiki"],
             "val_loss_start": WIKI_END, "val_loss_end": MATH_END},
        ],
    }


def train_records(stage: str, first_step: int, tokens: tuple[int, int], lr: float) -> list[dict]:
    """Train records every step of a stage, with a falling loss and constant LR."""
    rows = []
    n_steps = (tokens[1] - tokens[0]) // TOKENS_PER_STEP
    for i in range(1, n_steps + 1):
        rows.append({"kind": "train", "stage": stage, "step": first_step + i,
                     "tokens": tokens[0] + i * TOKENS_PER_STEP, "lr": lr,
                     "loss": 4.0 - 0.01 * i, "tokens_per_s": 11000.0})
    return rows


def eval_record(stage: str, tag: str, step: int, tokens: int, val_loss: dict) -> dict:
    """One eval record as the trainer writes it."""
    return {"kind": "eval", "stage": stage, "tag": tag, "step": step, "tokens": tokens,
            "val_loss": val_loss}


def two_stage_metrics() -> list[dict]:
    """metrics.jsonl records matching two_stage_summary(), with periodic evals."""
    wiki_steps = WIKI_TOKENS[1] // TOKENS_PER_STEP
    mid = {"stories": 1.375, "wiki": 3.5, "math": 4.875}
    return [
        eval_record("wiki", "base", 0, 0, BASE),
        eval_record("wiki", "start", 0, 0, BASE),
        *train_records("wiki", 0, WIKI_TOKENS, 1e-3),
        eval_record("wiki", "periodic", wiki_steps // 2, WIKI_TOKENS[1] // 2, mid),
        eval_record("wiki", "end", wiki_steps, WIKI_TOKENS[1], WIKI_END),
        eval_record("math", "start", wiki_steps, MATH_TOKENS[0], WIKI_END),
        *train_records("math", wiki_steps, MATH_TOKENS, 5e-4),
        eval_record("math", "end", 2 * wiki_steps, MATH_TOKENS[1], MATH_END),
    ]


def write_run(run_dir: Path, summary: dict, metrics: list[dict] | None) -> Path:
    """Write summary.json (and metrics.jsonl unless None) into run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run-a", two_stage_summary(), two_stage_metrics())


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def all_files(root: Path) -> set[str]:
    """Every file below root, as POSIX paths relative to it."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def table_lines(markdown: str, heading: str) -> list[str]:
    """The table rows (header and separator included) in the section under ``heading``."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in section.splitlines() if ln.startswith("|")]


# ------------------------------------------------------------------ tables.py


def test_forgetting_rows_exact_rises():
    rows = forgetting_rows(two_stage_summary())
    assert rows == [
        {"stage": "wiki", "source": "stories", "start": 1.25, "end": 1.5, "base": 1.25,
         "rise_vs_start": 0.25, "rise_vs_base": 0.25},
        {"stage": "math", "source": "stories", "start": 1.5, "end": 1.75, "base": 1.25,
         "rise_vs_start": 0.25, "rise_vs_base": 0.5},
        {"stage": "math", "source": "wiki", "start": 3.0, "end": 3.25, "base": 4.5,
         "rise_vs_start": 0.25, "rise_vs_base": -1.25},
    ]


def test_adaptation_rows_exact_falls():
    rows = adaptation_rows(two_stage_summary())
    assert rows == [
        {"stage": "wiki", "source": "wiki", "start": 4.5, "end": 3.0, "base": 4.5,
         "fall_vs_start": 1.5, "fall_vs_base": 1.5},
        {"stage": "math", "source": "math", "start": 4.75, "end": 2.5, "base": 5.0,
         "fall_vs_start": 2.25, "fall_vs_base": 2.5},
    ]


def test_rows_skip_stages_without_sources_and_tolerate_missing_losses():
    summary = {
        "sources": ["a", "b"],
        "base_val_loss": {"a": 2.0},  # no base loss for "b"
        "stages": [{"name": "s1", "tokens_start": 0, "tokens_end": 10,
                    "new_sources": ["b"], "earlier_sources": [],
                    "val_loss_start": {"a": 2.0, "b": 6.0}, "val_loss_end": {"a": 2.5}}],
    }
    assert forgetting_rows(summary) == []
    (row,) = adaptation_rows(summary)
    assert row["start"] == 6.0
    assert row["end"] is None and row["base"] is None
    assert row["fall_vs_start"] is None and row["fall_vs_base"] is None


def test_markdown_table_formats_cells_and_alignment():
    rows = [
        {"name": "a|b", "x": 1.23456, "n": 3, "missing": None},
        {"name": "c", "x": -0.0001, "n": 10},
    ]
    out = markdown_table(rows, ["name", "x", "n", "missing"], floatfmt=".2f")
    assert out.splitlines() == [
        "| name | x | n | missing |",
        "| --- | ---: | ---: | --- |",
        "| a\\|b | 1.23 | 3 | – |",
        "| c | 0.00 | 10 | – |",  # no "-0.00": a zero difference has no sign
    ]


def test_markdown_table_custom_headers_and_empty_rows():
    out = markdown_table([], ["k"], headers=["Key"])
    assert out == "| Key |\n| --- |"
    with pytest.raises(ValueError):
        markdown_table([], ["a", "b"], headers=["only one"])


# ------------------------------------------------------------------ render.py


def test_write_report_tables_have_exact_formatted_numbers(run_dir: Path):
    report = write_report(run_dir)
    assert report == run_dir / "report.md"
    md = report.read_text(encoding="utf-8")

    assert md.startswith("# CPT run report: run-a\n")
    assert table_lines(md, "Forgetting") == [
        "| stage | source | base | start | end | rise_vs_start | rise_vs_base |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        "| wiki | stories | 1.250 | 1.250 | 1.500 | 0.250 | 0.250 |",
        "| math | stories | 1.250 | 1.500 | 1.750 | 0.250 | 0.500 |",
        "| math | wiki | 4.500 | 3.000 | 3.250 | 0.250 | -1.250 |",
    ]
    assert table_lines(md, "Adaptation") == [
        "| stage | source | base | start | end | fall_vs_start | fall_vs_base |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        "| wiki | wiki | 4.500 | 4.500 | 3.000 | 1.500 | 1.500 |",
        "| math | math | 5.000 | 4.750 | 2.500 | 2.250 | 2.500 |",
    ]
    assert table_lines(md, "Validation loss by stage") == [
        "| stage | point | stories | wiki | math |",
        "| --- | --- | ---: | ---: | ---: |",
        "| – | base | 1.250 | 4.500 | 5.000 |",
        "| wiki | start | 1.250 | 4.500 | 5.000 |",
        "| wiki | end | 1.500 | 3.000 | 4.750 |",
        "| math | start | 1.500 | 3.000 | 4.750 |",
        "| math | end | 1.750 | 3.250 | 2.500 |",
    ]


def test_write_report_explains_signs_embeds_plots_and_lists_stages(run_dir: Path):
    md = write_report(run_dir, title="Wiki then math").read_text(encoding="utf-8")
    assert md.startswith("# Wiki then math\n")
    assert "positive rise means the loss went up, i.e. forgetting" in md
    assert "positive fall means the loss went down, i.e. learning" in md
    for name in ("val_loss", "lr", "train_loss"):
        assert f"](plots/{name}.png)" in md
    overview = table_lines(md, "Overview")
    assert "| 1 | wiki | 0 → 999,424 | 999,424 | wiki | stories |" in overview
    assert "| 2 | math | 999,424 → 1,998,848 | 999,424 | math | stories, wiki |" in overview


def test_write_report_writes_valid_pngs_and_no_temp_files(run_dir: Path):
    write_report(run_dir)
    for name in ("val_loss.png", "lr.png", "train_loss.png"):
        path = run_dir / "plots" / name
        width, height = png_size(path)
        assert width > 200 and height > 200
        assert path.stat().st_size > 5_000
    assert all_files(run_dir) == {
        "summary.json", "metrics.jsonl", "report.md",
        "plots/val_loss.png", "plots/lr.png", "plots/train_loss.png",
    }


def test_val_loss_plot_draws_coloured_lines(run_dir: Path):
    # Axes, text and stage markers are grey; only the per-source lines carry colour.
    import matplotlib.image

    write_report(run_dir)
    pixels = matplotlib.image.imread(run_dir / "plots" / "val_loss.png")[..., :3]
    chroma = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (chroma > 0.3).sum() > 500


def test_rerun_overwrites_outputs(run_dir: Path):
    write_report(run_dir, title="first")
    write_report(run_dir, title="second")
    assert (run_dir / "report.md").read_text(encoding="utf-8").startswith("# second\n")
    assert not [f for f in all_files(run_dir) if f.endswith(".tmp")]


def test_single_stage_without_earlier_sources_or_periodic_evals(tmp_path: Path):
    stage = {"name": "wiki", "tokens_start": 0, "tokens_end": 65_536,
             "new_sources": ["wiki"], "earlier_sources": [],
             "val_loss_start": {"wiki": 4.5, "math": 5.0},
             "val_loss_end": {"wiki": 3.75, "math": 5.25}}
    summary = {"sources": ["wiki", "math"], "base_val_loss": {"wiki": 4.5, "math": 5.0},
               "stages": [stage]}
    metrics = [
        eval_record("wiki", "start", 0, 0, stage["val_loss_start"]),  # no base, no periodic
        *train_records("wiki", 0, (0, 65_536), 1e-3),
        eval_record("wiki", "end", 4, 65_536, stage["val_loss_end"]),
    ]
    run = write_run(tmp_path / "single", summary, metrics)

    md = write_report(run).read_text(encoding="utf-8")
    forgetting = table_lines(md, "Forgetting")
    assert forgetting[2:] == ["| wiki | none | – | – | – | – | – |"]
    assert table_lines(md, "Adaptation")[2:] == ["| wiki | wiki | 4.500 | 4.500 | 3.750 | 0.750 | 0.750 |"]
    # "math" is neither new nor earlier: it shows in the full table only.
    assert "| wiki | end | 3.750 | 5.250 |" in table_lines(md, "Validation loss by stage")
    for name in ("val_loss.png", "lr.png", "train_loss.png"):
        assert (run / "plots" / name).read_bytes()[:8] == PNG_MAGIC


def test_stage_without_new_sources_gets_none_row(tmp_path: Path):
    summary = two_stage_summary()
    summary["stages"][1]["new_sources"] = []  # a pure replay stage
    md = write_report(write_run(tmp_path / "replay", summary, two_stage_metrics())).read_text()
    assert table_lines(md, "Adaptation")[2:] == [
        "| wiki | wiki | 4.500 | 4.500 | 3.000 | 1.500 | 1.500 |",
        "| math | none | – | – | – | – | – |",
    ]


def test_missing_metrics_falls_back_to_summary(tmp_path: Path):
    run = write_run(tmp_path / "no-metrics", two_stage_summary(), metrics=None)
    md = write_report(run).read_text(encoding="utf-8")
    assert "| math | wiki | 4.500 | 3.000 | 3.250 | 0.250 | -1.250 |" in md
    assert render.eval_points([], two_stage_summary())[0] == (0, BASE)
    for name in ("val_loss.png", "lr.png", "train_loss.png"):
        assert png_size(run / "plots" / name)[0] > 200


def test_base_eval_is_pinned_to_zero_tokens():
    records = [eval_record("wiki", "base", 7, 123, BASE), eval_record("wiki", "end", 9, 500, WIKI_END)]
    points = render.eval_points(records, two_stage_summary())
    assert [tokens for tokens, _ in points] == [0, 500]


def test_truncated_last_metrics_line_is_ignored_but_corruption_raises(run_dir: Path):
    path = run_dir / "metrics.jsonl"
    good = path.read_text()
    path.write_text(good + '{"kind": "train", "st')  # run killed mid-write
    assert len(render.load_metrics(run_dir)) == len(two_stage_metrics())
    write_report(run_dir)

    path.write_text('{"kind": "tr\n' + good)
    with pytest.raises(ValueError, match="bad JSON"):
        render.load_metrics(run_dir)


def test_failed_atomic_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch):
    target = tmp_path / "out.md"
    target.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(render.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        render.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.md"]


def test_importing_report_does_not_import_pyplot():
    # A fresh interpreter: this test process has already imported pyplot.
    src = Path(__file__).resolve().parents[1] / "src"
    code = "import sys, cptkit.report, cptkit.report.render; print('matplotlib.pyplot' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_skipped_steps_are_marked_in_summary_and_report(tmp_path: Path):
    """A step with a NaN gradient made no update: summary.json lists it, report.md says so."""
    summary = two_stage_summary()
    metrics = two_stage_metrics()
    train = [r for r in metrics if r["kind"] == "train"]
    for r in train[1:3]:
        r.update(loss=None, grad_norm=None, skipped=True, nonfinite=["loss", "grad_norm"])
    summary["stages"][0]["skipped_steps"] = [r["step"] for r in train[1:3]]
    md = write_report(write_run(tmp_path / "run", summary, metrics)).read_text(encoding="utf-8")
    line = next(ln for ln in md.splitlines() if "Skipped steps" in ln)
    assert f": 2: {train[1]['step']} ({train[1]['stage']}), {train[2]['step']} ({train[2]['stage']})" in line
    assert (tmp_path / "run" / "plots" / "train_loss.png").read_bytes()[:8] == PNG_MAGIC


def test_report_shows_the_median_step_throughput(tmp_path: Path):
    metrics = two_stage_metrics()
    train = [r for r in metrics if r["kind"] == "train"]
    for i, r in enumerate(train):
        r["perf"] = {"tokens_per_s_device": 1000.0 + i, "data_wait_s": 0.002, "peak_mem_gib": 1.5, "mfu": 0.25}
    md = write_report(write_run(tmp_path / "run", two_stage_summary(), metrics)).read_text(encoding="utf-8")
    median = 1000 + 1 + (len(train) - 1) // 2  # the first step left out
    line = next(ln for ln in md.splitlines() if "Throughput" in ln)
    assert line == (f"- Throughput (median step): {median:,} tokens/s per device, MFU 25.0%, peak memory 1.50 GiB, "
                    "data wait 2.0 ms a step")


def test_report_says_how_long_checkpoint_saves_blocked_training(tmp_path: Path):
    metrics = two_stage_metrics()
    train = [r for r in metrics if r["kind"] == "train"]
    for r in train:
        r["perf"] = {"tokens_per_s_device": 1000.0}
    metrics += [{"kind": "checkpoint", "name": f"c{i}", "step": i, "tokens": i, "async": True, "blocked_s": b}
                for i, b in enumerate([0.30, 0.10, 0.20])]
    md = write_report(write_run(tmp_path / "run", two_stage_summary(), metrics)).read_text(encoding="utf-8")
    line = next(ln for ln in md.splitlines() if "Checkpoint saves" in ln)
    assert line == "- Checkpoint saves: 3 (asynchronous), training blocked 0.20 s median, 0.30 s at most"
