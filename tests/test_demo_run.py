"""The demo's plan, run in miniature: from-scratch Llama, WSD, pre-cooldown init, buffer, cooldown."""

import json

from cptkit.demo.run import run_demo


def test_demo_in_miniature_runs_the_cookbook_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLCONFIGDIR", "unset")  # so that teardown restores what was there
    monkeypatch.delenv("MPLCONFIGDIR")
    out = tmp_path / "demo"
    report = run_demo(out, scale=0.05)
    assert report == out / "run" / "report.md" and report.is_file()
    run = out / "run"
    summary = json.loads((run / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert list(stages) == ["pretrain", "code", "arithmetic", "traces"]
    assert stages["code"]["mix"] == {"english": 0.05, "code": 0.95}
    assert stages["arithmetic"]["mix"] == {"english": 0.33, "arithmetic": 0.33, "buffer": 0.34}
    assert stages["traces"]["earlier_sources"] == ["english", "code", "arithmetic"]
    # stage 2 starts at LR_max from the pre-cooldown checkpoint, not from the cooled-down end
    assert stages["pretrain"]["lr_end"] == 0.0 and stages["code"]["lr_start"] == 3e-3
    assert stages["traces"]["lr_end"] == 0.0
    manifest = json.loads((run / "buffer" / "manifest.json").read_text())
    assert [(a["stage"], a["source"]) for a in manifest["additions"]] == [("code", "code"), ("arithmetic", "arithmetic")]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # nothing written beside its folder
