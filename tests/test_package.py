"""The package as a user installs it: `python -m build` on a clean clone makes a wheel and an sdist;
both install into a fresh venv (the CPU torch first, as the README says) and give the `cpt` command,
which runs the demo. Slow (about two minutes: a venv, torch and the dependencies are installed)."""

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert res.returncode == 0, (cmd, res.stdout[-2000:], res.stderr[-3000:])
    return res.stdout


@pytest.mark.slow
def test_wheel_and_sdist_install_into_a_fresh_venv_and_run_the_demo(tmp_path):
    pytest.importorskip("build", reason="the `build` package is not installed (pip install build)")
    from cptkit import __version__

    if (ROOT / ".git").is_dir():  # a clean clone: what is committed, nothing else of this checkout
        run(["git", "clone", "-q", ROOT, tmp_path / "clone"])
    else:
        shutil.copytree(ROOT, tmp_path / "clone", ignore=shutil.ignore_patterns(".venv", "runs", "*.egg-info"))
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp_path / "dist", tmp_path / "clone"])
    wheel = tmp_path / "dist" / f"cptkit-{__version__}-py3-none-any.whl"
    sdist = tmp_path / "dist" / f"cptkit-{__version__}.tar.gz"
    names = zipfile.ZipFile(wheel).namelist()
    assert "cptkit/cli.py" in names and "cptkit/demo/run.py" in names and not any(n.startswith("cpt/") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
    assert f"cptkit-{__version__}/README.md" in tarfile.open(sdist).getnames()

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile"]  # bytecode: as imported
    run([*pip, "torch==2.13.0"])  # the CPU build first: the package's torch range then pulls nothing more
    run([*pip, sdist])
    assert run([venv / "bin" / "cpt", "--version"]).strip() == f"cpt {__version__} (cptkit)"
    run([*pip, "--force-reinstall", "--no-deps", wheel])
    out = run([venv / "bin" / "cpt", "demo", "--out", tmp_path / "demo", "--scale", "0.05"], cwd=tmp_path,
              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TQDM_DISABLE": "1",
                   "CPT_SHARED_DATA": str(tmp_path / "none")})
    assert "the report (forgetting and adaptation per stage) is at" in out
    assert (tmp_path / "demo" / "run" / "report.md").is_file() and (tmp_path / "demo" / "run" / "model").is_dir()
