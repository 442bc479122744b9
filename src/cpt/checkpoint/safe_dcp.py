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


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        obj = _allowed(module, name)
        if obj is None:
            raise UnsafeCheckpoint(f"names `{module}.{name}`, which is not a DCP metadata type")
        return obj


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
    """`FileSystemReader` whose metadata comes from `read_metadata` above."""

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        metadata = read_metadata(self._get_metadata_path(kwargs.get("rank")))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


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
