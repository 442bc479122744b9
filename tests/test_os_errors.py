"""Every command turns an OS error on a user's path into one line, `cpt: error: <path>: <what>;
<fix>`, exit 2, no traceback: a folder where a file goes, a file where a folder goes, no
permission, a full disk, a read-only file system, a link loop, a name too long, an input that
cannot be read or is not UTF-8. Also the values that used to be accepted: `cpt plan --max-epochs`
0/-1/nan, a schedule of 10^13 rows, `cpt mix` weights whose sum overflows."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cptkit.cli import main
from cptkit.errors import describe_os_error


STAGE = """
  - name: pre
    tokens: 2560
    mix: {stories: 1.0}
"""


def error_line(capsys, argv: list[str], *names, progress: bool = False) -> str:
    """Run `cpt argv`; assert exit 2 and one `cpt: error:` line on stderr naming each of `names`."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    if progress:  # tokenize draws a progress bar on stderr before it fails; the error is last
        lines = [line for line in lines if line.startswith("cpt:")]
    assert len(lines) == 1 and lines[0].startswith("cpt: error: "), err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def permissions(tmp_path):
    """Skip where permission bits are not enforced (root with CAP_DAC_OVERRIDE): the simulated
    EACCES tests cover the mapping there."""
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    try:
        (probe / "x").touch()
    except PermissionError:
        return
    finally:
        probe.chmod(0o755)
    pytest.skip(f"permission bits are not enforced here (euid {os.geteuid()}, e.g. root); "
                "test_permission_cases_with_the_override_dropped runs this without CAP_DAC_OVERRIDE")


def test_permission_cases_with_the_override_dropped():
    """As root, permission bits are ignored: run this file again in a process whose capability
    bounding set lacks the DAC overrides, so the real-permission cases run and must pass there."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or os.environ.get("CPT_DAC_DROPPED"):
        pytest.skip("not root: the permission cases run directly")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop CAP_DAC_OVERRIDE")
    caps = "-dac_override,-dac_read_search"
    res = subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--", sys.executable, "-m",
                          "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__],
                         capture_output=True, text=True, env={**os.environ, "CPT_DAC_DROPPED": "1"}, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "permission bits are not enforced" not in res.stdout  # they ran, not skipped


@pytest.fixture
def recipe(tmp_path, shared) -> Path:
    from conftest import small_recipe

    small_recipe(tmp_path, shared, STAGE)
    return tmp_path / "small.yaml"


@pytest.fixture
def places(tmp_path) -> dict[str, Path]:
    """A regular file, a folder and a symlink loop to aim outputs at."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return {"file": tmp_path / "afile", "dir": tmp_path / "adir", "loop": tmp_path / "loop"}


