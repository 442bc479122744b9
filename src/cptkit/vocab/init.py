"""`cpt vocab init`: give a model the rows of an extended tokenizer's new tokens.

The embedding matrices grow to the new vocabulary and each new row is initialised from the old
ones (Kim et al. 2024, EEVE; Hewitt 2021):
- `mean`: the mean of the rows of the pieces the *old* tokenizer splits the token into. The
  token's own string is split by the old BPE model (`model.tokenize`), never decoded and
  re-encoded: re-encoding a byte-level string runs the pre-tokenizer and maps its bytes twice.
- `first`: the row of the first piece (EEVE's output init: the new token starts as likely as the
  piece that began it).
- `random`: normal with the old rows' per-dimension mean and standard deviation.
- `multivariate`: normal with the old rows' mean and covariance scaled by `cov_scale` (Hewitt's
  1e-5: close to the mean, so no new token out-scores the old ones at the start).

Tied input/output embeddings (stories260K, SmolLM2) are one matrix: the new rows get the input
init, and EEVE's input and output stages collapse into one (`strategy: eeve` knows). `untie=True`
gives the output its own matrix first (a copy), so both inits and all seven stages apply.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CptError
from ..fileio import replace_dir, write_json_atomic
from ..model.load import quiet_transformers
from ..recipe import VOCAB_EXTENSION
from .files import read_tokenizer

MAX_PAD = 65_536  # --pad-to-multiple-of at most: padding is for kernel-friendly shapes, not room to grow


@dataclass(frozen=True)
class Pieces:
    """For each new token (in id order) the ids of its pieces under the old tokenizer."""

    new_ids: list[int]
    pieces: list[list[int]]


def new_token_pieces(old_dir: Path, new_dir: Path) -> Pieces:
    """Check that the new tokenizer extends the old one (every old id keeps its token) and split
    each added token with the old BPE model."""
    (_, old), (_, new) = read_tokenizer(old_dir, "--model"), read_tokenizer(new_dir, "--tokenizer")
    old_vocab, new_vocab = old.get_vocab(with_added_tokens=True), new.get_vocab(with_added_tokens=True)
    moved = [t for t, i in old_vocab.items() if new_vocab.get(t) != i]
    if moved:
        raise CptError(f"--tokenizer {new_dir}: not an extension of the model's tokenizer ({old_dir}): token "
                       f"{moved[0]!r} has another id; extend the model's own tokenizer with cpt vocab extend")
    added = sorted(i for t, i in new_vocab.items() if t not in old_vocab)
    if not added:
        raise CptError(f"--tokenizer {new_dir}: adds no token to {old_dir}; nothing to initialise")
    if added != list(range(len(old_vocab), len(old_vocab) + len(added))):
        raise CptError(f"--tokenizer {new_dir}: the added ids are not {len(old_vocab)}, {len(old_vocab) + 1}, ... "
                       "(one after the other, after the old ones); extend the tokenizer with cpt vocab extend")
    strings = {i: t for t, i in new_vocab.items()}
    in_model = new.get_vocab(with_added_tokens=False)
    # A BPE entry is in the model's own alphabet (byte-level `Ġ...`, SentencePiece `▁...`): split it
    # with the old BPE model. An added token (`add_tokens`) holds raw text: encode it the old way.
    pieces = [[p.id for p in old.model.tokenize(strings[i])] if strings[i] in in_model
              else old.encode(strings[i], add_special_tokens=False).ids for i in added]
    empty = [strings[i] for i, p in zip(added, pieces) if not p]
    if empty:
        raise CptError(f"--tokenizer {new_dir}: the old tokenizer splits the new token {empty[0]!r} into nothing")
    return Pieces(added, pieces)


def init_rows(old: torch.Tensor, pieces: list[list[int]], method: str, generator: torch.Generator,
              cov_scale: float = 1e-5) -> torch.Tensor:
    """New rows (len(pieces) x d) from the old rows `old` (V_old x d), in float64 for the mean."""
    if method in ("mean", "first"):
        rows = [old[p].double().mean(0) if method == "mean" else old[p[0]].double() for p in pieces]
        return torch.stack(rows).to(old.dtype)
    mu = old.double().mean(0)
    z = torch.randn(len(pieces), old.shape[1], generator=generator, dtype=torch.float64)
    if method == "random":
        return (mu + old.double().std(0) * z).to(old.dtype)
    centred = old.double() - mu
    cov = cov_scale * centred.T @ centred / old.shape[0]
    # a covariance is PSD but may be singular (d > V, or collinear rows): jitter its diagonal
    chol = torch.linalg.cholesky(cov + 1e-12 * torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean())
    return (mu + z @ chol.T).to(old.dtype)


def init_model(model_dir: Path, tokenizer_dir: Path, out: Path, input_init: str = "mean",
               output_init: str | None = None, untie: bool = False, seed: int = 0, cov_scale: float = 1e-5,
               pad_to_multiple_of: int | None = None) -> dict:
    """Write `out`: the model resized to the new tokenizer with initialised rows, the tokenizer, and
    vocab_extension.json (base_size, size, how the rows were made). Returns that record."""
    from transformers import AutoModelForCausalLM

    model_dir, tokenizer_dir, out = Path(model_dir), Path(tokenizer_dir), Path(out)
    if pad_to_multiple_of is not None and not 1 <= pad_to_multiple_of <= MAX_PAD:
        raise CptError(f"--pad-to-multiple-of: {pad_to_multiple_of}; give 1 to {MAX_PAD:,} (kernels like 64 or 128)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CptError(f"--out {out}: exists and is not empty; choose a new folder")
    for flag, folder in (("--model", model_dir), ("--tokenizer", tokenizer_dir)):
        if not folder.is_dir():
            raise CptError(f"{flag} {folder}: folder not found")
    old_dir = _old_tokenizer_dir(model_dir, tokenizer_dir)
    split = new_token_pieces(old_dir, tokenizer_dir)
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except Exception as e:  # transformers raises many types for a bad folder
        raise CptError(f"--model {model_dir}: cannot load ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    base_size = split.new_ids[0]
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < base_size:
        raise CptError(f"--model {model_dir}: its embedding has {rows} rows but its tokenizer ({old_dir}) has "
                       f"{base_size} tokens; use the tokenizer the model was trained with")
    tied = model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if tied and not untie and output_init is not None:
        raise CptError("--output-init: this model ties its input and output embeddings (one matrix, initialised by "
                       "--input-init); pass --untie to give the output its own rows")
    if untie and not tied:
        raise CptError("--untie: the model's input and output embeddings are already separate")
    output_init = None if tied and not untie else (output_init or "first")

    size = split.new_ids[-1] + 1
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        old_in = model.get_input_embeddings().weight[:base_size].clone()
        old_out = None if output_init is None else model.get_output_embeddings().weight[:base_size].clone()
        with torch.random.fork_rng():  # the rows HF adds (new and padding) are drawn from the global RNG
            torch.manual_seed(seed)
            model.resize_token_embeddings(max(size, rows), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
        if untie:
            _untie(model)
        ids = torch.tensor(split.new_ids)
        model.get_input_embeddings().weight[ids] = init_rows(old_in, split.pieces, input_init, gen, cov_scale)
        if output_init is not None:
            model.get_output_embeddings().weight[ids] = init_rows(old_out, split.pieces, output_init, gen, cov_scale)
    record = {**_tokenizer_record(tokenizer_dir), "base_size": base_size, "size": size,
              "new_ids": [split.new_ids[0], split.new_ids[-1]],
              "embedding_rows": model.get_input_embeddings().weight.shape[0], "model": str(model_dir),
              "tokenizer": str(tokenizer_dir), "tied": tied and not untie, "untied": untie,
              "input_init": input_init, "output_init": output_init, "seed": seed,
              "cov_scale": cov_scale if "multivariate" in (input_init, output_init) else None,
              "pieces_per_token": sum(map(len, split.pieces)) / len(split.pieces)}
    _write(model, tokenizer_dir, out, record)
    return record


def _old_tokenizer_dir(model_dir: Path, tokenizer_dir: Path) -> Path:
    """The tokenizer the model was trained with: its own folder's, else the extension's base."""
    if (model_dir / "tokenizer.json").is_file():
        return model_dir
    base = _tokenizer_record(tokenizer_dir).get("base")
    if base and (Path(base) / "tokenizer.json").is_file():
        return Path(base)
    raise CptError(f"--model {model_dir}: no tokenizer.json beside the model, and {tokenizer_dir / VOCAB_EXTENSION} "
                   "names no base tokenizer; copy the model's tokenizer files into its folder")


def _tokenizer_record(tokenizer_dir: Path) -> dict:
    path = tokenizer_dir / VOCAB_EXTENSION
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as e:
        raise CptError(f"{path}: not JSON ({e}); remove it or extend the tokenizer again") from None


def _untie(model) -> None:
    """A separate output matrix, a copy of the shared one; the config says so, or loading re-ties."""
    weight = model.get_input_embeddings().weight
    model.get_output_embeddings().weight = torch.nn.Parameter(weight.detach().clone())
    model.config.tie_word_embeddings = False


def _write(model, tokenizer_dir: Path, out: Path, record: dict) -> None:
    """Model, tokenizer files and record into a sibling folder, renamed into place when complete."""
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in tokenizer_dir.iterdir():
            if f.is_file() and f.name != VOCAB_EXTENSION and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        write_json_atomic(tmp / VOCAB_EXTENSION, record)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failure leaves no half-written folder
