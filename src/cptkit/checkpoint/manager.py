"""Checkpoints with torch.distributed.checkpoint (DCP), written atomically and self-describing.

`checkpoints/<name>/` holds `state/` (DCP: model, optimizer, RNG — resharded on load, so a later
run may resume on another number of processes) and `meta.json` (train counters, LR, schedule
phase, parent) and `manifest.json` (checksums, checkpoint/integrity.py). A checkpoint is written
under `.tmp-<name>` and renamed into place, so a crash never leaves a folder that looks complete;
one whose bytes changed since is detected on load, and loading never unpickles code
(checkpoint/safe_dcp.py). Weights that are not finite are never written.
"""

from __future__ import annotations

import errno
import json
import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from torch.distributed.tensor import DTensor

from ..distributed.env import Dist
from ..errors import CptError
from ..notify import warn
from ..fileio import fsync_dir, replace_dir, write_json_atomic
from .integrity import CorruptCheckpoint, verify, write_manifest
from .safe_dcp import SafeLoadPlanner, SafeReader

META = "meta.json"


@dataclass
class _Pending:
    """A checkpoint being written: where, what goes in its meta.json, and the writer's future."""
    name: str
    tmp: Path
    final: Path
    meta: dict
    need: int
    future: Future | None


@contextmanager
def _quiet():
    """DCP warns that it runs single-process when no process group exists; that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class CheckpointManager:
    """With several ranks every rank writes and reads its own shards (DCP); rank 0 alone creates
    the temporary folder, writes `meta.json` and the manifest, renames, and verifies checksums."""

    def __init__(self, root: Path, dist: Dist = Dist(), asynchronous: bool = False):
        self.root = Path(root)
        self.dist, self.asynchronous = dist, asynchronous
        self.last_good: Path | None = None  # the newest checkpoint this process wrote or resumed from
        self.pending: _Pending | None = None  # the write in flight
        # async writes coordinate over a gloo group of their own (made by every rank, in order)
        self._group = dist.new_gloo_group() if asynchronous else None
        self._sealer = ThreadPoolExecutor(1, thread_name_prefix="cpt-seal") if asynchronous and dist.is_main else None

    def path(self, name: str) -> Path:
        return self.root / name

    def save(self, name: str, model, optimizer, meta: dict) -> Path:
        """Write checkpoint `name`; return its final path. Asynchronous (`checkpoint.async`): the
        state is copied to CPU memory and written by a background thread; the checkpoint gets its
        meta, checksums and final name when the write is done (`poll`, `wait`). Until then it is a
        `.tmp-` folder, which is never loaded. One write is in flight at a time."""
        self.wait()
        check_finite(model, optimizer, f"checkpoint {name}", self.dist)
        final, tmp = self.path(name), self.root / f".tmp-{name}"
        main, need = self.dist.is_main, state_bytes(model, optimizer)
        meta = {"name": name, **meta, "optim_fresh": not optimizer.state}
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.check_space(model, optimizer, f"checkpoint {name}")
        with self._failing(name, tmp, need):
            if main:
                tmp.mkdir(parents=True)
            self.dist.barrier()
            future = self._write(tmp, model, optimizer, meta)
        self.pending = _Pending(name, tmp, final, meta, need, future)
        if future is None:
            self._complete()
        return final

    def poll(self) -> None:
        """Finish the write in flight if every rank has written its part (called after each step)."""
        p = self.pending
        if p is not None and self.dist.all(p.future.done()):
            self._complete()

    def wait(self) -> None:
        """Finish the write in flight, waiting for it."""
        if self.pending is not None:
            self._complete()

    @contextmanager
    def _failing(self, name: str, tmp: Path, need: int):
        """A failed write leaves no temporary folder and every earlier checkpoint; a full disk is one line."""
        try:
            yield
        except BaseException as e:
            self.pending = None
            if self.dist.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            cause = _os_error(e)
            # torch.save's zip writer reports a full disk as a RuntimeError: ask the disk itself
            full = cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT)
            if full or (isinstance(_inner(e), (OSError, RuntimeError)) and _free(self.root) < need):
                raise CptError(f"{self.root}: no space left to save checkpoint {name} (it needs about {_gb(need)}); "
                               "free space, then continue with --resume (earlier checkpoints are intact)") from None
            if cause is not None and cause is not e:
                raise cause from None  # DCP wraps OS errors; the CLI turns the plain one into a line
            raise

    def _complete(self) -> None:
        """Name the written checkpoint. A failure on any rank (a write, rank 0's seal or rename)
        is known to all before any goes on, so none waits forever on another."""
        p, main = self.pending, self.dist.is_main
        with self._failing(p.name, p.tmp, p.need):
            failed = None
            try:
                if p.future is not None:
                    p.future.result()  # the writer's (and, async, rank 0's sealer's) failure surfaces here
                elif main:
                    self._seal(p.tmp, p.meta)
                if main:
                    replace_dir(p.tmp, p.final)  # a stage end redone after a resume replaces the old copy whole
            except BaseException as e:
                failed = e
            if self.dist.agree(failed is not None):  # also the barrier: the folder is named for all
                raise failed or CptError(f"checkpoint {p.name}: another rank could not write it (its error is above)")
        self.pending, self.last_good = None, p.final

    @staticmethod
    def _seal(tmp: Path, meta: dict) -> None:
        """Rank 0, after DCP's coordinator wrote `.metadata` (so after every rank's shards)."""
        write_json_atomic(tmp / META, meta)
        fsync_dir(tmp / "state")
        write_manifest(tmp)  # last: its presence says every file before it is complete

    def shutdown(self) -> None:
        """Stop the thread that seals asynchronous saves (after `wait`)."""
        if self._sealer is not None:
            self._sealer.shutdown(wait=True)
            self._sealer = None

    def clear_unsealed(self) -> None:
        """Remove the `.tmp-` folders of writes that never finished (a run killed mid-save)."""
        for tmp in self.root.glob(".tmp-*") if self.root.is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)

    def check_space(self, model, optimizer, what: str = "a checkpoint") -> int:
        """Warn when the disk has less room than a save needs (about); return that size."""
        need = state_bytes(model, optimizer)
        free = _free(self.root)
        if free < need:
            warn(f"{what} needs about {_gb(need)}, but {self.root} has {_gb(free)} free; free space before it is written")
        return need

    def _write(self, tmp: Path, model, optimizer, meta: dict) -> Future | None:
        """Every rank's shards into `tmp/state` (DCP): written now, or (asynchronous)
        copied to CPU memory now and written by a thread, over a gloo group of its own so that its
        collectives never interleave with training's."""
        # get_state_dict materialises a fresh optimizer's state with a zero-LR step, which would
        # make the next real AdamW step use step-2 bias correction; undo it after saving.
        fresh = not optimizer.state
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state, where = {"model": model_sd, "optim": optim_sd, "rng": torch.get_rng_state()}, str(tmp / "state")
        try:
            with _quiet():
                if not self.asynchronous:
                    dcp.save(state, checkpoint_id=where)
                    return None
                future = dcp.async_save(state, checkpoint_id=where, process_group=self._group)
                future = getattr(future, "upload_completion", future)  # AsyncSaveResponse in newer torch
                if not self.dist.is_main:
                    return future
                # rank 0 seals in a thread too: hashing a large checkpoint would otherwise stall
                # training (and every rank waiting for rank 0) at the step that finds it written
                return self._sealer.submit(lambda: (future.result(), self._seal(tmp, meta)))
        finally:
            if fresh:
                optimizer.state.clear()

    @staticmethod
    def read_meta(path: Path) -> dict:
        try:
            meta = json.loads((Path(path) / META).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CptError(f"{path}: not a cpt checkpoint ({e})") from None
        if not isinstance(meta, dict):
            raise CptError(f"{path / META}: not a cpt checkpoint (not a JSON object)")
        return meta

    @staticmethod
    def load(path: Path, model, optimizer, rng: bool = True, verified: bool = False, dist: Dist = Dist()) -> dict:
        """Load model and optimizer (and the RNG) in place from a checkpoint folder; return its meta.
        The optimizer's state becomes exactly the saved one: moments of frozen parameters included,
        none for parameters that had none (they had never trained). The files are verified against
        their checksums first, unless the caller just did (`verified`)."""
        if not verified:  # on rank 0, once; every rank hears the verdict
            problem = None
            if dist.is_main:
                try:
                    verify(path)
                except CorruptCheckpoint as e:
                    problem = str(e)
            problem = dist.broadcast(problem)
            if problem:
                raise CorruptCheckpoint(problem)
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
                reader = SafeReader(str(Path(path) / "state"))
                saved = reader.read_metadata().state_dict_metadata  # first: refuses a hostile pickle
                dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(allow_partial_load=True))
            missing = [k for k in state["model"] if f"model.{k}" not in saved]
            if missing:
                raise CptError(f"{path}: cannot load checkpoint into this model (no `{missing[0]}` in it)")
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        except (Exception, CheckpointException) as e:  # DCP's exception is a BaseException
            if isinstance(e, CptError):
                raise
            inner = _inner(e)
            if isinstance(inner, CptError):  # raised inside DCP's reader or planner
                raise type(inner)(f"{path}: {inner}") from None
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise CptError(f"{path}: cannot load checkpoint into this model ({last})") from None
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
        params = dict(model.named_parameters())
        for name, param in params.items():
            if f"optim.state.{name}.step" not in saved:
                optimizer.state.pop(param, None)
        if meta.get("optim_fresh"):  # saved before the optimizer's first step: keep it fresh
            optimizer.state.clear()
        if rng:
            torch.set_rng_state(state["rng"])
        return meta

    def candidates(self) -> list[Path]:
        """Checkpoint folders with readable metadata, newest first (by save sequence number)."""
        found = []
        for d in self.root.glob("*") if self.root.is_dir() else []:
            if d.name.startswith(".") or not (d / META).is_file():
                continue
            try:
                seq = self.read_meta(d).get("seq", -1)
            except CptError:  # unreadable metadata: not a checkpoint to resume from
                continue
            found.append((seq if isinstance(seq, int) else -1, d))
        return [d for _, d in sorted(found, key=lambda t: t[0], reverse=True)]

    def latest(self) -> Path | None:
        """The most recently saved checkpoint, intact or not."""
        found = self.candidates()
        return found[0] if found else None

    def newest_intact(self) -> Path | None:
        """The newest checkpoint whose files match their checksums; each one skipped is named in a
        one-line warning (a resume then redoes the steps since the one it uses). Rank 0 decides."""
        found = self._newest_intact() if self.dist.is_main else None
        found = self.dist.broadcast(None if found is None else str(found))
        return None if found is None else Path(found)

    def _newest_intact(self) -> Path | None:
        for d in self.candidates():
            try:
                verify(d)
                return d
            except CorruptCheckpoint as e:
                warn(f"skipping checkpoint: {e}")
        return None


