"""Behavioural tests for `cpt mix`: agreement with blendcorpus's mix_datasets.py arithmetic, full
precision output, --tokens weights from real shards, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from cptkit.data.mixlists import add_parser, format_entries, mix, read_list, run
from cptkit.data.shards import ShardWriter
from cptkit.errors import CptError


def write_list(path: Path, rows, header: str = "") -> Path:
    path.write_text(header + "".join(" ".join(str(f) for f in row) + "\n" for row in rows))
    return path


def blendcorpus_mix(inputs):
    """blendcorpus utils/mix_datasets.py's loop, rewritten here without its `.6f` rounding:
    (prefix, new_w, corpus) for every line of every list."""
    sum_global = sum(gw for gw, _ in inputs)
    out = []
    for gw, file_path in inputs:
        file_fraction = gw / sum_global
        entries, file_sum = [], 0.0
        for line in Path(file_path).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            entries.append((parts[1], float(parts[0]), parts[2]))
            file_sum += float(parts[0])
        out += [(prefix, (w / file_sum) * file_fraction, corpus) for prefix, w, corpus in entries]
    return out


def parse_output(text: str):
    return [(float(line.split()[0]), *line.split()[1:]) for line in text.splitlines()]


@pytest.fixture
def big_lists(tmp_path):
    """3 lists (2419 + 800 + 5 entries) with weights log-uniform over 1e-9..1e3, dolma-sized first
    list at group weight 0.1: the ALCF case where `.6f` prints some weights as 0."""
    rng = np.random.default_rng(0)
    inputs = []
    for i, (g, n) in enumerate([(0.1, 2419), (0.6, 800), (0.3, 5)]):
        weights = 10.0 ** rng.uniform(-9, 3, size=n)
        rows = [(repr(float(w)), f"/data/c{i}/shard_{j:05d}_text_document", f"corpus{i}") for j, w in enumerate(weights)]
        inputs.append((g, write_list(tmp_path / f"list{i}.txt", rows, header="# generated\n\n")))
    return inputs


def test_mix_agrees_with_blendcorpus_and_keeps_every_entry(big_lists):
    ours = mix(big_lists)
    ref = blendcorpus_mix(big_lists)
    assert len(ours) == len(ref) == 2419 + 800 + 5
    assert [(e.prefix, e.corpus) for e in ours] == [(p, c) for p, _, c in ref]
    # Same formula in the same order of float64 operations, so the weights are bit-identical.
    assert [e.weight for e in ours] == [w for _, w, _ in ref]
    assert math.fsum(e.weight for e in ours) == pytest.approx(1.0, abs=1e-12)
    # Each list gets its group's share of the mix (the group weights sum to 1).
    for i, (g, _) in enumerate(big_lists):
        share = math.fsum(e.weight for e in ours if e.corpus == f"corpus{i}")
        assert share == pytest.approx(g, rel=1e-12)


def test_output_is_full_precision_where_blendcorpus_prints_zeros(big_lists):
    ours = mix(big_lists)
    text = format_entries(ours)
    blendcorpus_text = [f"{w:.6f} {p} {c}" for p, w, c in blendcorpus_mix(big_lists)]
    dropped = [line for line in blendcorpus_text if float(line.split()[0]) == 0.0]
    assert dropped, "the fixture should reproduce blendcorpus's rounding-to-zero"
    back = parse_output(text)
    assert all(w > 0 for w, *_ in back)
    assert [w for w, *_ in back] == [e.weight for e in ours]  # reads back as the identical floats
    assert [tuple(rest) for _, *rest in back] == [(e.prefix, e.corpus) for e in ours]


def test_two_field_lines_and_comments(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("# header\n\n  3 /a/x   # trailing note\n1 /a/y tag#1\n\t# indented comment\n")
    entries = read_list(lst)
    assert [(e.weight, e.prefix, e.corpus, e.line) for e in entries] == [(3.0, "/a/x", None, 3), (1.0, "/a/y", "tag#1", 4)]
    assert format_entries(mix([(1.0, lst)])) == "0.75 /a/x\n0.25 /a/y tag#1\n"


def make_shard(prefix: Path, doc_lengths) -> Path:
    with ShardWriter(prefix, np.uint16) as w:
        for n in doc_lengths:
            w.add(np.arange(n) % 100)
    return prefix


def test_tokens_replaces_listed_weights_with_shard_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    sizes = {"d/a": [10, 20], "d/b": [5], "d/c": [100, 100, 65]}  # 30, 5, 265 tokens
    for prefix, docs in sizes.items():
        make_shard(tmp_path / prefix, docs)
    # Misleading listed weights: --tokens must ignore them. Relative prefixes resolve from the cwd.
    l1 = write_list(tmp_path / "l1.txt", [(1000, "d/a", "x"), (1, "d/b", "y")])
    l2 = write_list(tmp_path / "l2.txt", [(0.5, "d/c", "z")])
    weights = [e.weight for e in mix([(3.0, l1), (1.0, l2)], use_tokens=True)]
    assert weights == pytest.approx([30 / 35 * 0.75, 5 / 35 * 0.75, 1.0 * 0.25], rel=1e-15)
    assert [e.weight for e in mix([(3.0, l1), (1.0, l2)])] == pytest.approx([1000 / 1001 * 0.75, 1 / 1001 * 0.75, 0.25])


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(CptError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("text, line, says", [
    ("1 /a\n2\n", 2, "found 1 fields"),
    ("1 /a x extra\n", 1, "found 4 fields"),
    ("# c\none /a x\n", 2, "weights must be positive"),
    ("0 /a x\n", 1, "weights must be positive"),
    ("1 /a\n-2 /b\n", 2, "weights must be positive"),
    ("nan /a\n", 1, "weights must be positive"),
    ("inf /a\n", 1, "weights must be positive"),
])
def test_bad_line_names_file_and_line(tmp_path, text, line, says):
    lst = tmp_path / "bad.txt"
    lst.write_text(text)
    msg = one_line_error(mix, [(1.0, lst)])
    assert f"{lst}:{line}:" in msg and says in msg


def test_bad_list_files(tmp_path):
    assert "not found" in one_line_error(mix, [(1.0, tmp_path / "missing.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n   # another\n")
    assert f"{empty}: no entries" in one_line_error(read_list, empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"1 /a\n1 /caf\xe9\n")
    assert f"{latin}:2: not UTF-8" in one_line_error(read_list, latin)


@pytest.mark.parametrize("g", [-0.5, 0.0, math.inf, math.nan])
def test_group_weight_must_be_positive(tmp_path, g):
    lst = write_list(tmp_path / "l.txt", [(1, "/a")])
    msg = one_line_error(mix, [(1.0, lst), (g, lst)])
    assert f"--inputs: weight 2 ('{g!r}') must be a positive number" == msg


def test_tokens_with_broken_shards(tmp_path):
    make_shard(tmp_path / "ok", [4])
    make_shard(tmp_path / "short", [8, 8])
    with open(tmp_path / "short.bin", "r+b") as f:
        f.truncate(10)
    make_shard(tmp_path / "empty", [])
    cases = [(tmp_path / "gone", "gone.idx: shard index not found"),
             (tmp_path / "short", "short.bin: expected 32 bytes"),
             (tmp_path / "empty", "has 0 tokens")]
    for prefix, says in cases:
        lst = write_list(tmp_path / "l.txt", [(1, tmp_path / "ok"), (1, prefix)])
        msg = one_line_error(mix, [(1.0, lst)], use_tokens=True)
        assert f"{lst}:2:" in msg and says in msg


def cli(argv):
    parser = argparse.ArgumentParser(prog="cpt")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["mix", *argv]))


def test_cli_stdout_and_output_file(tmp_path, capsys):
    l1 = write_list(tmp_path / "l1.txt", [(1, "/a", "x"), (3, "/b", "x")])
    l2 = write_list(tmp_path / "l2.txt", [(7, "/c", "y")])
    assert cli(["--input", "1", str(l1), "3", str(l2)]) == 0  # --input: argparse prefix match
    expected = "0.0625 /a x\n0.1875 /b x\n0.75 /c y\n"
    assert capsys.readouterr().out == expected
    out = tmp_path / "sub" / "mixed.txt"
    assert cli(["--inputs", "1", str(l1), "3", str(l2), "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert out.read_text() == expected
    assert [p.name for p in out.parent.iterdir()] == ["mixed.txt"]  # no temporary left behind


def test_cli_bad_inputs(tmp_path):
    lst = write_list(tmp_path / "l.txt", [(1, "/a")])
    assert "--inputs: got 3 values" in one_line_error(cli, ["--inputs", "1", str(lst), "2"])
    assert "--inputs: weight 2 ('half') is not a number" in one_line_error(cli, ["--inputs", "1", str(lst), "half", str(lst)])
    assert "--inputs: weight 1 ('-1.0')" in one_line_error(cli, ["--inputs", "-1", str(lst)])
