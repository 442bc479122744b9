"""`cpt vocab init` on stories260K with 22 added tokens: each init method gives the rows its formula
says, old rows and layers are untouched (old-token logits equal the original model's), tied stays
tied unless untied, and the folder loads and generates."""

import pytest
import torch

from conftest import STORIES, extended_model, hand_extended_tokenizer

NEW = list(range(512, 534))


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def pieces() -> list[list[int]]:
    from tokenizers import Tokenizer

    old = Tokenizer.from_file(str(STORIES / "tokenizer.json"))
    from conftest import VI_CHARS

    return [[t.id for t in old.model.tokenize(s)] for s in VI_CHARS + ["▁ng", "▁ngư"]]


def test_mean_rows_are_the_mean_of_the_pieces_rows(tmp_path, shared):
    path = extended_model(shared, tmp_path)
    old, new = load(STORIES).get_input_embeddings().weight, load(path).get_input_embeddings().weight
    split = pieces()
    assert split[-1] == [297, 428, 3 + 0xC6, 3 + 0xB0]  # ▁n g + the two UTF-8 bytes of ư (byte fallback), not a re-encoding
    for i, p in zip(NEW, split):
        torch.testing.assert_close(new[i], old[p].mean(0), rtol=0, atol=1e-6)
    assert torch.equal(new[:512], old)


def test_untied_output_rows_are_the_first_pieces_row(tmp_path, shared):
    path = extended_model(shared, tmp_path, untie=True)
    old, model = load(STORIES).get_input_embeddings().weight, load(path)
    inp, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert inp.data_ptr() != out.data_ptr() and not model.config.tie_word_embeddings
    for i, p in zip(NEW, pieces()):
        assert torch.equal(out[i], old[p[0]])
        torch.testing.assert_close(inp[i], old[p].mean(0), rtol=0, atol=1e-6)
    assert torch.equal(out[:512], old) and torch.equal(inp[:512], old)


def test_tied_stays_tied_and_old_token_logits_are_the_original(tmp_path, shared):
    from transformers import AutoTokenizer

    path = extended_model(shared, tmp_path)
    model, base = load(path), load(STORIES)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) == 534
    ids = tok("Once upon a time, there was a little dog.", return_tensors="pt").input_ids
    assert ids.max() < 512  # English text tokenizes with old ids only
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[..., :512], base(ids).logits, rtol=0, atol=0)
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8


@pytest.mark.parametrize("method", ["random", "multivariate"])
def test_random_inits_follow_the_old_rows_statistics(tmp_path, shared, method):
    from cptkit.vocab.init import init_rows

    old = load(STORIES).get_input_embeddings().weight.detach()
    gen = torch.Generator().manual_seed(0)
    rows = init_rows(old, [[0]] * 4000, method, gen, cov_scale=1.0 if method == "multivariate" else 1e-5)
    assert rows.shape == (4000, 64)
    # 4,000 draws: their mean and spread match the old rows' within sampling error
    torch.testing.assert_close(rows.mean(0), old.mean(0), rtol=0, atol=4 * old.std(0).max().item() / 4000 ** 0.5)
    torch.testing.assert_close(rows.std(0), old.std(0, correction=0), rtol=0.1, atol=0)
    if method == "multivariate":  # the full covariance, not only its diagonal
        cov = torch.cov(rows.double().T)
        ref = torch.cov(old.double().T, correction=0)
        assert torch.linalg.matrix_norm(cov - ref) / torch.linalg.matrix_norm(ref) < 0.15
    small = init_rows(old, [[0]] * 8, "multivariate", torch.Generator().manual_seed(0))  # Hewitt's 1e-5
    assert (small - old.mean(0)).abs().max() < 0.02 * old.std(0).max()
    again = init_rows(old, [[0]] * 4000, method, torch.Generator().manual_seed(0),
                      cov_scale=1.0 if method == "multivariate" else 1e-5)
    assert torch.equal(rows, again)


def test_bad_input_is_refused_and_leaves_nothing(tmp_path, shared):
    from cptkit.errors import CptError
    from cptkit.vocab.init import init_model

    tok = hand_extended_tokenizer(shared, tmp_path / "tok")
    with pytest.raises(CptError, match="--output-init: this model ties"):
        init_model(STORIES, tok, tmp_path / "a", output_init="first")
    with pytest.raises(CptError, match="not an extension of the model's tokenizer"):
        init_model(STORIES, shared / "tokenizers" / "gpt2", tmp_path / "b")
    with pytest.raises(CptError, match="adds no token"):
        init_model(STORIES, STORIES, tmp_path / "c")
    small = load(STORIES)  # a model whose embedding is smaller than its tokenizer
    small.resize_token_embeddings(300)
    small.save_pretrained(tmp_path / "small")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "small" / f).write_bytes((STORIES / f).read_bytes())
    with pytest.raises(CptError, match="its embedding has 300 rows but its tokenizer .* has 512 tokens"):
        init_model(tmp_path / "small", tok, tmp_path / "d")
    with pytest.raises(CptError, match="--model .*nope: folder not found"):
        init_model(tmp_path / "nope", tok, tmp_path / "e")
    assert not [p for p in tmp_path.iterdir() if p.name in ("a", "b", "c", "d", "e") or p.name.startswith(".tmp")]


