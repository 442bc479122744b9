"""A source given as a data-file list of existing shards (`list: FILE.txt`, data/lists.py): read in
place (never re-tokenized), counted exactly by `cpt plan`, weighted within the source by the list,
checked (files, dtype, vocabulary, tokenizer record), and exported as its shards."""

import json

import numpy as np
import pytest

from cptkit.cli import main
from cptkit.data.lists import ListShard
from cptkit.data.mixlists import read_list
from cptkit.data.packing import PackedStream
from cptkit.data.shards import Shard, ShardWriter

SOURCE = '  web: {{list: {list}{extra}}}\n  stories: {{paths: [{stories}], separator: "<|endoftext|>"}}'
STAGES = """  - {name: a, tokens: 1024, mix: {web: 0.5, stories: 0.5}, buffer_add: {source: web, tokens: 3000}}
  - {name: b, tokens: 512, mix: {stories: 0.5, buffer: 0.5}}"""


@pytest.fixture(scope="module")
def parts(tmp_path_factory, shared):
    """Three input files tokenized as two parts (as two array tasks would), and the list that joins them."""
    from conftest import corpus_heads

    root = tmp_path_factory.mktemp("parts")
    stories, _ = corpus_heads(root / "corpora", shared, 150_000, 10)
    text = stories.read_text().split("<|endoftext|>")
    inputs = []
    for i in range(3):
        p = root / f"in{i}.txt"
        p.write_text("<|endoftext|>".join(text[i::3]))
        inputs.append(str(p))
    tok = str(shared / "models" / "stories260K")
    for i in (1, 2):
        assert main(["tokenize", "--tokenizer", tok, "--output", str(root / f"web-{i}"), "--part", f"{i}/2",
                     "--separator", "<|endoftext|>", *inputs]) == 0
    assert main(["tokenize", "--list", str(root / "web.txt"), str(root / "web-1"), str(root / "web-2")]) == 0
    return root, stories


def recipe_with(tmp_path, shared, parts_root, stories, listfile, extra=""):
    from conftest import write_recipe

    sources = SOURCE.format(list=listfile, extra=extra, stories=stories)
    header = f"validation: {{tokens_per_source: 512}}\ndata_dir: {tmp_path / 'shards'}"
    return write_recipe(tmp_path / "r.yaml", shared, sources, STAGES, header=header)


def test_a_list_source_trains_in_place_and_plan_counts_it_exactly(tmp_path, shared, parts, capsys):
    root, stories = parts
    recipe = recipe_with(tmp_path, shared, root, stories, root / "web.txt")
    assert main(["plan", str(recipe)]) == 0
    plan = capsys.readouterr().out
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 0
    shards = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert not any(n.startswith("web.") for n in shards)  # nothing of `web` was tokenized or copied
    total = sum(Shard(root / f"web-{i}").num_tokens for i in (1, 2))
    joined = ListShard([str(root / "web-1"), str(root / "web-2")], [1, 1], "web")
    held_out = int(joined.lengths[np.load(tmp_path / "run" / "data" / "web.val.npy")].sum())
    assert f"  web: {total - held_out:,}\n" in plan  # exact: no "~", no estimate
    fed = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    seen = next(r["data_seen"] for r in fed if r.get("kind") == "data")
    assert seen["web"]["tokens"] == seen["stories"]["tokens"] == 512  # half of the stage's 1,024 tokens each
    # exported, its replay buffer holds the very documents the run put there (taken from the list's shards)
    assert main(["export", "megatron-deepspeed", str(recipe), "--out", str(tmp_path / "out")]) == 0
    for ext in (".bin", ".idx"):
        assert (tmp_path / "out" / "buffer" / f"v1{ext}").read_bytes() == (tmp_path / "run" / "buffer" / f"v1{ext}").read_bytes()
    assert [(e.corpus, e.weight) for e in read_list(tmp_path / "out" / "lists" / "02-b.txt")] == \
        [("stories", 0.5), ("buffer", 0.5)]


def test_a_list_reads_the_same_samples_as_one_shard_of_the_same_documents(tmp_path, parts):
    """ListShard's slices land in the right shard: its samples equal those of one shard holding
    the first shard's documents, then the second's."""
    root, _ = parts
    a, b = Shard(root / "web-1"), Shard(root / "web-2")
    with ShardWriter(tmp_path / "joined", a.dtype) as w:
        for s in (a, b):
            for i in range(len(s)):
                w.add(s[i])
    one, joined = Shard(tmp_path / "joined"), ListShard([str(root / "web-1"), str(root / "web-2")], [3, 7], "web")
    ids = np.arange(len(one))
    x = PackedStream("web", one, ids, 64, 0)
    y = PackedStream("web", ListShard([str(root / "web-1"), str(root / "web-2")],
                                      [a.num_tokens, b.num_tokens], "web"), ids, 64, 0)
    for s in range(0, x.samples_per_epoch * 2, 7):
        assert np.array_equal(x.sample(s), y.sample(s))
    assert all(np.array_equal(one[i], joined[i]) for i in range(0, len(one), 5))


