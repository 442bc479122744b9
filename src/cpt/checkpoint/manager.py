"""Checkpoints with torch.distributed.checkpoint (DCP), written atomically and self-describing.

`checkpoints/<name>/` holds `state/` (DCP: model, optimizer, RNG — resharded on load, so a later
run may resume on another number of processes) and `meta.json` (train counters, LR, schedule
phase, parent). A checkpoint is written under `.tmp-<name>` and renamed into place, so a crash
never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..errors import CptError
from ..fileio import fsync_dir, replace_dir, write_json_atomic

META = "meta.json"


@contextmanager
def _quiet():
    """DCP warns that it runs single-process when no process group exists; that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class CheckpointManager:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def save(self, name: str, model, optimizer, meta: dict) -> Path:
        final = self.path(name)
        tmp = self.root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # get_state_dict materialises a fresh optimizer's state with a zero-LR step, which would
        # make the next real AdamW step use step-2 bias correction; undo it after saving.
        fresh = not optimizer.state
        model_sd, optim_sd = get_state_dict(model, optimizer)
        try:
            with _quiet():
                dcp.save({"model": model_sd, "optim": optim_sd, "rng": torch.get_rng_state()},
                         checkpoint_id=str(tmp / "state"))
        finally:
            if fresh:
                optimizer.state.clear()
        write_json_atomic(tmp / META, {"name": name, "optim_fresh": fresh, **meta})
        fsync_dir(tmp / "state")
        replace_dir(tmp, final)  # a stage end redone after a resume replaces the old copy whole
        return final

    @staticmethod
    def read_meta(path: Path) -> dict:
        try:
            return json.loads((Path(path) / META).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CptError(f"{path}: not a cpt checkpoint ({e})") from None

    @staticmethod
    def load(path: Path, model, optimizer, rng: bool = True) -> dict:
        """Load model and optimizer (and the RNG) in place from a checkpoint folder; return its meta.
        The optimizer's state becomes exactly the saved one: moments of frozen parameters included,
        none for parameters that had none (they had never trained)."""
        meta = CheckpointManager.read_meta(path)
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():  # ask DCP for every parameter's state; keep what the file has
            p.requires_grad_(True)
        optimizer.state.clear()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        if rng:
            state["rng"] = torch.get_rng_state()
        try:
            with _quiet():
                dcp.load(state, checkpoint_id=str(Path(path) / "state"),
                         planner=DefaultLoadPlanner(allow_partial_load=True))
                saved = dcp.FileSystemReader(str(Path(path) / "state")).read_metadata().state_dict_metadata
            missing = [k for k in state["model"] if f"model.{k}" not in saved]
            if missing:
                raise CptError(f"{path}: cannot load checkpoint into this model (no `{missing[0]}` in it)")
        except (Exception, CheckpointException) as e:  # DCP's exception is a BaseException
            if isinstance(e, CptError):
                raise
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise CptError(f"{path}: cannot load checkpoint into this model ({last})") from None
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        params = dict(model.named_parameters())
        for name, param in params.items():
            if f"optim.state.{name}.step" not in saved:
                optimizer.state.pop(param, None)
        if meta.get("optim_fresh"):  # saved before the optimizer's first step: keep it fresh
            optimizer.state.clear()
        if rng:
            torch.set_rng_state(state["rng"])
        return meta

    def latest(self) -> Path | None:
        """The most recently saved complete checkpoint (by save sequence number)."""
        best, best_seq = None, -1
        for d in self.root.glob("*"):
            if d.name.startswith(".") or not (d / META).is_file():
                continue
            try:
                seq = self.read_meta(d).get("seq", -1)
            except CptError:  # unreadable metadata: not a checkpoint to resume from
                continue
            if seq > best_seq:
                best, best_seq = d, seq
        return best
