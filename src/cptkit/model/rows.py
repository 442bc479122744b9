"""Training only the new rows of an embedding matrix (`new_input_rows`, `new_output_rows`).

The matrix W stays frozen (`requires_grad = False`: no gradient, no weight decay, no moments) and
the rows being trained live in their own Parameter R (k x d), registered on the embedding module
as `cpt_rows` so that checkpoints and the optimizer see it under a stable name. Forward hooks put
R in place of W's rows: the input embedding of a new id is R's row; the logits of new ids are
h . R^T. AdamW therefore holds moments for the k rows only, never for the V x d matrix (EEVE's
gradient-mask hook would keep state for all of W and let weight decay shrink the frozen rows).
After every optimizer step R is copied into W, so W always holds the current values: an
evaluation, a checkpoint or an export reads the model as it is. At the stage's end R is folded
into W and removed.

Tied input/output embeddings are one matrix: one R serves both roles, so its gradient is the sum
of the input and output gradients, as for the tied matrix itself.

Under FSDP2, W is a DTensor sharded by rows. R is created after sharding, so FSDP2 does not manage
it: every rank holds all of R (k rows are small), train_step averages its gradient over ranks as
FSDP2 averages its own, and each rank copies into its own shard of W the rows that fall in it.
Nothing else of W is ever written: the frozen rows stay bit-identical at any world size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

ROWS_PARAM = "cpt_rows"


class TrainableRows:
    def __init__(self, model: torch.nn.Module, weight: torch.nn.Parameter, ids: list[int],
                 optimizer: torch.optim.Optimizer):
        self.weight, self.optimizer = weight, optimizer
        self.ids = torch.tensor(ids, dtype=torch.long, device=weight.device)
        shard, first = local_rows(weight)
        mine = (self.ids >= first) & (self.ids < first + shard.shape[0])
        self.mine, self.mine_at = mine.nonzero().squeeze(1), self.ids[mine] - first  # R's rows in this shard
        self.rows = torch.nn.Parameter(_gather_rows(shard, self.ids, self.mine, self.mine_at))
        # position of each id in R, -1 for the rows that stay frozen
        self.lookup = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
        self.lookup[self.ids] = torch.arange(len(ids), device=weight.device)
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        self.owner = inp if inp.weight is weight else out
        self.owner.register_parameter(ROWS_PARAM, self.rows)
        self.handles = []
        if inp.weight is weight:
            self.handles.append(inp.register_forward_hook(self._embed))
        if out is not None and out.weight is weight:
            self.handles.append(out.register_forward_hook(self._logits))
        # R trains as W would: in W's weight-decay group
        decay = next(g["weight_decay"] for g in optimizer.param_groups if any(p is weight for p in g["params"]))
        optimizer.add_param_group({"params": [self.rows], "weight_decay": decay})
        self.handles.append(optimizer.register_step_post_hook(lambda *_: self.sync()))

    def _embed(self, module, args, out):
        local = self.lookup[args[0]]
        new = (local >= 0).unsqueeze(-1)
        return torch.where(new, self.rows[local.clamp(min=0)].to(out.dtype), out)

    def _logits(self, module, args, out):
        x = args[0]
        bias = None if module.bias is None else module.bias[self.ids].to(x.dtype)
        # in place: a linear layer's backward does not need its output, and a second B x T x V
        # logits tensor is the largest allocation of a step at a large vocabulary
        return out.index_copy_(-1, self.ids, F.linear(x, self.rows.to(x.dtype), bias).to(out.dtype))

    @torch.no_grad()
    def sync(self) -> None:
        shard, _ = local_rows(self.weight)  # looked up each time: loading a checkpoint may swap it
        shard.index_copy_(0, self.mine_at, self.rows.detach()[self.mine])

    def release(self) -> None:
        """Fold R into W and leave the model and optimizer as they were before."""
        self.sync()
        for h in self.handles:
            h.remove()
        del self.owner._parameters[ROWS_PARAM]
        self.optimizer.param_groups[:] = [g for g in self.optimizer.param_groups
                                          if not any(p is self.rows for p in g["params"])]
        self.optimizer.state.pop(self.rows, None)


def local_rows(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This process's rows of W, in place, and the index of the first: all of W unsharded; under
    FSDP2 its shard, which `fully_shard` cuts along dim 0 as torch.chunk does."""
    if not isinstance(weight, DTensor):
        if dist.is_initialized() and dist.get_world_size() > 1:  # a gathered copy: writes would be lost
            raise RuntimeError("row training under several ranks needs the sharded matrix (reshard the model first)")
        return weight.data, 0
    chunk = -(-weight.shape[0] // weight.device_mesh.size())
    return weight.to_local().data, min(weight.device_mesh.get_local_rank() * chunk, weight.shape[0])


def _gather_rows(shard: torch.Tensor, ids: torch.Tensor, mine: torch.Tensor, mine_at: torch.Tensor) -> torch.Tensor:
    """W's rows `ids`, whole, on every rank: each rank fills the ones in its shard and a sum puts
    them together (exact: every row comes from one rank, zeros from the others), without
    gathering the V x d matrix anywhere."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return shard.detach()[ids].clone()
    rows = torch.zeros(len(ids), shard.shape[1], dtype=shard.dtype, device=shard.device)
    rows[mine] = shard.detach()[mine_at]
    dist.all_reduce(rows)
    return rows


def unsupported(module: torch.nn.Module) -> str | None:
    """Why the hooks cannot stand in for this module's rows (None: they can). They compute what
    a plain nn.Embedding / nn.Linear computes; a subclass with its own forward (Gemma's scaled
    embedding) or an embedding with max_norm would silently compute something else."""
    plain = type(module).forward in (torch.nn.Embedding.forward, torch.nn.Linear.forward)
    if not plain or getattr(module, "max_norm", None) is not None:
        return f"its {type(module).__name__} is not a plain nn.Embedding / nn.Linear"
    return None


def is_rows_param(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == ROWS_PARAM
