"""The recipes in examples/ load and plan as the README says (they read ../shared/data by their
own relative paths, so they are checked only where that folder sits beside the repository)."""

from pathlib import Path

import pytest

from cptkit.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "models" / "stories260K"


@pytest.mark.parametrize("recipe", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_plans(recipe, capsys):
    if not (BESIDE / "config.json").is_file():
        pytest.skip(f"the examples read ../shared/data beside the repository; not found at {BESIDE}")
    assert main(["plan", str(recipe)]) == 0
    assert "stage " in capsys.readouterr().out


def test_strategies_example_expands_its_presets(capsys):
    if not (BESIDE / "config.json").is_file():
        pytest.skip(f"the examples read ../shared/data beside the repository; not found at {BESIDE}")
    assert main(["plan", str(EXAMPLES[0].parent / "strategies.yaml")]) == 0
    out = capsys.readouterr().out
    for line in ("stage code.base:", "stage code:", "from strategy strategy4 (N=10, alpha0=0.7",
                 "cooldown (continued)", "from strategy cooldown-mix (mix=A"):
        assert line in out
    assert "warning" not in out  # starts Strategy 4 at LR_max, reads no source past 4 epochs


FAKE = {  # the scheduler commands the launch scripts call, standing in for a one-node allocation
    "srun": '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n',  # drop srun's options
    "scontrol": "#!/bin/sh\necho localhost\n",
    "mpiexec": '#!/bin/sh\nwhile [ "$1" != python ]; do shift; done\nexec "$@"\n',
}


@pytest.fixture(scope="module")
def multinode_runs(tmp_path_factory, shared):
    """The SLURM and PBS scripts in examples/multinode, each on a one-node 'allocation' of 2 CPU
    ranks with a rendezvous port of its own, started side by side: script -> (the script's
    process, its folder). Each test waits for its own."""
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    runs = {}
    for port, script in enumerate(["slurm.sbatch", "pbs_polaris.sh"], start=29517):
        tmp_path = tmp_path_factory.mktemp(script.replace(".", "-"))
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, body in FAKE.items():
            (bin_dir / name).write_text(body)
            (bin_dir / name).chmod(0o755)
        nodefile = tmp_path / "nodes"
        nodefile.write_text("localhost\n")
        recipe = {"model": {"path": f"{shared}/models/stories260K"}, "seq_len": 64, "micro_batch": 2,
                  "batch_tokens": 256,
                  "sources": {"stories": {"paths": [f"{shared}/corpora/en/tinystories.txt"], "separator": "<|endoftext|>"}},
                  "validation": {"tokens_per_source": 128}, "stages": [{"name": "a", "tokens": 512, "mix": {"stories": 1.0}}]}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
               "PYTHONPATH": str(root / "src"), "RECIPE": str(tmp_path / "r.yaml"), "OUT": str(tmp_path / "out"),
               "GPUS_PER_NODE": "2", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PORT": str(port),
               "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_ID": "7",
               "PBS_NODEFILE": str(nodefile), "PBS_O_WORKDIR": str(root), "PBS_JOBID": "7.polaris"}
        env.pop("WORLD_SIZE", None)
        with open(tmp_path / "stderr", "w") as stderr:
            runs[script] = (subprocess.Popen(["bash", str(root / "examples" / "multinode" / script)],
                                             stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=root), tmp_path)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("script", ["slurm.sbatch", "pbs_polaris.sh"])
def test_multinode_launch_scripts_run_cpt_through_torchrun_rendezvous(script, multinode_runs):
    """The SLURM and PBS scripts in examples/multinode, on a one-node 'allocation' of 2 CPU ranks:
    torchrun's c10d rendezvous, `cpt run --resume` on a new folder, a finished run."""
    proc, tmp_path = multinode_runs[script]
    assert proc.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()[-3000:]
    assert (tmp_path / "out" / "summary.json").is_file() and (tmp_path / "out" / "model" / "config.json").is_file()


def test_eeve_relora_example_puts_relora_on_the_stages_that_train_the_layers(shared, tmp_path, capsys):
    """examples/eeve/vietnamese-relora.yaml on an extended stories260K (the folder vietnamese.sh
    makes): eeve expands into four stages; the last two, and only they, merge adapters."""
    from conftest import extended_model

    recipe = EXAMPLES[0].parent / "eeve" / "vietnamese-relora.yaml"
    text = recipe.read_text().replace("../../runs/eeve-vi/model", str(extended_model(shared, tmp_path)))
    text = text.replace("../../../shared/data", str(shared))
    (tmp_path / "r.yaml").write_text(text)
    assert main(["plan", str(tmp_path / "r.yaml")]) == 0
    out = capsys.readouterr().out
    stages = out.split("\nstage ")[1:]
    assert [s.split(":")[0] for s in stages] == ["vi.eeve1-3", "vi.eeve4-5", "vi.eeve6", "vi"]
    assert ["relora:" in s for s in stages] == [False, False, True, True]
    assert "merges at 65,536, 98,304, 131,072, 163,840, 196,608, 229,376" in stages[3]


def test_chained_example_plans_every_stage_kind(tmp_path, capsys):
    """examples/chain/chain.yaml on a vocabulary extended as chain.sh extends it (fewer tokens,
    for time): EEVE's stages, the up-scaling, the context extension, the anneal's computed mix and
    the merge are all in the plan."""
    if not (BESIDE / "config.json").is_file():
        pytest.skip(f"the examples read ../shared/data beside the repository; not found at {BESIDE}")
    data = BESIDE.parents[1]
    vi = tmp_path / "vi.jsonl"
    vi.write_text("\n".join((data / "corpora/vi/viwiki.jsonl").read_text().splitlines()[:40]) + "\n")
    assert main(["vocab", "extend", "--base", str(BESIDE), "--corpus", str(vi), "--add", "100",
                 "--out", str(tmp_path / "tok")]) == 0
    assert main(["vocab", "init", "--model", str(BESIDE), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "model")]) == 0
    chain = EXAMPLES[0].parent / "chain" / "chain.yaml"
    recipe = chain.parent / f".test-{tmp_path.name}.yaml"  # beside the original: its relative paths hold
    recipe.write_text(chain.read_text().replace("../../runs/chain/model", str(tmp_path / "model")))
    try:
        capsys.readouterr()
        assert main(["plan", str(recipe)]) == 0
    finally:
        recipe.unlink()
    out = capsys.readouterr().out
    for line in ("stage vi.eeve1-3:", "stage vi:", "stage up:", "up-scaled at the start: drop 1 (SOLAR)",
                 "seq_len 1,024; rope theta 40000",
                 "anneal mix: vi 0.56, stories 0.24, gsm8k 0.2",
                 "stage soup: merge (linear) 0.5 x anneal@final, 0.5 x long@final"):
        assert line in out, line
    assert "warning" not in out
