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


def stories_tasks(shared, folder):
    """A LAMBADA-style cloze (a story's last word), a two-way choice and a text, from TinyStories."""
    text = (shared / "corpora/en/tinystories.txt").read_text()[:60_000]
    stories = [s.strip() for s in text.split("<|endoftext|>") if len(s.split()) > 30][:12]
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


def test_loglikelihood_and_bits_per_byte_equal_the_models_loss(model_and_tokenizer):
    from cpt.eval.tasks import bits_per_byte, continuation_logprobs

    model, tok = model_and_tokenizer
    context, continuation = "Once upon a time there was a little", " girl named Lily"
    lp, _ = continuation_logprobs(model, tok, context, continuation, torch.device("cpu"))
    ctx = [tok.bos_token_id] + tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    labels = torch.tensor([[-100] * len(ctx) + cont])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ctx + cont]), labels=labels).loss
    assert lp == pytest.approx(-float(loss) * len(cont), rel=1e-5)
    text = "Tom saw a big red ball. He ran to get it."
    ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        nats = float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
    assert bits_per_byte(model, tok, [text], 512, torch.device("cpu")) == pytest.approx(
        nats / math.log(2) / len(text.encode()), rel=1e-5)


def test_tasks_are_scored_at_the_base_and_each_stage(shared, tmp_path):
    from cpt.runner import run_recipe

    stories_tasks(shared, tmp_path)
    header = (f"validation: {{tokens_per_source: 256}}\nevals:\n  cloze: {{kind: cloze, path: {tmp_path}/cloze.jsonl}}\n"
              f"  choice: {{kind: choice, path: {tmp_path}/choice.jsonl}}\n"
              f"  text: {{kind: perplexity, path: {tmp_path}/text.txt}}")
    small_recipe(tmp_path, shared, "  - {name: a, tokens: 512, mix: {math: 1.0}}\n", header)
    run_recipe(tmp_path / "small.yaml", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    base, end = summary["base_evals"], summary["stages"][0]["evals_end"]
    assert set(base) == {"cloze", "choice", "text"} and 0 <= base["cloze"] <= 1 and base["text"] > 0
    assert base["choice"] > 0.5  # the story's own last word is likelier than another story's
    assert end["text"] != base["text"]  # trained on GSM8K: TinyStories' bits per byte moved
    assert summary["stages"][0]["evals_start"] == base
    assert "## Downstream tasks" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("line,expected", [
    ('{"context": "a b"}', "evals.t: {path}:2: no `continuation` field (a cloze item has context, continuation)"),
    ('not json', "evals.t: {path}:2: not valid JSON"),
    ('[1, 2]', "evals.t: {path}:2: expected a JSON object"),
])
def test_bad_task_file_is_one_line(shared, tmp_path, capsys, line, expected):
    from cpt.cli import main

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
    from cpt.errors import CptError
    from cpt.eval.tasks import TaskCfg, load_items

    path = tmp_path / "c.jsonl"
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(CptError, match=r"c.jsonl:1: `answer` 2 is not an index into its 2 choices"):
        load_items("c", TaskCfg(kind="choice", path=path))
