"""Downstream tasks from local files (eval/tasks.py): log-likelihoods equal the model's own loss,
bits per byte equal its summed loss over the text's bytes, scores at the base and each stage's
edges reach summary.json and the report, and a bad task file is one line naming line and field."""

import json
import math

import pytest
import torch

from conftest import small_recipe


@pytest.fixture(scope="module")
def model_and_tokenizer(shared):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared / "models" / "stories260K"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def stories_tasks(shared, folder, n=12):
    """A LAMBADA-style cloze (a story's last word), a two-way choice and a text, from TinyStories."""
    text = (shared / "corpora/en/tinystories.txt").read_text()[:60_000 * (1 + n // 12)]
    stories = [s.strip() for s in text.split("<|endoftext|>") if len(s.split()) > 30][:n]
    cloze, choice = [], []
    for i, s in enumerate(stories):
        head, last = s.rsplit(" ", 1)
        cloze.append({"context": head, "continuation": " " + last})
        other = stories[(i + 1) % len(stories)].rsplit(" ", 1)[1]
        choice.append({"question": head, "choices": [last, other] if i % 2 else [other, last], "answer": i % 2 ^ 1})
    (folder / "cloze.jsonl").write_text("\n".join(json.dumps(c) for c in cloze) + "\n")
    (folder / "choice.jsonl").write_text("\n".join(json.dumps(c) for c in choice) + "\n")
    (folder / "text.txt").write_text(stories[0] + "\n\n" + stories[1])
    return stories


CPU = torch.device("cpu")


def test_loglikelihood_and_bits_per_byte_equal_the_models_loss(model_and_tokenizer):
    from cptkit.distributed.env import Dist
    from cptkit.eval.scoring import encode_pair, score
    from cptkit.eval.tasks import bits_per_byte

    model, tok = model_and_tokenizer
    ctx, cont = encode_pair(tok, "Once upon a time there was a little ", "girl named Lily")
    assert ctx[0] == tok.bos_token_id and ctx + cont == [tok.bos_token_id] + tok(
        "Once upon a time there was a little girl named Lily", add_special_tokens=False)["input_ids"]
    (lp, _), = score(model, [(ctx + cont, len(ctx))], 512, 4, CPU, Dist())
    labels = torch.tensor([[-100] * len(ctx) + cont])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ctx + cont]), labels=labels).loss
    assert lp == pytest.approx(-float(loss) * len(cont), rel=1e-5)
    text = "Tom saw a big red ball. He ran to get it."
    ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        nats = float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
    assert bits_per_byte(model, tok, [text], 512, 4, CPU, Dist()) == pytest.approx(
        nats / math.log(2) / len(text.encode()), rel=1e-5)


def test_batches_and_ranks_score_as_one_at_a_time(model_and_tokenizer, monkeypatch):
    """Padding on the right changes no score; two ranks' shares add up to one process's scores."""
    from cptkit.distributed.env import Dist
    from cptkit.eval.scoring import encode_pair, score

    model, tok = model_and_tokenizer
    words = "The cat sat on the mat and then it ran to the big red ball in the park".split()
    requests = [(c + t, len(c)) for c, t in (encode_pair(tok, " ".join(words[:k]), " " + words[k])
                                             for k in range(1, len(words)))]
    alone = score(model, requests, 512, 1, CPU, Dist())
    batched = score(model, requests, 512, 5, CPU, Dist())
    assert [g for _, g in batched] == [g for _, g in alone]
    assert [lp for lp, _ in batched] == pytest.approx([lp for lp, _ in alone], abs=1e-4)
    monkeypatch.setattr(Dist, "sum_tensor", lambda self, t, device: t)  # each rank's own share
    shares = [score(model, requests, 512, 3, CPU, Dist(rank=r, world=2)) for r in range(2)]
    assert [a[0] + b[0] for a, b in zip(*shares)] == pytest.approx([lp for lp, _ in alone], abs=1e-4)
    assert sum(g for share in shares for _, g in share) == sum(g for _, g in alone)
    short = score(model, [(requests[-1][0], requests[-1][1])], 4, 1, CPU, Dist())  # cut to its last 4 tokens
    assert short[0][0] < 0


