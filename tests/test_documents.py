"""Document masking (train/inputs.py): position ids restart after each EOS, no token attends
across a document boundary (a packed document's logits equal the document's alone), a stage's
loss is the per-document loss, and a model that does not honour it is refused in one line."""

import pytest
import torch

from conftest import small_recipe


@pytest.fixture(scope="module")
def model(shared):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K")
    m.config.use_cache = False
    return m.eval()


def test_packed_documents_see_only_themselves(model):
    from cptkit.train.inputs import Documents

    docs = [torch.tensor([5, 9, 7, 300, 2]), torch.tensor([11, 4, 2]), torch.tensor([6, 8, 3, 41, 77])]
    packed = torch.cat(docs)[None]
    inputs = Documents(eos=2)(packed)
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4]]
    assert inputs["labels"][0, [5, 8]].tolist() == [-100, -100]  # a document's first token: not from the last
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits[0]
        at = 0
        for d in docs:
            alone = model(input_ids=d[None], use_cache=False).logits[0]
            assert torch.allclose(logits[at:at + len(d)], alone, atol=1e-5), at
            at += len(d)


def test_a_masked_stage_trains_on_per_document_loss(shared, tmp_path):
    """The first step's loss is the mean over micro-batches of the loss of each document on its own."""
    import json

    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from cptkit.build import build_run
    from cptkit.train import loop
    from cptkit.train.stages import batch, plan_stage

    stages = "  - {name: a, tokens: 256, mix: {math: 1.0}, document_masking: true}\n"  # short documents
    run = build_run(small_recipe(tmp_path, shared, stages, "validation: {tokens_per_source: 256}"), "docs",
                    tmp_path / "out", resume=False)
    tokens = batch(run, plan_stage(run, 0), 0)
    loop.train(run)
    [step] = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "train"]
    base = AutoModelForCausalLM.from_pretrained(shared / "models" / "stories260K")
    eos = run.tokenizer.eos_token_id
    means = []
    with torch.no_grad():
        for mb in tokens.reshape(-1, 4, tokens.shape[1]):
            total, count = 0.0, 0
            for row in mb:
                cut = [0] + [i + 1 for i, t in enumerate(row.tolist()) if t == eos and i + 1 < len(row)] + [len(row)]
                for a, b in zip(cut, cut[1:]):
                    doc = row[a:b][None]
                    if doc.shape[1] > 1:
                        logits = base(input_ids=doc, use_cache=False).logits[0, :-1]
                        total += float(F.cross_entropy(logits, doc[0, 1:], reduction="sum"))
                        count += doc.shape[1] - 1
            means.append(total / count)
    assert any(t == eos for t in tokens[:, :-1].flatten().tolist())  # the batch does pack several documents
    assert step["loss"] == pytest.approx(sum(means) / len(means), rel=1e-5)


def test_attention_that_crosses_documents_is_refused(shared, tmp_path, capsys, monkeypatch):
    import transformers.masking_utils as masking

    from cptkit.cli import main

    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)  # as older transformers
    small_recipe(tmp_path, shared, "  - {name: a, tokens: 256, mix: {stories: 1.0}, document_masking: true}\n")
    recipe = tmp_path / "small.yaml"  # what small_recipe wrote (and found valid)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "stages[0].document_masking: the model's attention (sdpa) lets tokens attend across documents" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