def mix_list(tmp_path: Path, text: str = "1 shards/a\n2 shards/b\n", name: str = "list.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ one command line per output path

def _schedule_csv(tmp_path, shared, out):
    from conftest import small_recipe

    small_recipe(tmp_path, shared, STAGE)
    return ["schedule", tmp_path / "small.yaml", "--csv", out]


def _schedule_plot(tmp_path, shared, out):
    return _schedule_csv(tmp_path, shared, out)[:2] + ["--plot", out]


def _mix(tmp_path, shared, out):
    return ["mix", "--inputs", "1", mix_list(tmp_path), "--output", out]


def _vocab_report(tmp_path, shared, out):
    from conftest import STORIES

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Once upon a time there was a cat.\n\nThe end.\n")
    return ["vocab", "report", "--old", STORIES, "--new", STORIES, "--corpus", corpus, "--json", out]


def _tokenize(tmp_path, shared, out):
    from conftest import STORIES

    text = tmp_path / "in.txt"
    text.write_text("Once upon a time.\n\nThe end.\n")
    return ["tokenize", "--tokenizer", STORIES, "--workers", "1", "--output", out, text]


FILE_OUTPUTS = {"schedule --csv": (_schedule_csv, ".csv"), "schedule --plot": (_schedule_plot, ".png"),
                "mix --output": (_mix, ".txt"), "vocab report --json": (_vocab_report, ".json"),
                "tokenize --output": (_tokenize, "")}
NEEDS_SHARED = {"schedule --csv", "schedule --plot", "vocab report --json", "tokenize --output"}


@pytest.fixture(params=sorted(FILE_OUTPUTS))
def command(request, tmp_path):
    """(name, argv for an output path, the output's extension) for each command that writes a file."""
    if request.param in NEEDS_SHARED:
        shared = request.getfixturevalue("shared")
    else:
        shared = None
    build, ext = FILE_OUTPUTS[request.param]
    return request.param, (lambda out: build(tmp_path, shared, out)), ext


def test_output_path_is_a_folder(command, places, capsys):
    _, argv, _ = command
    line = error_line(capsys, argv(places["dir"]), places["dir"], progress=True)
    assert "is a folder" in line
    assert list(places["dir"].iterdir()) == []


def test_output_path_inside_a_file(command, places, capsys):
    _, argv, ext = command
    line = error_line(capsys, argv(places["file"] / f"out{ext}"), places["file"], progress=True)
    assert "not a folder" in line
    assert places["file"].read_text() == "x"


def test_output_path_through_a_link_loop(command, places, capsys):
    _, argv, ext = command
    line = error_line(capsys, argv(places["loop"] / "sub" / f"out{ext}"), places["loop"], progress=True)
    assert "symbolic links" in line


def test_output_name_too_long(command, tmp_path, capsys):
    _, argv, ext = command
    out = tmp_path / ("n" * 300 + ext)
    line = error_line(capsys, argv(out), out, progress=True)
    assert "name too long; choose a shorter path" in line


def test_output_folder_not_writable(command, tmp_path, capsys, permissions):
    _, argv, ext = command
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = error_line(capsys, argv(locked / f"out{ext}"), locked, progress=True)
    finally:
        locked.chmod(0o755)
    assert "permission denied" in line


# --------------------------------------------------------- simulated: EACCES, EROFS, ENOSPC in fileio

FILEIO_OUTPUTS = ["schedule --csv", "schedule --plot", "mix --output", "vocab report --json"]


class _FullFile:
    """A file whose writes fail as on a full disk: errno ENOSPC and, as the kernel's, no file name."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _refusing_open(monkeypatch, module: str, err: int | None):
    """`open` in `module` refuses writes with `err` naming the file, or with err None: writes fail ENOSPC."""
    import builtins

    real = builtins.open

    def fake(path, mode="r", *a, **k):
        if "w" not in mode and "+" not in mode:
            return real(path, mode, *a, **k)
        if err is None:
            return _FullFile(real(path, mode, *a, **k))
        raise OSError(err, os.strerror(err), os.fspath(path))

    monkeypatch.setattr(f"{module}.open", fake, raising=False)


@pytest.mark.parametrize("err, words", [(errno.EACCES, "permission denied; check the file's permissions"),
                                        (errno.EROFS, "read-only file system; choose a writable folder"),
                                        (None, "no space left on device; free space or choose another disk")])
@pytest.mark.parametrize("name", FILEIO_OUTPUTS)
def test_refused_write_names_the_output(name, err, words, tmp_path, monkeypatch, capsys, request):
    shared = request.getfixturevalue("shared") if name in NEEDS_SHARED else None
    build, ext = FILE_OUTPUTS[name]
    out = tmp_path / "out" / f"result{ext}"
    argv = build(tmp_path, shared, out)
    _refusing_open(monkeypatch, "cptkit.fileio", err)
    line = error_line(capsys, argv, out, progress=True)
    assert words in line
    assert not out.exists() and list(out.parent.iterdir()) == []  # no partial file, no temporary left


def test_full_disk_keeps_the_old_output(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mix.txt"
    out.write_text("old\n")
    _refusing_open(monkeypatch, "cptkit.fileio", None)
    error_line(capsys, ["mix", "--inputs", "1", mix_list(tmp_path), "--output", out], out)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["list.txt", "mix.txt"]


def test_full_disk_while_tokenizing_names_the_output(shared, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shards" / "story"
    argv = _tokenize(tmp_path, shared, out)
    _refusing_open(monkeypatch, "cptkit.data.shards", None)
    line = error_line(capsys, argv, f"--output {out}", progress=True)
    assert "no space left on device" in line
    assert not Path(f"{out}.bin").exists() and not Path(f"{out}.idx").exists()


def test_error_without_a_file_name_names_the_flags(recipe, tmp_path, monkeypatch, capsys):
    """A library (here the plot) failing with no file name: the command and the paths it was given."""
    from cptkit import schedule_cli

    def broken(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(schedule_cli, "_plot", broken)
    csv, png = tmp_path / "lr.csv", tmp_path / "lr.png"
    line = error_line(capsys, ["schedule", recipe, "--csv", csv, "--plot", png], "cpt schedule", csv, png)
    assert "no space left on device" in line
    error_line(capsys, ["schedule", recipe, "--plot", png], f"--plot {png}: no space left on device")


# ------------------------------------------------------------------------------- run, demo, data_dir

def test_run_out_is_a_file_or_inside_one(recipe, places, capsys):
    error_line(capsys, ["run", recipe, "--out", places["file"]], places["file"])
    error_line(capsys, ["run", recipe, "--out", places["file"] / "run"], places["file"])


def test_run_and_demo_out_not_creatable(recipe, tmp_path, capsys, permissions):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        for argv in (["run", recipe, "--out", locked / "run"], ["demo", "--out", locked / "demo"]):
            assert "permission denied" in error_line(capsys, argv, locked)
    finally:
        locked.chmod(0o755)


def test_run_data_dir_inside_a_file(tmp_path, shared, places, capsys):
    from conftest import small_recipe

    small_recipe(tmp_path, shared, STAGE, header=f"data_dir: {places['file']}/shards")
    argv = ["run", tmp_path / "small.yaml", "--out", tmp_path / "run"]
    assert "not a folder" in error_line(capsys, argv, places["file"], progress=True)


def test_plan_refuses_out_and_data_dir_that_are_not_folders(tmp_path, shared, places, capsys):
    from conftest import small_recipe

    small_recipe(tmp_path, shared, STAGE)
    recipe = tmp_path / "small.yaml"
    error_line(capsys, ["plan", recipe, "--out", places["file"]], "--out", places["file"])
    error_line(capsys, ["plan", recipe, "--out", places["file"] / "run"], "--out", places["file"])
    small_recipe(tmp_path, shared, STAGE, header=f"data_dir: {places['file']}/shards")
    assert "not a folder" in error_line(capsys, ["plan", recipe], "data_dir", places["file"])


def test_demo_out_is_a_file_or_inside_one(places, capsys):
    assert "not a folder" in error_line(capsys, ["demo", "--out", places["file"]], places["file"])
    assert "not a folder" in error_line(capsys, ["demo", "--out", places["file"] / "d"], places["file"])


# ---------------------------------------------------------------------------------------- inputs

@pytest.mark.parametrize("cmd", ["plan", "schedule"])
def test_unreadable_recipe(cmd, recipe, capsys, permissions):
    recipe.chmod(0)
    try:
        assert "permission denied" in error_line(capsys, [cmd, recipe], recipe)
    finally:
        recipe.chmod(0o644)


@pytest.mark.parametrize("cmd", ["plan", "schedule", "run"])
def test_unreadable_recipe_simulated(cmd, recipe, tmp_path, monkeypatch, capsys):
    real = Path.read_text

    def read_text(self, *a, **k):
        if self == recipe:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    argv = [cmd, recipe] + (["--out", tmp_path / "run"] if cmd == "run" else [])
    assert "permission denied" in error_line(capsys, argv, recipe)


def test_unreadable_inputs(tmp_path, places, monkeypatch, capsys):
    assert "is a folder" in error_line(capsys, ["mix", "--inputs", "1", places["dir"]], places["dir"])
    assert "symbolic links" in error_line(capsys, ["mix", "--inputs", "1", places["loop"]], places["loop"])
    listed = mix_list(tmp_path)
    real = Path.read_bytes

    def read_bytes(self):
        if self == listed:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert "permission denied" in error_line(capsys, ["mix", "--inputs", "1", listed], listed)


def test_unreadable_tokenize_input(shared, tmp_path, monkeypatch, capsys):
    argv = _tokenize(tmp_path, shared, tmp_path / "out" / "x")
    import builtins

    real = builtins.open

    def fake(path, mode="r", *a, **k):
        if Path(path) == tmp_path / "in.txt":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path, mode, *a, **k)

    monkeypatch.setattr("cptkit.data.tokenize.open", fake, raising=False)
    assert "permission denied" in error_line(capsys, argv, tmp_path / "in.txt", progress=True)


def test_decode_error_that_escapes_names_the_file(tmp_path, monkeypatch, capsys):
    """A reader that lets a UnicodeDecodeError through: the open file is found and named."""
    from cptkit import schedule_cli

    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"caf\xe9: 1\n")

    def load(path):
        with open(latin, encoding="utf-8") as f:
            return f.read()

    monkeypatch.setattr(schedule_cli, "load_recipe", load)
    line = error_line(capsys, ["schedule", tmp_path / "r.yaml"], latin)
    assert "not UTF-8 text (byte 0xe9" in line


# ------------------------------------------------------------------ what the handler leaves alone

def test_bugs_and_interrupts_are_not_turned_into_os_errors(tmp_path, monkeypatch, capsys):
    from cptkit import schedule_cli

    def bug(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(schedule_cli, "load_recipe", bug)
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        main(["schedule", str(tmp_path / "r.yaml")])

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(schedule_cli, "load_recipe", interrupted)
    assert main(["schedule", str(tmp_path / "r.yaml")]) == 130
    assert capsys.readouterr().err.startswith("cpt: interrupted;")


@pytest.mark.parametrize("err, words", [
    (errno.ENOSPC, "no space left on device; free space or choose another disk"),
    (errno.EROFS, "read-only file system; choose a writable folder"),
    (errno.EACCES, "permission denied; check the file's permissions or choose another path"),
    (errno.EISDIR, "is a folder; give a file path"),
    (errno.ENOTDIR, "a parent is a file, not a folder; choose another path"),
    (errno.ENOENT, "not found; check the path"),
    (errno.ELOOP, "too many levels of symbolic links; check the links along the path"),
    (errno.ENAMETOOLONG, "name too long; choose a shorter path"),
    (errno.EEXIST, "already exists; remove it or choose another path"),
    (errno.EPROTO, "protocol error; check the path and run again"),  # not in the table: the OS's words
])
def test_describe_os_error(err, words, tmp_path):
    path = tmp_path / "missing" / "x.csv"
    assert describe_os_error(OSError(err, os.strerror(err), str(path))) == f"{path}: {words}"
    # fileio's temporary name is reported as the file the user asked for; a rename names its target
    tmp = OSError(err, os.strerror(err), str(path.with_name(".x.csv.tmp")))
    assert describe_os_error(tmp) == f"{path}: {words}"
    assert describe_os_error(OSError(err, os.strerror(err), "/a/.t", None, str(path))) == f"{path}: {words}"
    assert describe_os_error(OSError(err, os.strerror(err)), "--csv a.csv") == f"--csv a.csv: {words}"


# ------------------------------------------------------------------------------ values now refused

@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_plan_max_epochs_must_be_positive(value, tmp_path, capsys):
    error_line(capsys, ["plan", tmp_path / "r.yaml", f"--max-epochs={value}"], "--max-epochs")


def test_schedule_refuses_absurdly_many_rows_before_making_them(tmp_path, shared, capsys):
    from conftest import small_recipe

    small_recipe(tmp_path, shared, STAGE.replace("2560", "1000000000000000"))  # 3.9e12 steps of 256 tokens
    out = tmp_path / "lr.csv"
    for flag in ("--csv", "--plot"):
        error_line(capsys, ["schedule", tmp_path / "small.yaml", flag, out], flag, "3,906,250,000,000", "100,000,000")
    assert not out.exists()
    assert main(["schedule", str(tmp_path / "small.yaml")]) == 0  # the per-stage summary needs no rows


@pytest.mark.parametrize("text, where", [
    ("1e308 a\n1e308 b\n", "list.txt: the weights sum past the largest float"),
    ("5e-324 a\n1e300 b\n", "list.txt:1: weight 5e-324 becomes 0.0"),  # would be written as 0
    ("inf a\n", "list.txt:1: weight 'inf' is not usable"),
    ("-1 a\n", "list.txt:1: weight '-1' is not usable"),
    ("nan a\n", "list.txt:1: weight 'nan' is not usable"),
])
def test_mix_refuses_weights_out_of_float_range(text, where, tmp_path, capsys):
    out = tmp_path / "mix.txt"
    error_line(capsys, ["mix", "--inputs", "1", mix_list(tmp_path, text), "--output", out], where)
    assert not out.exists()


def test_mix_refuses_group_weights_that_overflow(tmp_path, capsys):
    listed = mix_list(tmp_path)
    error_line(capsys, ["mix", "--inputs", "1e308", listed, "1e308", listed], "--inputs", "largest float")
