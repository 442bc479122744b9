"""Reading a DCP checkpoint without running code from it.

DCP stores `state/.metadata` as a pickle, and `DefaultLoadPlanner.load_bytes` unpickles non-tensor
items with `torch.load(weights_only=False)`: a checkpoint folder from elsewhere (an `init:` path, a
run folder someone else can write) could execute anything on load. Here the metadata goes through
an unpickler that can only build DCP's own metadata types, and byte items through torch's
weights-only unpickler (numbers, strings, containers, tensors). Everything else is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.metadata import StorageMeta

from ..errors import CptError


class UnsafeCheckpoint(CptError):
    """A checkpoint whose metadata names something other than DCP's own types."""


def _allowed(module: str, name: str):
    """The classes and functions a DCP `.metadata` pickle may name, and nothing else."""
    if module == dcp_metadata.__name__ and not name.startswith("__"):
        obj = getattr(dcp_metadata, name, None)
        return obj if isinstance(obj, type) else None  # its dataclasses and enums, no functions
    if (module, name) == ("torch.distributed.checkpoint.filesystem", "_StorageInfo"):
        from torch.distributed.checkpoint.filesystem import _StorageInfo

        return _StorageInfo
    if module == "torch":
        obj = getattr(torch, name, None)
        return obj if name == "Size" or isinstance(obj, (torch.dtype, torch.memory_format)) else None
    if (module, name) == ("torch.serialization", "_get_layout"):  # a lookup of torch.strided & co by name
        from torch.serialization import _get_layout

        return _get_layout
    if module == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
        import pathlib

        return getattr(pathlib, name)  # DCP records its checkpoint_id; building a path runs nothing
    if (module, name) == ("collections", "OrderedDict"):
        import collections

        return collections.OrderedDict
    return None


def _instance_types() -> tuple[type, ...]:
    """The classes whose instances a metadata pickle may fill in (BUILD): DCP's records only."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    records = [obj for obj in vars(dcp_metadata).values() if isinstance(obj, type) and obj.__module__ == dcp_metadata.__name__]
    return (*records, _StorageInfo)


class _MetadataUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, so that BUILD can be checked too: restricting the names a pickle
    may use is not enough, since BUILD sets attributes on whatever it is given, an allowed class or
    function included (`PosixPath.__fspath__ = ...`), for the rest of the process."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        obj = _allowed(module, name)
        if obj is None:
            raise UnsafeCheckpoint(f"names `{module}.{name}`, which is not a DCP metadata type")
        return obj

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, type) or not isinstance(inst, _instance_types()):
            raise UnsafeCheckpoint(f"sets attributes of `{getattr(inst, '__name__', type(inst).__name__)}`, "
                                   "which is not a DCP metadata record")
        if getattr(type(inst), "__setstate__", None) is getattr(object, "__setstate__", None):  # plain records: fields only
            fields = state[0] if isinstance(state, tuple) and len(state) == 2 and state[1] is None else state
            if not isinstance(fields, dict) or any(not isinstance(k, str) or k.startswith("__") for k in fields):
                raise UnsafeCheckpoint(f"sets unexpected attributes of `{type(inst).__name__}`")
        super().load_build()  # a record with its own __setstate__ (DCP's code) reads its own state

    dispatch[pickle.BUILD[0]] = load_build


def read_metadata(path) -> dcp_metadata.Metadata:
    """`state/.metadata` through the restricted unpickler; a one-line `CptError` otherwise."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except UnsafeCheckpoint as e:
        raise UnsafeCheckpoint(f"{path}: refused: the checkpoint's metadata {e}; it may run code, do not load it") from None
    except OSError:
        raise
    except Exception as e:  # truncated or garbled: pickle raises many types
        raise CptError(f"{path}: unreadable checkpoint metadata ({type(e).__name__})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise CptError(f"{path}: not DCP checkpoint metadata")
    return metadata


class SafeReader(FileSystemReader):
    """`FileSystemReader` whose metadata comes from `read_metadata` above, and whose tensor
    locations must lie inside the checkpoint's own (verified) files: a plain file name of the
    `state/` folder, and a byte range within it."""

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        # read once per reader: the pure-Python unpickler is slow, and DCP asks again in `load`
        key = kwargs.get("rank")
        cache = self.__dict__.setdefault("_cpt_metadata", {})
        if key not in cache:
            cache[key] = read_metadata(self._get_metadata_path(key))
        metadata = cache[key]
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata, is_coordinator: bool, *args, **kwargs) -> None:
        from torch.distributed.checkpoint.filesystem import _StorageInfo

        folder = Path(self.path)
        sizes: dict[str, int] = {}
        for info in (metadata.storage_data or {}).values():
            name = getattr(info, "relative_path", None)
            ok = isinstance(info, _StorageInfo) and isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")
            if ok and name not in sizes:
                path = folder / name
                ok = path.is_file() and not path.is_symlink()
                sizes[name] = path.stat().st_size if ok else -1
            offset, length = getattr(info, "offset", None), getattr(info, "length", None)
            if not (ok and all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, length))
                    and 0 <= offset and 0 <= length and offset + length <= sizes[name]):
                raise UnsafeCheckpoint(f"{folder}: refused: the metadata points outside the checkpoint's files "
                                       f"({name!r}, offset {offset!r}, length {length!r})")
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)


class SafeLoadPlanner(DefaultLoadPlanner):
    """Byte items (optimizer hyperparameters, counters) through torch's weights-only unpickler."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpoint(f"refused item `{read_item.dest_index.fqn}`: {str(e).splitlines()[0]}") from None
        # the parent places the object (its private helpers differ between torch versions); it
        # unpickles with weights_only=False, so it gets our own re-serialisation of a checked object
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)
