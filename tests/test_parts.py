"""Tokenizing across machines (data/parts.py): `--part I/N` splits the files into N parts balanced by
bytes, the same whatever order they are given in; the parts' shards hold exactly the documents and
tokens of one shard of all the files; `--list` joins them weighted by tokens."""

import random

import pytest

from cptkit.data.parts import parse_part, split
from cptkit.data.shards import Shard


def files_of(tmp_path, sizes):
    paths = []
    for i, n in enumerate(sizes):
        p = tmp_path / f"f{i}.txt"
        p.write_bytes(b"x" * n)
        paths.append(p)
    return paths


def test_parts_are_balanced_by_bytes_and_independent_of_order(tmp_path):
    paths = files_of(tmp_path, [50, 40, 30, 20, 10])
    parts = split(paths, 2)
    assert [[p.name for p in part] for part in parts] == [["f0.txt", "f3.txt", "f4.txt"], ["f1.txt", "f2.txt"]]
    shuffled = paths[:]
    random.Random(0).shuffle(shuffled)
    assert split(shuffled, 2) == parts and split(paths + paths[:2], 2) == parts  # order and repeats do not matter
    three = split(paths, 3)
    assert sorted(p for part in three for p in part) == sorted(paths)  # every file in exactly one part
    assert [sum(p.stat().st_size for p in part) for part in three] == [50, 50, 50]


@pytest.mark.parametrize("text", ["0/4", "5/4", "a/b", "3"])
def test_a_bad_part_is_refused(text):
    from cptkit.errors import CptError

    with pytest.raises(CptError, match=f"--part {text}: give I/N with 1 <= I <= N"):
        parse_part(text)


def test_more_parts_than_files_is_refused(tmp_path):
    from cptkit.errors import CptError

    with pytest.raises(CptError, match="--part: 3 parts of 2 file"):
        split(files_of(tmp_path, [5, 5]), 3)


def test_parts_tokenized_apart_and_listed_equal_one_shard(shared, tmp_path, capsys):
    from cptkit.cli import main

    text = (shared / "corpora/en/tinystories.txt").read_text()[:60_000].split("<|endoftext|>")
    inputs = []
    for i in range(5):  # five files of unequal size, documents separated by blank lines
        p = tmp_path / f"in{i}.txt"
        p.write_text("\n\n".join(s.strip() for s in text[i * 6:(i + 1) * 6 + i * 3]))
        inputs.append(p)
    tok = shared / "models" / "stories260K"
    for i in (1, 2):
        assert main(["tokenize", "--tokenizer", str(tok), "--output", str(tmp_path / f"part-{i}"), "--part", f"{i}/2",
                     "--workers", "1", *map(str, inputs)]) == 0
    assert main(["tokenize", "--tokenizer", str(tok), "--output", str(tmp_path / "all"), "--workers", "1",
                 *map(str, inputs)]) == 0
    parts, whole = [Shard(tmp_path / f"part-{i}") for i in (1, 2)], Shard(tmp_path / "all")
    assert sum(len(s) for s in parts) == len(whole) and sum(s.num_tokens for s in parts) == whole.num_tokens
    assert sorted(tuple(s[d].tolist()) for s in parts for d in range(len(s))) == \
        sorted(tuple(whole[d].tolist()) for d in range(len(whole)))
    out = tmp_path / "web.txt"
    assert main(["tokenize", "--list", str(out), str(tmp_path / "part-1"), str(tmp_path / "part-2")]) == 0
    lines = [line.split() for line in out.read_text().splitlines()]
    assert [(p, c) for _, p, c in lines] == [(str(tmp_path / "part-1"), "web"), (str(tmp_path / "part-2"), "web")]
    for (w, _, _), s in zip(lines, parts):
        assert float(w) == pytest.approx(s.num_tokens / whole.num_tokens, rel=1e-15)
    capsys.readouterr()
    assert main(["tokenize", "--list", str(tmp_path / "bad.txt"), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing.idx: shard index not found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad.txt").exists()
