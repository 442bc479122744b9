"""Passkey retrieval (eval/passkey.py): prompts of exactly the asked length with the needle at the
asked depth; a model that reads the needle back scores 1, one that does not scores 0; bad flags
are one line."""

import pytest
import torch

from cptkit.eval.passkey import NEEDLE, QUESTION, PasskeyCfg, _ids, passkey_accuracy, passkey_prompt


@pytest.fixture(scope="module")
def tokenizer(shared):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared / "models" / "stories260K")


class Reader(torch.nn.Module):
    """Answers by copying the tokens that follow "The pass key is" in the needle: a model with
    perfect retrieval (or, `wrong`, one that always says 1)."""

    def __init__(self, tokenizer, vocab: int, wrong: bool = False):
        super().__init__()
        self.prefix = _ids(tokenizer, NEEDLE.split("{key}")[0].rstrip())
        self.question = _ids(tokenizer, QUESTION)
        self.one = _ids(tokenizer, " 1")[-1]
        self.vocab, self.wrong = vocab, wrong

    def forward(self, input_ids, **kwargs):
        ids = input_ids[0].tolist()
        p = next(i for i in range(len(ids)) if ids[i:i + len(self.prefix)] == self.prefix) + len(self.prefix)
        q = max(i for i in range(len(ids)) if ids[i:i + len(self.question)] == self.question) + len(self.question)
        logits = torch.zeros(1, len(ids), self.vocab)
        logits[0, -1, self.one if self.wrong else ids[p + len(ids) - q]] = 1.0
        return type("Out", (), {"logits": logits})()


def test_prompts_have_the_length_and_the_depth_asked(tokenizer):
    needle = _ids(tokenizer, NEEDLE.format(key="48213"))
    starts = []
    for depth in (0.0, 0.5, 1.0):
        ids = passkey_prompt(tokenizer, 300, depth, "48213")
        assert len(ids) == 300 and ids[0] == tokenizer.bos_token_id
        starts.append(next(i for i in range(len(ids)) if ids[i:i + len(needle)] == needle))
    assert starts[0] < starts[1] < starts[2] and ids[-len(_ids(tokenizer, QUESTION)):] == _ids(tokenizer, QUESTION)


def test_a_reader_scores_one_and_a_guesser_zero(tokenizer):
    cfg = PasskeyCfg(lengths=[200, 400], depths=[0.0, 0.5, 1.0], trials=3)
    right = passkey_accuracy(Reader(tokenizer, len(tokenizer)), tokenizer, cfg, torch.device("cpu"))
    assert right == {"200": {"0": 1.0, "0.5": 1.0, "1": 1.0}, "400": {"0": 1.0, "0.5": 1.0, "1": 1.0}}
    wrong = passkey_accuracy(Reader(tokenizer, len(tokenizer), wrong=True), tokenizer, cfg, torch.device("cpu"))
    assert all(v == 0.0 for row in wrong.values() for v in row.values())


@pytest.mark.parametrize("args,expected", [
    (["--depths", "0,1.5"], "--depths: Input should be less than or equal to 1"),
    (["--lengths", "a,b"], "--lengths: 'a,b'; give a comma-separated list of numbers"),
    (["--lengths", "20"], "passkey: a prompt of 20 tokens cannot hold the intro, the needle and the question"),
])
def test_bad_passkey_flags_are_one_line(shared, capsys, args, expected):
    from cptkit.cli import main

    assert main(["passkey", "--model", str(shared / "models" / "stories260K"), "--trials", "1", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
