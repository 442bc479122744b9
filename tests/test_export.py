"""`cpt export megatron-deepspeed`: the cookbook's four-stage example as Megatron-DeepSpeed runs.

The launch scripts are read as ALCF's helpers.sh reads them and their LR is computed with
Megatron-DeepSpeed's formulas, written independently in tests/megatron_lr.py; it must match
`cpt schedule --csv` at every iteration. The lists' weights must be the stages' token shares."""

import csv
import json
import math
import shlex
from pathlib import Path

import pytest

from cptkit.cli import main
from cptkit.data.mixlists import read_list
from cptkit.data.shards import Shard
from cptkit.recipe import load_recipe
from megatron_lr import MegatronLR, megatron_lr_per_iteration, parse_launch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "strategies.yaml"


def example_recipe(folder: Path, shared: Path) -> Path:
    """examples/strategies.yaml, reading the shared data from wherever it is."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "strategies.yaml"
    path.write_text(EXAMPLE.read_text().replace("../../shared/data", str(shared)))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared):
    root = tmp_path_factory.mktemp("export")
    recipe = example_recipe(root, shared)
    out = root / "out"
    assert main(["export", "megatron-deepspeed", str(recipe), "--out", str(out), "--gpus", "2", "--gpus", "code=4"]) == 0
    assert main(["schedule", str(recipe), "--csv", str(root / "lr.csv")]) == 0
    with open(root / "lr.csv") as f:
        rows = list(csv.DictReader(f))
    manifest = json.loads((out / "export.json").read_text())
    return recipe, out, manifest, rows


def scheduler_args(out: Path, name: str) -> dict:
    """The scheduler values Megatron runs a run's first start with: its script's, or, on a resume
    where helpers.sh adds --use-checkpoint-opt_param-scheduler, the ones saved with the checkpoint
    (LR, min LR, warmup and decay samples, style: the scheduler's state_dict) and its own others."""
    args = parse_launch(out / "runs" / f"{name}.sh")
    if args["finetune"] or not args["use_checkpoint_opt_param_scheduler"]:
        return args
    saved = scheduler_args(out, args["_env"]["LOAD"].removeprefix("$CKPT_ROOT/"))
    decay = saved["lr_decay_iters"] * saved["GLOBAL_BATCH"]
    return args | {k: saved[k] for k in ("lr", "min_lr", "lr_decay_style")} | {
        "lr_decay_iters": decay / args["GLOBAL_BATCH"], "lr_warmup_fraction": saved["lr_warmup_fraction"]}


def env_of(script: Path) -> dict:
    return parse_launch(script)["_env"]


def flags_of(script: Path) -> list[str]:
    """The flags of the run's first start (its `FIRST` array expanded)."""
    text = script.read_text().replace("\\\n", " ")
    first = next((shlex.split(line[7:line.index(")")]) for line in text.splitlines() if line.startswith("FIRST=(")), [])
    line = next(line for line in text.splitlines() if line.startswith("bash train_alcf.sh"))
    return [f for t in shlex.split(line)[2:] for f in (first if t == "${FIRST[@]}" else [t])]


def test_every_iterations_lr_matches_the_plan(exported):
    """Run through the independent Megatron formulas, each run's flags give `cpt schedule --csv`'s
    LR at every iteration (within 1%; the formulas agree to float rounding)."""
    _, out, manifest, rows = exported
    worst = 0.0
    covered = []
    for run in manifest["runs"]:
        args = scheduler_args(out, run["name"])
        first, last = run["iterations"]
        assert args["train_iters"] == last
        lrs = megatron_lr_per_iteration(args, first, last, run["samples_before"])
        a, b = run["plan_steps"]
        assert b - a == last - first
        covered += list(range(a, b + 1))
        for lr, row in zip(lrs, rows[a - 1 : b]):
            want = float(row["lr"])
            assert lr == pytest.approx(want, rel=0.01, abs=1e-12), (run["name"], row)
            worst = max(worst, abs(lr - want) / max(want, 1e-30))
    assert covered == list(range(1, len(rows) + 1))  # every step of the plan, once, in order
    assert worst < 1e-9


def test_each_run_resumes_where_its_checkpoint_was_saved(exported):
    """LOAD is the folder of the run whose last save the plan starts from; a resumed run's first
    iteration follows that save's, its consumed samples are that run's, and the warmup variable
    is the one helpers.sh reads."""
    _, out, manifest, _ = exported
    runs = {r["name"]: r for r in manifest["runs"]}
    for run in manifest["runs"]:
        script = out / "runs" / f"{run['name']}.sh"
        env, flags = env_of(script), flags_of(script)
        assert "LR_WARMUP_FRAC" in env and "LR_WARMUP_FRACTION" not in script.read_text()
        load = env["LOAD"]
        if run["finetune"]:
            assert "--finetune" in flags and run["iterations"][0] == 1 and run["samples_before"] == 0
            continue
        assert "--finetune" not in flags
        loaded = runs[load.removeprefix("$CKPT_ROOT/")]
        assert run["iterations"][0] == loaded["iterations"][1] + 1
        assert run["samples_before"] == loaded["iterations"][1] * loaded["global_batch"]
    by_stage = [(r["name"], env_of(out / "runs" / f"{r['name']}.sh")["LOAD"]) for r in manifest["runs"]]
    assert by_stage == [("01-wiki", "$BASE_CHECKPOINT"), ("02-wiki.cooldown", "$CKPT_ROOT/01-wiki"),
                        # code starts from wiki@pre-cooldown: the save before wiki's cooldown, not after it
                        ("03-code.base", "$CKPT_ROOT/01-wiki"), ("04-code", "$CKPT_ROOT/03-code.base"),
                        ("05-traces", "$CKPT_ROOT/04-code")]


def test_override_only_where_the_lr_changes_and_universal_where_the_gpus_do(exported):
    _, out, manifest, _ = exported
    runs = {r["name"]: r for r in manifest["runs"]}
    for name, run in runs.items():
        script = out / "runs" / f"{name}.sh"
        args, flags, text = parse_launch(script), flags_of(script), script.read_text()
        loaded = runs.get(args["_env"]["LOAD"].removeprefix("$CKPT_ROOT/"))
        changes = loaded is not None and not run["finetune"] and loaded["lr"] != run["lr"]
        # helpers.sh adds --use-checkpoint-opt_param-scheduler unless OVERRIDE_CKPT_OPT_PARAM is set,
        # and the scheduler asserts that the two are not both given
        assert ("--override-opt_param-scheduler" in flags) == changes == ("OVERRIDE_CKPT_OPT_PARAM" in args["_env"])
        universal = loaded is not None and loaded["gpus"] != run["gpus"]
        assert ("--universal-checkpoint" in flags) == universal
        if universal:
            step = f"$LOAD/global_step{loaded['iterations'][1]}"
            assert f'--input_folder "{step}" --output_folder "{step}_universal"' in text
        gbs = args["GLOBAL_BATCH"]
        assert int(args["_env"]["MICRO_BATCH"]) * int(args["_env"]["GRAD_ACC_STEPS"]) * run["gpus"] == gbs == 64
    assert [n for n, r in runs.items() if "--override-opt_param-scheduler" in flags_of(out / "runs" / f"{n}.sh")] == \
        ["02-wiki.cooldown", "03-code.base", "05-traces"]  # 04-code continues 03's schedule as saved
    assert [r["gpus"] for r in runs.values()] == [2, 2, 4, 4, 2]


def test_list_weights_are_the_stages_token_shares(exported):
    """Normalised, each list's weights are the stage's mix to 1e-9 (the corpus column is the
    source), every prefix is a shard, and the buffer's version is the one the stage reads."""
    recipe_path, out, manifest, _ = exported
    recipe = load_recipe(recipe_path)
    for run in manifest["runs"]:
        stage = recipe.stages[run["stage"]]
        entries = read_list(out / "lists" / f"{run['name']}.txt")
        total = sum(e.weight for e in entries)
        mix_total = sum(stage.mix.values())
        shares = {}
        for e in entries:
            shares[e.corpus] = shares.get(e.corpus, 0.0) + e.weight / total
            assert Shard(e.prefix).num_tokens > 0
        assert shares.keys() == {k for k, w in stage.mix.items() if w > 0}
        for corpus, share in shares.items():
            assert math.isclose(share, stage.mix[corpus] / mix_total, rel_tol=0, abs_tol=1e-9)
    traces = read_list(out / "lists" / "05-traces.txt")
    buffer = next(e for e in traces if e.corpus == "buffer")
    assert buffer.prefix.endswith("/buffer/v2")  # wiki's addition, then code's
    manifest_buffer = json.loads((out / "buffer" / "manifest.json").read_text())
    assert [a["source"] for a in manifest_buffer["additions"]] == ["wiki", "code"]
    assert Shard(buffer.prefix).num_tokens == sum(a["tokens"] for a in manifest_buffer["additions"])


def test_strategy4_is_two_runs_split_at_the_switch(exported):
    """code (Strategy 4) decays on D0 alone until the first step whose LR is at or below LR_max/5,
    then on 0.7 D0 + 0.3 code: two runs, the data-file list changing at that step."""
    _, out, manifest, rows = exported
    runs = {r["name"]: r for r in manifest["runs"]}
    base, switch = runs["03-code.base"], runs["04-code"]
    code_rows = [r for r in rows if r["stage"] in ("code.base", "code")]
    first_low = next(int(r["step"]) for r in code_rows if float(r["lr"]) <= 1e-3 / 5)
    assert switch["plan_steps"][0] == first_low == base["plan_steps"][1] + 1
    assert {e.corpus for e in read_list(out / "lists" / "03-code.base.txt")} == {"stories"}
    assert {e.corpus: e.weight for e in read_list(out / "lists" / "04-code.txt")} == \
        pytest.approx({"stories": 0.7, "code": 0.3}, rel=1e-12)


def test_readme_explains_each_run(exported):
    _, out, manifest, _ = exported
    text = (out / "README.md").read_text()
    for run in manifest["runs"]:
        assert f"### `{run['name']}`" in text
    assert "LR_WARMUP_FRACTION" not in text and "Megatron's LR matches the plan's at every iteration" in text
    assert "eps 1e-5" in text  # the recipe's AdamW eps (1e-8) differs from the one helpers.sh fixes


def test_the_reference_formulas_check_themselves():
    from megatron_lr import self_check

    self_check()


def test_reference_formulas_are_not_ours():
    """The test's Megatron formulas and the export's own agree on a curve of every style (the
    export reports deviations with its own; a disagreement would make those numbers wrong)."""
    from cptkit.export.megatron_lr import MegatronLR as Ours

    cases = [dict(lr_decay_style="cosine", lr=1e-3, min_lr=1e-4, lr_warmup_fraction=0.1),
             dict(lr_decay_style="linear", lr=1e-3, min_lr=0.0, lr_warmup_fraction=0.3),
             dict(lr_decay_style="inverse-square-root", lr=1e-3, min_lr=1e-5, lr_warmup_fraction=0.05),
             dict(lr_decay_style="constant", lr=1e-3, lr_warmup_fraction=0.02),
             dict(lr_decay_style="constant", lr=1e-3, min_lr=1e-5, lr_warmup_fraction=0.02,
                  lr_constant_plus_cooldown=True, lr_constant_plus_cooldown_frac=0.2),
             dict(lr_decay_style="infinite-cosine", lr=1e-3, min_lr=1e-5, lr_warmup_fraction=0.05, constant_lr=3e-4,
                  lr_cooldown_fraction=0.2, lr_constant_fraction=0.5, timescale=10.0),
             dict(lr_decay_style="infinite-inv-square-root", lr=1e-3, min_lr=1e-5, lr_warmup_fraction=0.05,
                  constant_lr=3e-4, lr_cooldown_fraction=0.2, lr_constant_fraction=0.5, timescale=10.0)]
    for case in cases:
        args = case | {"lr_decay_iters": 100, "global_batch": 8, "GLOBAL_BATCH": 8}
        theirs, ours = MegatronLR(args), Ours(args)
        for n in range(0, 801, 8):
            assert ours.lr(n) == pytest.approx(theirs.lr(n), rel=1e-12, abs=1e-18), (case, n)


STYLES = """
  - {name: inf, tokens: 5120, mix: {stories: 1.0}, schedule: {kind: infinite, lr: 1.0e-3, warmup: 0.1, cooldown: 0.3,
     constant_lr: 4.0e-4, anneal: 0.2, min_lr: 2.0e-5}}
  - {name: rewarm, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: rewarm, lr: 8.0e-4, warmup: 0.2}}
  - {name: wsd, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: wsd, decay: 0.5, shape: cosine, min_lr: 1.0e-5}}
  - {name: lin, tokens: 1280, mix: {stories: 1.0}, schedule: {kind: cooldown, shape: linear, to: 0.0}}
  - {name: const, tokens: 1280, mix: {stories: 1.0}, schedule: {kind: constant, lr: 3.0e-4, warmup_steps: 2}}
  - {name: isqrt, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: inverse-sqrt, lr: 6.0e-4, warmup: 0.2, min_lr: 1.0e-4}}
  - {name: infsq, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: infinite, lr: 5.0e-4, warmup: 0.1, cooldown: 0.4,
     cooldown_shape: inv-sqrt, constant_lr: 2.0e-4}}
  - {name: hold, tokens: 1280, mix: {stories: 1.0}, schedule: {kind: constant}}
  - {name: cos, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: cosine, lr: 4.0e-4, warmup: 0.1}}
  - {name: exp, tokens: 2560, mix: {stories: 1.0}, schedule: {kind: cooldown, shape: exponential, to: 4.0e-6}}
"""


def test_every_schedule_kind_through_the_reference_formulas(tmp_path, shared):
    """A plan with every kind of schedule the export writes: where Megatron can run the curve its LR
    equals the plan's at every iteration; where it cannot (a rewarm from a non-zero LR), the
    README says by how much, and that is what the reference formulas give."""
    from conftest import write_recipe

    sources = f'  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}'
    recipe = write_recipe(tmp_path / "r.yaml", shared, sources, STYLES, header="validation: {tokens_per_source: 512}")
    out = tmp_path / "out"
    assert main(["export", "megatron-deepspeed", str(recipe), "--out", str(out)]) == 0
    assert main(["schedule", str(recipe), "--csv", str(tmp_path / "lr.csv")]) == 0
    with open(tmp_path / "lr.csv") as f:
        rows = list(csv.DictReader(f))
    manifest = json.loads((out / "export.json").read_text())
    names = [r["name"] for r in manifest["runs"]]
    assert names == ["01-inf", "02-inf.cooldown", "03-rewarm", "04-wsd", "05-wsd.cooldown", "06-lin", "07-const",
                     "08-isqrt", "09-infsq", "10-hold", "11-cos", "12-exp"]
    styles = {}
    for run in manifest["runs"]:
        args = scheduler_args(out, run["name"])
        styles[run["name"]] = args["lr_decay_style"]
        a, b = run["plan_steps"]
        got = megatron_lr_per_iteration(args, *run["iterations"], run["samples_before"])
        want = [float(r["lr"]) for r in rows[a - 1 : b]]
        gap = max(abs(g - w) / w if w > 0 else abs(g - w) for g, w in zip(got, want))
        assert gap == pytest.approx(run["lr_deviation"], rel=1e-6, abs=1e-12), run["name"]
        if run["name"] == "03-rewarm":  # Megatron warms up from 0; cpt from where it stands
            assert gap > 0.01 and any("warms up from 0" in n for n in run["notes"])
            assert f"within {gap:.2%}" in (out / "README.md").read_text()
        else:
            assert gap < 1e-9, run["name"]
    assert styles == {"01-inf": "infinite-cosine", "02-inf.cooldown": "infinite-cosine", "03-rewarm": "cosine",
                      "04-wsd": "constant", "05-wsd.cooldown": "cosine", "06-lin": "linear", "07-const": "constant",
                      "08-isqrt": "inverse-square-root", "09-infsq": "infinite-inv-square-root", "10-hold": "constant",
                      "11-cos": "cosine", "12-exp": "infinite-cosine"}
    finetunes = [r["name"] for r in manifest["runs"] if r["finetune"]]
    assert finetunes == ["01-inf", "03-rewarm", "07-const", "08-isqrt", "09-infsq", "11-cos"]  # each warms up


BAD_STAGES = {
    "relora": ("  - {name: a, tokens: 1024, mix: {stories: 1.0}, relora: {rank: 4, merge_every_tokens: 512}}",
               "stage a: cannot be exported to Megatron-DeepSpeed: ReLoRA"),
    "exponential": ("  - {name: a, tokens: 1024, mix: {stories: 1.0}, schedule: {kind: cooldown, shape: exponential, to: 1.0e-5}}",
                    "stage a: cannot be exported to Megatron-DeepSpeed: an exponential decay to 1e-05 from the first sample"),
    "frozen": ("  - {name: a, tokens: 1024, mix: {stories: 1.0}, trainable: [layers]}",
               "stage a: cannot be exported to Megatron-DeepSpeed: it trains only layers"),
}


@pytest.mark.parametrize("case", sorted(BAD_STAGES))
def test_a_stage_megatron_cannot_run_is_refused_before_anything_is_written(case, tmp_path, shared, capsys):
    from conftest import write_recipe

    stages, message = BAD_STAGES[case]
    sources = f'  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}'
    recipe = write_recipe(tmp_path / "r.yaml", shared, sources, stages, header="validation: {tokens_per_source: 512}")
    out = tmp_path / "out"
    assert main(["export", "megatron-deepspeed", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_out_holding_another_export_is_kept_unless_forced(tmp_path, shared, capsys):
    from conftest import write_recipe

    sources = f'  stories: {{paths: [{shared}/corpora/en/tinystories.txt], separator: "<|endoftext|>"}}'
    stages = "  - {name: a, tokens: 1024, mix: {stories: 1.0}, schedule: {kind: cosine, lr: 1.0e-3}}"
    header = f"validation: {{tokens_per_source: 512}}\ndata_dir: {tmp_path / 'shards'}"
    one = write_recipe(tmp_path / "one.yaml", shared, sources, stages, header=header)
    two = write_recipe(tmp_path / "two.yaml", shared, sources, stages.replace("1.0e-3", "2.0e-3"), header=header)
    out = tmp_path / "out"
    assert main(["export", "megatron-deepspeed", str(one), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["export", "megatron-deepspeed", str(one), "--out", str(out)]) == 0  # the same export again
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    capsys.readouterr()
    assert main(["export", "megatron-deepspeed", str(two), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds another export" in err and "--force" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["export", "megatron-deepspeed", str(two), "--out", str(out), "--force"]) == 0
    assert "LR=0.002" in (out / "runs" / "01-a.sh").read_text()
    assert not (out / ".export.tmp").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["export", "megatron-deepspeed", str(one), "--out", str(tmp_path / "other"), "--force"]) == 2
    assert "is not a cpt export" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("flag, message", [("--gpus=cdoe=2", "unknown stage `cdoe`; did you mean `code`?"),
                                           ("--gpus=3", "64 samples a step, which 3 GPUs cannot share"),
                                           ("--gpus=0", "--gpus 0: give a GPU count")])
def test_bad_gpus(flag, message, tmp_path, shared, capsys):
    recipe = example_recipe(tmp_path, shared)
    assert main(["export", "megatron-deepspeed", str(recipe), "--out", str(tmp_path / "out"), flag]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


FAKE_TRAIN = """#!/bin/bash
echo "LOAD=$LOAD SAVE=$SAVE TRAIN_ITERS=$TRAIN_ITERS GLOBAL_BATCH=$GLOBAL_BATCH TRAIN_TOKENS=${TRAIN_TOKENS:-unset} $*" >> "$LOG"
"""
FAKE_CONVERT = """import sys, pathlib
print("convert", *sys.argv[1:], file=open(__import__("os").environ["LOG"], "a"))
out = pathlib.Path(sys.argv[sys.argv.index("--output_folder") + 1])
out.mkdir(parents=True)
(out.parent / "latest_universal").write_text(out.name)
"""


def test_the_scripts_run_under_bash_first_start_then_later_jobs(exported, tmp_path):
    """Each script, run by bash against a stand-in train_alcf.sh: its first start loads the
    checkpoint the plan starts from (converting it where the GPU count changed), with --finetune
    where the plan rewarms; a later job of the same run (its own save exists) resumes that save,
    without --finetune or a conversion."""
    import os
    import subprocess

    _, out, manifest, _ = exported
    md = tmp_path / "md"
    (md / "deps/DeepSpeed/deepspeed/checkpoint").mkdir(parents=True)
    (md / "train_alcf.sh").write_text(FAKE_TRAIN)
    (md / "deps/DeepSpeed/deepspeed/checkpoint/ds_to_universal.py").write_text(FAKE_CONVERT)
    ckpt, log = tmp_path / "ckpt", tmp_path / "log"
    env = dict(os.environ, MEGATRON_DEEPSPEED=str(md), CKPT_ROOT=str(ckpt), BASE_CHECKPOINT="/base",
               LOG=str(log), TRAIN_TOKENS="999")

    def start(name):
        log.unlink(missing_ok=True)
        subprocess.run(["bash", str(out / "runs" / f"{name}.sh")], env=env, check=True)
        return log.read_text().splitlines()

    first = start("01-wiki")
    assert first == ["LOAD=/base SAVE=" + str(ckpt / "01-wiki") + " TRAIN_ITERS=55 GLOBAL_BATCH=64 TRAIN_TOKENS=unset "
                     "--finetune"]
    (ckpt / "01-wiki" / "global_step55").mkdir(parents=True)
    (ckpt / "01-wiki" / "latest").write_text("global_step55")
    again = start("01-wiki")
    assert again == [f"LOAD={ckpt / '01-wiki'} SAVE={ckpt / '01-wiki'} TRAIN_ITERS=55 GLOBAL_BATCH=64 TRAIN_TOKENS=unset "]

    lines = start("03-code.base")  # 4 GPUs from 01-wiki's 2: a universal checkpoint, converted first
    step = ckpt / "01-wiki" / "global_step55"
    assert lines[0] == f"convert --input_folder {step} --output_folder {step}_universal"
    assert (ckpt / "01-wiki" / "latest_universal").read_text() == "global_step55_universal"
    assert lines[1].startswith(f"LOAD={ckpt / '01-wiki'} SAVE={ckpt / '03-code.base'} TRAIN_ITERS=102")
    assert lines[1].endswith("--min-lr 0.0001 --override-opt_param-scheduler --universal-checkpoint")
    (ckpt / "03-code.base").mkdir()
    (ckpt / "03-code.base" / "latest").write_text("global_step80")
    lines = start("03-code.base")
    assert len(lines) == 1 and lines[0].startswith(f"LOAD={ckpt / '03-code.base'} ")
    assert lines[0].endswith("--min-lr 0.0001 --override-opt_param-scheduler")


def test_a_refusal_found_in_the_data_leaves_no_folder(tmp_path, shared, capsys):
    """A problem seen only once the data is read (a buffer budget past the source) is refused
    after tokenizing, and the new --out is gone again."""
    from conftest import corpus_heads, write_recipe

    stories, _ = corpus_heads(tmp_path / "corpora", shared, 60_000, 10)
    sources = f'  stories: {{paths: [{stories}], separator: "<|endoftext|>"}}'
    stages = "  - {name: a, tokens: 1024, mix: {stories: 1.0}, buffer_add: {source: stories, tokens: 50_000_000}}"
    recipe = write_recipe(tmp_path / "r.yaml", shared, sources, stages, header="validation: {tokens_per_source: 512}")
    assert main(["export", "megatron-deepspeed", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the tokenizer's progress bar
    assert err.startswith("cpt: error: stages[0].buffer_add.tokens: 50,000,000 is more than")
    assert not (tmp_path / "out").exists()


def test_a_rewarm_on_other_gpus_loads_weights_without_a_conversion(tmp_path, shared):
    """--finetune reads the model's weights, which any GPU count reads: no universal checkpoint."""
    from conftest import corpus_heads, write_recipe

    stories, _ = corpus_heads(tmp_path / "corpora", shared, 60_000, 10)
    sources = f'  stories: {{paths: [{stories}], separator: "<|endoftext|>"}}'
    stages = """  - {name: a, tokens: 1024, mix: {stories: 1.0}, schedule: {kind: constant, lr: 1.0e-3}}
  - {name: b, tokens: 1024, mix: {stories: 1.0}, schedule: {kind: cosine, lr: 1.0e-3, warmup: 0.25}}
  - {name: c, tokens: 1024, mix: {stories: 1.0}, schedule: {kind: cooldown, to: 0.0}}"""
    recipe = write_recipe(tmp_path / "r.yaml", shared, sources, stages, header="validation: {tokens_per_source: 512}")
    assert main(["export", "megatron-deepspeed", str(recipe), "--out", str(tmp_path / "out"), "--gpus", "b=2"]) == 0
    b, c = tmp_path / "out" / "runs" / "02-b.sh", tmp_path / "out" / "runs" / "03-c.sh"
    assert "--finetune" in flags_of(b) and "--universal-checkpoint" not in flags_of(b)
    assert "ds_to_universal" not in b.read_text()
    # c resumes b's optimizer state on 1 GPU: converted from b's last save (iteration 4 of its own count)
    assert "--universal-checkpoint" in flags_of(c) and '--input_folder "$LOAD/global_step4"' in c.read_text()