def test_extend_init_and_plan_eeve_from_the_command_line(tmp_path, shared, capsys):
    """The README's path: cpt vocab extend -> cpt vocab init -> a recipe with strategy: eeve."""
    import json

    from cptkit.cli import main

    lines = open(shared / "corpora/vi/viwiki.jsonl", encoding="utf-8").readlines()[:120]
    (tmp_path / "vi.jsonl").write_text("".join(lines), encoding="utf-8")
    assert main(["vocab", "extend", "--base", str(STORIES), "--corpus", str(tmp_path / "vi.jsonl"), "--add", "200",
                 "--out", str(tmp_path / "tok")]) == 0
    assert main(["vocab", "init", "--model", str(STORIES), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "model")]) == 0
    assert "512 -> 712 tokens (712 embedding rows), input rows: mean, tied (one matrix)" in capsys.readouterr().out
    record = json.loads((tmp_path / "model" / "vocab_extension.json").read_text())
    assert (record["base_size"], record["size"], record["tied"]) == (512, 712, True)
    assert load(tmp_path / "model").get_input_embeddings().weight.shape == (712, 64)
    (tmp_path / "r.yaml").write_text(f"""
model: {{path: {tmp_path / 'model'}}}
seq_len: 64
micro_batch: 4
batch_tokens: 256
sources: {{vi: {{paths: [{tmp_path / 'vi.jsonl'}]}}}}
stages: [{{name: vi, tokens: 2048, mix: {{vi: 1}}, strategy: eeve}}]
""")
    assert main(["plan", str(tmp_path / "r.yaml")]) == 0
    out = capsys.readouterr().out
    for line in ("stage vi.eeve1-3: 2 steps", "trainable new_input_rows;", "stage vi.eeve4-5", "trainable input_embeddings;",
                 "stage vi.eeve6", "stage vi: 2 steps", "trainable layers, norms;"):
        assert line in out


@pytest.mark.parametrize("args,message", [
    (["--output-init", "first"], "--output-init: this model ties its input and output embeddings"),
    (["--cov-scale", "0"], "--cov-scale: 0.0; give a positive scale"),
])
def test_init_bad_flags_exit_2_on_one_line(tmp_path, shared, args, message):
    import subprocess
    import sys

    tok = hand_extended_tokenizer(shared, tmp_path / "tok")
    before = {f.name: f.read_bytes() for f in tok.iterdir()}
    p = subprocess.run([sys.executable, "-m", "cptkit.cli", "vocab", "init", "--model", str(STORIES), "--tokenizer",
                        str(tok), "--out", str(tmp_path / "out"), *args], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert not (tmp_path / "out").exists() and {f.name: f.read_bytes() for f in tok.iterdir()} == before


def test_pieces_spell_each_new_token_byte_level_and_added(tmp_path, shared):
    """GPT-2 extended by continued BPE (byte-level entries like `Ġngư`) and by `add_tokens` (raw
    text): each new token's pieces under the old tokenizer decode to exactly the new token."""
    from tokenizers import Tokenizer

    from cptkit.vocab.extend import extend, reader
    from cptkit.vocab.init import new_token_pieces

    lines = open(shared / "corpora/vi/viwiki.jsonl", encoding="utf-8").readlines()[:40]
    (tmp_path / "vi.jsonl").write_text("".join(lines), encoding="utf-8")
    gpt2 = shared / "tokenizers" / "gpt2"
    extend(gpt2, [tmp_path / "vi.jsonl"], 100, tmp_path / "bpe", reader())
    added = Tokenizer.from_file(str(tmp_path / "bpe" / "tokenizer.json"))
    added.add_tokens([" người Việt"])
    (tmp_path / "both").mkdir()
    added.save(str(tmp_path / "both" / "tokenizer.json"))
    old = Tokenizer.from_file(str(gpt2 / "tokenizer.json"))
    split = new_token_pieces(gpt2, tmp_path / "both")
    assert split.new_ids == list(range(50257, 50358))
    for i, p in zip(split.new_ids, split.pieces):
        assert old.decode(p) == added.decode([i]), (i, added.id_to_token(i))
        assert len(p) >= 2  # a new token is never one old token
    assert old.decode(split.pieces[-1]) == " người Việt" and len(split.pieces[-1]) > 3


def test_padding_rows_are_reproducible(tmp_path, shared):
    from cptkit.vocab.init import init_model

    tok = hand_extended_tokenizer(shared, tmp_path / "tok")
    a = init_model(STORIES, tok, tmp_path / "a", pad_to_multiple_of=64, seed=3)
    init_model(STORIES, tok, tmp_path / "b", pad_to_multiple_of=64, seed=3)
    assert a["embedding_rows"] == 576 and a["size"] == 534
    wa, wb = (load(tmp_path / n).get_input_embeddings().weight for n in "ab")
    assert torch.equal(wa, wb)
