"""A merge stage's start (recipe: `kind: merge`, merging.py): its model is the weighted average
of the checkpoints it names, each loaded as `init:` loads one, averaged shard by shard."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint.safe_dcp import SafeReader
from ..config import read_json_object
from ..distributed.fsdp import load_full_state
from ..errors import CptError
from ..merging import merge_weights
from ..model.load import build_model
from ..model.merge import average_into
from .relora import load_plain
from .step import build_optimizer


def checkpoint_path(run, ref: str) -> Path:
    """A checkpoint of this run by name (`a@final`, `step-0000040`), else a folder."""
    return Path(ref) if "/" in ref or "\\" in ref else run.checkpoints.path(ref)


def load_point(run, ref: str) -> None:
    """Load one checkpoint's weights into the run's model: the base model, or a saved one."""
    if ref == "base":
        load_full_state(run.model, build_model(run.recipe, run.tokenizer).state_dict(), run.dist)
        return
    run.checkpoints.wait()  # it may be the save still being written
    load_plain(run, checkpoint_path(run, ref))


def merge_checkpoints(run, stage) -> None:
    """The stage's model, then fresh optimizer moments (averaged moments describe no model)."""
    st = stage.cfg
    weights = merge_weights(st)
    average_into(run.model, lambda k: load_point(run, st.checkpoints[k]), weights)
    run.optimizer = build_optimizer(run.model, run.recipe.optimizer)
    run.metrics.write({"kind": "merge", "stage": st.name, "method": st.method, "checkpoints": st.checkpoints,
                       "weights": weights, "step": run.state.global_step, "tokens": run.state.tokens})


def check_merges(recipe, model, tokenizer: str) -> None:
    """Checkpoint folders that stages name (`init:`, a merge's `checkpoints:`) were trained with
    this run's tokenizer (`tokenizer`: its fingerprint, recorded in every checkpoint's meta), and
    a merge's hold this model's tensors, shape for shape (up to the first up-scaling): checked
    before any training (a run's own checkpoints have both by construction)."""
    want = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    base = recipe.model.path or "model.init"
    for i, st in enumerate(recipe.stages):
        if any(x.upscale is not None for x in recipe.stages[:i + 1]):
            want = {}  # deeper than the model built here: its load says what does not fit
        if st.init_path is not None:
            _same_tokenizer(st.init_path, tokenizer, f"stages[{i}].init", recipe.tokenizer_path)
        for k, ref in enumerate(st.checkpoints or []):
            if "/" not in ref and "\\" not in ref:
                continue
            _same_tokenizer(Path(ref), tokenizer, f"stages[{i}].checkpoints[{k}]", recipe.tokenizer_path)
            try:
                saved = SafeReader(str(Path(ref) / "state")).read_metadata().state_dict_metadata
            except Exception as e:  # an unreadable .metadata: DCP raises many types
                raise CptError(f"stages[{i}].checkpoints[{k}]: cannot read {ref}/state ({type(e).__name__}); "
                               "not a cpt checkpoint") from None
            for key, shape in want.items():
                size = getattr(saved.get(key), "size", None)
                if size is None or tuple(size) != shape:
                    got = "no such tensor" if size is None else list(size)
                    raise CptError(f"stages[{i}].checkpoints[{k}]: {ref} has {key[6:]} {got}, the model ({base}) "
                                   f"{list(shape)}; merge checkpoints of one architecture and tokenizer")


def _same_tokenizer(folder: Path, ours: str, where: str, path) -> None:
    """A checkpoint records the fingerprint of the tokenizer it was trained with (older ones do not)."""
    theirs = read_json_object(folder / "meta.json").get("tokenizer")
    if isinstance(theirs, str) and theirs != ours:
        raise CptError(f"{where}: {folder} was trained with tokenizer {theirs[:12]}, this run's ({path}) is "
                       f"{ours[:12]}; its token ids mean other text: start from or merge checkpoints of this tokenizer")