def check_finite(model, optimizer, what: str, dist: Dist = Dist()) -> None:
    """Refuse to write NaN or Inf weights or moments: a checkpoint (or export) is a point to come
    back to, and one that holds NaN poisons every run started from it. Each rank checks its own
    shards; all ranks agree on the verdict (one refusing alone would leave the others waiting)."""
    tensors = [("weights", p) for p in model.parameters()]
    states = optimizer.state.values() if optimizer is not None else []
    tensors += [("optimizer state", t) for st in states for t in st.values() if torch.is_tensor(t) and t.is_floating_point()]
    bad = None
    for kind, t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        if local.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(local.detach()))).all()):  # NaN propagates
            bad = kind
            break
    if dist.agree(bad is not None):
        raise CptError(f"{what}: the model's {bad or 'weights'} hold NaN or Inf; refusing to write them "
                       "(lower the LR, or resume from an earlier checkpoint)")


def state_bytes(model, optimizer) -> int:
    """What a save writes, about: weights plus optimizer moments (a full copy per moment)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    moments = sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t))
    return params + max(moments, 2 * trained)  # a fresh optimizer's moments appear at its first step


def _free(path: Path) -> int:
    path = next((p for p in [Path(path), *Path(path).parents] if p.exists()), Path(path))  # root may not exist yet
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _inner(e: BaseException) -> BaseException:
    """The exception DCP wrapped in a `CheckpointException` (a failure per rank), else `e`."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        if isinstance(first, tuple) and first:  # (exception, traceback) per rank
            first = first[0]
        if isinstance(first, BaseException):
            return _inner(first)
    return e


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`, looking through DCP's wrapping and exception chains."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e = _inner(e)
        if isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None