def test_gsm8k_answers_are_extracted_and_the_prompt_fits():
    from cptkit.eval.generate import extract, gold, prompt_ids

    assert gold("48/2 = 24\n#### 1,072") == "1072" and gold("no marker") is None
    assert extract("so 3+4 = 7.\n#### $72.") == ("72", "72")
    assert extract("The answer is 12, not 13.") == (None, "13")

    class Chars:  # one token per character
        bos_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    shots = [{"question": "1+1?", "answer": "2\n#### 2"}, {"question": "2+2?", "answer": "4\n#### 4"}]
    item = {"question": "3+3?", "answer": "6\n#### 6"}
    full = "Question: 1+1?\nAnswer: 2\n#### 2\n\nQuestion: 2+2?\nAnswer: 4\n#### 4\n\nQuestion: 3+3?\nAnswer:"
    assert "".join(map(chr, prompt_ids(Chars(), shots, item, 1000))) == full
    assert "".join(map(chr, prompt_ids(Chars(), shots, item, 60))) == full.split("\n\n", 1)[1]  # the oldest shot goes


def test_lm_eval_harness_agrees_with_our_scores(shared, tmp_path, model_and_tokenizer):
    """The same files through lm-evaluation-harness (local YAML over local JSONL, the in-memory
    model): cloze and choice accuracy within half a point, bits per byte within 0.1%, and the same
    few-shot exact match."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lm_eval)")
    from cptkit.distributed.env import Dist
    from cptkit.eval.tasks import TaskCfg, load_items, run_task
    import contextlib

    model, tok = model_and_tokenizer
    stories_tasks(shared, tmp_path, n=40)
    (tmp_path / "gsm.jsonl").write_text("".join((shared / "corpora/math/gsm8k_train.jsonl").read_text()
                                                .splitlines(keepends=True)[:5]))
    for kind, file, extra in [("cloze", "cloze.jsonl", {}), ("choice", "choice.jsonl", {}),
                              ("perplexity", "text.txt", {}),
                              ("generate", "gsm.jsonl", {"shots": 1, "max_new_tokens": 24})]:
        scores = {}
        for backend in ("cpt", "lm-eval"):
            cfg = TaskCfg(kind=kind, path=tmp_path / file, backend=backend, **extra)
            scores[backend] = run_task(model, tok, cfg, load_items(kind, cfg), 512, 4, CPU, contextlib.nullcontext,
                                       Dist())
        ours, theirs = scores["cpt"], scores["lm-eval"]
        assert set(ours) == set(theirs), kind
        for key in ours:
            tolerance = 1e-3 * ours[key] if key == "bits_per_byte" else 0.005
            assert abs(ours[key] - theirs[key]) <= tolerance, (kind, key, ours, theirs)


def test_tasks_are_scored_at_the_base_and_each_stage(shared, tmp_path):
    from cptkit.runner import run_recipe

    stories_tasks(shared, tmp_path)
    header = (f"validation: {{tokens_per_source: 256}}\neval: {{every_tokens: 256, tasks: every}}\nevals:\n  cloze: {{kind: cloze, path: {tmp_path}/cloze.jsonl}}\n"
              f"  choice: {{kind: choice, path: {tmp_path}/choice.jsonl}}\n"
              f"  text: {{kind: perplexity, path: {tmp_path}/text.txt}}\n"
              f"  gsm8k: {{kind: generate, path: {shared}/corpora/math/gsm8k_train.jsonl, shots: 1, limit: 2, "
              "max_new_tokens: 8}")
    small_recipe(tmp_path, shared, "  - {name: a, tokens: 512, mix: {math: 1.0}}\n", header)
    run_recipe(tmp_path / "small.yaml", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    base, end = summary["base_evals"], summary["stages"][0]["evals_end"]
    assert set(base) == {"cloze", "choice", "text", "gsm8k"} and 0 <= base["cloze"] <= 1 and base["text"] > 0
    assert base["gsm8k"] == 0  # a 260K-parameter story model does not solve GSM8K
    assert base["choice"] > 0.5  # the story's own last word is likelier than another story's
    assert end["text"] != base["text"]  # trained on GSM8K: TinyStories' bits per byte moved
    assert summary["stages"][0]["evals_start"] == base
    assert "## Downstream tasks" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "plots" / "tasks.png").stat().st_size > 0
    tags = [r["tag"] for r in map(json.loads, (tmp_path / "out" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "tasks"]
    assert tags == ["base", "start", "periodic", "end"]  # eval.tasks: every adds the periodic evaluations


@pytest.mark.parametrize("line,expected", [
    ('{"context": "a b"}', "evals.t: {path}:2: no `continuation` field (a cloze item has context, continuation)"),
    ('not json', "evals.t: {path}:2: not valid JSON"),
    ('[1, 2]', "evals.t: {path}:2: expected a JSON object"),
])
def test_bad_task_file_is_one_line(shared, tmp_path, capsys, line, expected):
    from cptkit.cli import main

    path = tmp_path / "t.jsonl"
    path.write_text('{"context": "a", "continuation": " b"}\n' + line + "\n")
    small_recipe(tmp_path, shared, "  - {name: a, tokens: 256, mix: {stories: 1.0}}\n",
                 f"evals: {{t: {{kind: cloze, path: {path}}}}}")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["run", str(tmp_path / "small.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected.format(path=path) in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_choice_answer_out_of_range_is_refused(tmp_path):
    from cptkit.errors import CptError
    from cptkit.eval.tasks import TaskCfg, load_items

    path = tmp_path / "c.jsonl"
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(CptError, match=r"c.jsonl:1: `answer` 2 is not an index into its 2 choices"):
        load_items("c", TaskCfg(kind="choice", path=path))


def test_lm_eval_missing_or_under_ranks_is_refused(shared, tmp_path, monkeypatch):
    import importlib.util

    from cptkit.errors import CptError
    from cptkit.eval.harness import check_harness
    from cptkit.recipe import load_recipe

    stories_tasks(shared, tmp_path)
    small_recipe(tmp_path, shared, "  - {name: a, tokens: 256, mix: {stories: 1.0}}\n",
                 f"evals: {{c: {{kind: cloze, path: {tmp_path}/cloze.jsonl, backend: lm-eval}}}}")
    recipe = load_recipe(tmp_path / "small.yaml")
    with pytest.raises(CptError, match="evals.c: backend lm-eval runs in one process, not under 2 ranks"):
        check_harness(recipe, 2) if importlib.util.find_spec("lm_eval") else pytest.skip("lm_eval not installed")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CptError, match="evals.c: backend lm-eval needs lm-evaluation-harness, which is not "
                                       "installed; pip install lm_eval"):
        check_harness(recipe, 1)


def test_generate_options_belong_to_generate(tmp_path):
    from pydantic import ValidationError

    from cptkit.eval.tasks import TaskCfg

    with pytest.raises(ValidationError, match="`shots` and `max_new_tokens` are for kind: generate, not cloze"):
        TaskCfg(kind="cloze", path=tmp_path, shots=3)


@pytest.mark.parametrize("line,expected", [
    ('{"question": "q", "answer": "a\\n#### 4"}', None),
    ('{"question": 3, "answer": "a\\n#### 4"}', "g.jsonl:1: `question` must be a non-empty string"),
    ('{"question": "q", "answer": "no number"}', "g.jsonl:1: `answer` does not end in `#### <number>`"),
])
def test_generate_items_and_window_are_checked(tmp_path, line, expected):
    from cptkit.errors import CptError
    from cptkit.eval.tasks import TaskCfg, load_items

    path = tmp_path / "g.jsonl"
    path.write_text(line + "\n" + line + "\n")
    cfg = TaskCfg(kind="generate", path=path, shots=1, max_new_tokens=40)
    if expected is None:
        assert len(load_items("g", cfg, 256)) == 2
        with pytest.raises(CptError, match="evals.g.max_new_tokens: 40 leaves the prompt too little of the 64-token "
                                           "window .* use at most 32"):
            load_items("g", cfg, 64)
    else:
        with pytest.raises(CptError, match=expected):
            load_items("g", cfg, 256)
