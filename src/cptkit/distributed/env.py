"""The process group, from torchrun's environment: NCCL on CUDA, gloo on CPU.

`Dist` is what the rest of cpt knows about the other processes: its rank, the world size, and
collectives that are no-ops for one process (so a single process never creates a group and its
numbers stay byte for byte what they were)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import CptError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and draws progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def main_first(self, make):
        """`make()` on rank 0, then on the others: what rank 0 writes, they find and read."""
        if self.is_main:
            made = make()
            self.barrier()
            return made
        self.barrier()
        return make()

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def all(self, flag: bool) -> bool:
        """True on every rank when it is true on all."""
        return not self.agree(not flag)

    def new_gloo_group(self):
        """A gloo process group over all ranks, for collectives off the main thread (None: one process)."""
        return dist.new_group(backend="gloo") if self.world > 1 else None

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of a per-rank number over all ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t)

    def sum_tensor(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The element-wise sum of a per-rank tensor over all ranks (on the CPU)."""
        if self.world == 1:
            return t
        t = t.to(device)
        dist.all_reduce(t)
        return t.cpu()

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a per-rank number over all ranks."""
        return self.sum(value, device) / self.world

    def average_(self, t: torch.Tensor) -> None:
        """`t` becomes its mean over all ranks, in place (gloo has no AVG: a sum, then a division)."""
        if self.world > 1:
            dist.all_reduce(t)
            t.div_(self.world)

    def broadcast(self, obj):
        """Rank 0's value of a picklable object (rank 0's own, unpickled only from our peers)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def from_env(device: torch.device) -> Dist:
    """The `Dist` of this process; joins the process group when torchrun started several."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise CptError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (set by torchrun)") from None
    if world == 1:
        return Dist()
    if device.type == "cuda":
        check_gpus(local + 1, "LOCAL_RANK")
        if not dist.is_nccl_available():
            raise CptError("device: cuda with several ranks needs NCCL, which this torch build lacks; "
                           "install a CUDA build of torch")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        # CPU tensors (agreement flags, async checkpoint planning) go through gloo beside NCCL
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local)


def check_gpus(ranks: int, what: str) -> None:
    """`device: cuda` needs one GPU for each rank on a node."""
    have = torch.cuda.device_count()
    if ranks > have:
        raise CptError(f"device: cuda: {what} asks for {ranks} ranks on this node but it has {have} GPU(s); "
                       f"start at most {have} per node (--nproc-per-node), or set device: cpu")