def test_the_lists_weights_are_the_shares_of_the_sources_samples(parts):
    """Weights 3:1 over two shards of unequal sizes: three quarters of an epoch's tokens come
    from the first (to a document's length)."""
    root, _ = parts
    a, b = Shard(root / "web-1"), Shard(root / "web-2")
    assert abs(a.num_tokens / (a.num_tokens + b.num_tokens) - 0.5) > 0.05  # sizes alone would not give 3:1
    shard = ListShard([str(root / "web-1"), str(root / "web-2")], [3, 1], "web")
    stream = PackedStream("web", shard, np.arange(len(shard)), 64, 0)
    first = stream.epoch_docs < len(a)
    got = shard.lengths[stream.epoch_docs[first]].sum() / shard.lengths[stream.epoch_docs].sum()
    assert got == pytest.approx(0.75, abs=0.01)
    from cptkit.data.buffer import document_files

    assert np.array_equal(document_files(shard), np.repeat([0, 1], [len(a), len(b)]))  # `representative`'s strata
    natural = ListShard([str(root / "web-1"), str(root / "web-2")], [a.num_tokens, b.num_tokens], "web")
    assert natural.factors is None  # weighted by tokens, as ALCF's lists: every document once an epoch
    # printed to 6 digits (blendcorpus), a token-weighted list still reads each document once
    total = a.num_tokens + b.num_tokens
    rounded = [float(f"{a.num_tokens / total:.6f}"), float(f"{b.num_tokens / total:.6f}")]
    assert ListShard([str(root / "web-1"), str(root / "web-2")], rounded, "web").factors is None
    # one small weight rounded down reads less of that shard, and the others exactly once
    skewed = ListShard([str(root / "web-1"), str(root / "web-2")], [a.num_tokens, b.num_tokens * 0.5], "web")
    assert list(skewed.factors) == pytest.approx([total / (a.num_tokens + b.num_tokens * 0.5),
                                                  0.5 * total / (a.num_tokens + b.num_tokens * 0.5)])


def write_list(path, lines):
    path.write_text("".join(f"{w} {p}\n" for w, p in lines))
    return path


def test_bad_lists_are_one_line_errors(tmp_path, shared, parts, capsys):
    root, stories = parts

    def plan(listfile, extra="", *flags):
        recipe = recipe_with(tmp_path, shared, root, stories, listfile, extra)
        code = main(["plan", str(recipe), *flags])
        err = capsys.readouterr().err
        return code, err

    code, err = plan(write_list(tmp_path / "missing.txt", [(1, root / "web-1"), (1, root / "nowhere")]))
    assert code == 2 and err.count("\n") == 1 and "missing.txt:2:" in err and "nowhere.bin and .idx not found" in err
    code, err = plan(write_list(tmp_path / "zero.txt", [(0, root / "web-1"), ("0.000000", root / "web-2")]))
    assert code == 2 and "every weight is 0" in err
    # a zero weight among others is skipped, as blendcorpus's rounding leaves them
    code, _ = plan(write_list(tmp_path / "somezero.txt", [(1, root / "web-1"), ("0.000000", root / "web-2")]))
    assert code == 0

    # a shard without cpt's record: its tokenizer is the user's to declare
    with ShardWriter(tmp_path / "foreign", np.dtype(np.uint16)) as w:
        for i in range(400):
            w.add(np.arange(i % 50 + 70, dtype=np.uint16) % 500)
    foreign = write_list(tmp_path / "foreign.txt", [(1, tmp_path / "foreign")])
    code, err = plan(foreign)
    assert code == 2 and err.count("\n") == 1 and "no record of the tokenizer" in err and "--trust-shards" in err
    fp = err.split("tokenizer_fingerprint: ")[1].split("`")[0]
    assert plan(foreign, "", "--trust-shards")[0] == 0
    assert plan(foreign)[0] == 2  # the flag held for that command only
    assert plan(foreign, f", tokenizer_fingerprint: {fp}")[0] == 0
    code, err = plan(foreign, ", tokenizer_fingerprint: 0123456789abcdef")
    assert code == 2 and "is not the recipe tokenizer's" in err

    # ids past the vocabulary (512 ids) betray another tokenizer even without a record
    with ShardWriter(tmp_path / "wide", np.dtype(np.uint16)) as w:
        for i in range(400):
            w.add(np.full(80, 600 if i == 7 else 5, dtype=np.uint16))
    code, err = plan(write_list(tmp_path / "wide.txt", [(1, tmp_path / "wide")]), "", "--trust-shards")
    assert code == 2 and "holds token id 600, past the tokenizer's 512 ids" in err
    # `cpt run` refuses it before it claims --out
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--trust-shards"]) == 2
    assert "holds token id 600" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # a shard listed twice, and one with no tokens
    code, err = plan(write_list(tmp_path / "twice.txt", [(1, root / "web-1"), (2, root / "web-2"), (1, root / "web-1")]))
    assert code == 2 and "twice.txt:3:" in err and "is listed already (line 1)" in err
    with ShardWriter(tmp_path / "empty", np.dtype(np.uint16)):
        pass
    code, err = plan(write_list(tmp_path / "empty.txt", [(1, root / "web-1"), (1, tmp_path / "empty")]))
    assert code == 2 and err.count("\n") == 1 and "empty: holds no tokens" in err


def test_a_list_source_exports_as_its_shards(tmp_path, shared, parts):
    root, stories = parts
    listfile = write_list(tmp_path / "w.txt", [(2, root / "web-1"), (1, root / "web-2")])
    recipe = recipe_with(tmp_path, shared, root, stories, listfile)
    assert main(["export", "megatron-deepspeed", str(recipe), "--out", str(tmp_path / "out")]) == 0
    entries = {e.prefix: e.weight for e in read_list(tmp_path / "out" / "lists" / "01-a.txt") if e.corpus == "web"}
    assert entries[str(root / "web-1")] == pytest.approx(0.5 * 2 / 3, rel=1e-12)
    assert entries[str(root / "web-2")] == pytest.approx(0.5 / 3, rel=1e-12)
