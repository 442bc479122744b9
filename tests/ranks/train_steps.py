"""Run under `torchrun --nproc-per-node N` (or plainly, for one process): K optimizer steps of
stories260K on fixed global batches, each rank on its slice; rank 0 writes the per-step losses
and gradient norms, and whether the frozen embeddings kept every bit, to argv[2] as JSON."""

import json
import sys

import torch
from transformers import AutoModelForCausalLM

from cpt.distributed.batch import rank_slice
from cpt.distributed.config import DistributedCfg
from cpt.distributed.env import from_env
from cpt.distributed.fsdp import shard_model
from cpt.recipe import OptimizerCfg
from cpt.train.step import build_optimizer, train_step

torch.set_num_threads(1)
model_dir, out = sys.argv[1], sys.argv[2]
steps, micro = 8, 2
device = torch.device("cpu")
d = from_env(device)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(model_dir)
model.get_input_embeddings().weight.requires_grad_(False)  # frozen: must stay bit-identical
before = model.get_input_embeddings().weight.detach().clone()
shard_model(model, d, DistributedCfg(), device)
opt = build_optimizer(model, OptimizerCfg(lr=2e-3, weight_decay=0.1))
gen = torch.Generator().manual_seed(1)
records = []
for k in range(steps):
    tokens = torch.randint(0, 512, (8, 64), generator=gen)  # the global batch of step k: 8 samples
    result = train_step(model, opt, rank_slice(tokens, micro, d.rank, d.world), 2e-3, 1.0, dist=d)
    records.append({"loss": result.loss, "grad_norm": result.grad_norm})
weight = model.get_input_embeddings().weight
full = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
frozen_same = bool(torch.equal(full.detach(), before))
if d.is_main:
    with open(out, "w") as f:
        json.dump({"world": d.world, "steps": records, "frozen_same": frozen_same}, f)
if d.world > 1:
    torch.distributed.destroy_process_group()
