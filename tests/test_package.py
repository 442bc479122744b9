"""The package as a user installs it: `python -m build` on a clean clone makes a wheel and an sdist;
both install into a fresh venv (the CPU torch first, as the README says) and give the `cpt` command,
which runs the demo.

Slow: a venv, torch and the dependencies are installed, then the demo runs (about two minutes).
`start_install` runs all of it in a background process at the lowest priority from the start of
the session when this module is collected (conftest.py), on the cores the other tests leave idle;
the test waits for it and checks what it made."""

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

INSTALL = """set -euo pipefail
if [ -d "$ROOT/.git" ]; then git clone -q "$ROOT" "$DIR/clone"   # a clean clone: what is committed
else cp -r "$ROOT" "$DIR/clone" && rm -rf "$DIR/clone/.venv" "$DIR/clone/runs"; fi
"$PY" -m build --no-isolation --outdir "$DIR/dist" "$DIR/clone"
"$PY" -m venv "$DIR/venv"
pip() { "$DIR/venv/bin/python" -m pip install -q --no-compile "$@"; }   # bytecode: as imported
pip torch==2.13.0                      # the CPU build first: the package's torch range then pulls nothing more
pip "$DIR"/dist/cptkit-*.tar.gz        # the sdist (built into a wheel by pip), with the dependencies
"$DIR/venv/bin/cpt" --version > "$DIR/version.txt"
pip --force-reinstall --no-deps "$DIR"/dist/cptkit-*.whl
cd "$DIR" && TQDM_DISABLE=1 "$DIR/venv/bin/cpt" demo --out "$DIR/demo" --scale 0.05 > "$DIR/demo.log" 2>&1
"""


def start_install(folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "ROOT": str(ROOT), "DIR": str(folder), "PY": sys.executable}
    log = open(folder / "install.log", "w")
    return subprocess.Popen(["nice", "-n", "19", "bash", "-c", INSTALL], env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_wheel_and_sdist_install_into_a_fresh_venv_and_run_the_demo(package_install):
    from cptkit import __version__

    proc, folder = package_install
    logs = [folder / "install.log", folder / "demo.log"]
    assert proc.wait(timeout=900) == 0, "".join(f.read_text()[-2000:] for f in logs if f.is_file())
    wheel = folder / "dist" / f"cptkit-{__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "cptkit/cli.py" in names and "cptkit/demo/run.py" in names and not any(n.startswith("cpt/") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
    assert f"cptkit-{__version__}/README.md" in tarfile.open(folder / "dist" / f"cptkit-{__version__}.tar.gz").getnames()
    assert (folder / "version.txt").read_text().strip() == f"cpt {__version__} (cptkit)"  # from the sdist
    demo = folder / "demo" / "run"
    assert "the report (forgetting and adaptation per stage) is at" in (folder / "demo.log").read_text()
    assert (demo / "report.md").is_file() and (demo / "model" / "config.json").is_file()
