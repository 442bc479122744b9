"""ReLoRA's mechanics (Lialin et al., ICLR 2024): LoRA adapters from PEFT on the decoder blocks'
linears, merged into the frozen weight in place, re-initialised, and their Adam moments pruned.

Everything happens in place, on the same Parameter objects: PEFT's `merge_and_unload` or
`get_peft_model` would build new modules and new Parameters, leaving the optimizer (and FSDP2)
holding stale ones, and `merge_adapter` marks the adapter merged so that its forward skips the
branch. We use PEFT for the layers (`inject_adapter_in_model`, `get_delta_weight`) and do the
merge ourselves:

- merge: W <- W + s.B.A (in W's dtype; fp32 on CPU and for FSDP2's sharded master weights);
- re-initialise: A from a Kaiming-uniform draw of a generator seeded by (seed, merge count), the
  same on every rank and on a resume; B <- 0, so s.B.A = 0 and the model's function is unchanged;
- under FSDP2 the adapters are not sharded (created after `fully_shard`, whole on every rank, their
  gradients averaged like row training's, rows.py); W is, and each rank merges into its shard;
- prune: the chosen share of A's and B's entries lose both moments (`exp_avg`, `exp_avg_sq`),
  chosen by the magnitude of the first moment (exactly that many entries: ties cannot zero a
  whole tensor), at random, or all of them. The optimizer state is looked up by Parameter, never
  by name (axolotl's reset pruned nothing for months because it indexed by name).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import CptError
from .relora_cfg import PruneCfg, ReLoRACfg
from .rows import local_rows

ADAPTER = "default"


def default_targets(model: nn.Module) -> list[str]:
    """The names (last component) of every linear layer inside the decoder blocks: attention and
    MLP projections, whatever the family calls them."""
    from ..distributed.fsdp import decoder_layers

    names = {n.rsplit(".", 1)[-1] for n, m in decoder_layers(model).named_modules() if isinstance(m, nn.Linear)}
    return sorted(names)


def chosen(model: nn.Module, cfg: ReLoRACfg, where: str = "relora") -> dict[str, nn.Linear]:
    """The linear layers `targets` names (by full name or last component), checked: at least
    one, and `rank` no larger than the smallest of their dimensions."""
    targets = cfg.targets or default_targets(model)
    embedding = model.get_input_embeddings()
    tied = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and embedding is not None
            and m.weight is embedding.weight}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in tied}
    found = {n: m for n, m in linears.items() if n.rsplit(".", 1)[-1] in targets or n in targets}
    named_tied = [n for n in tied if n.rsplit(".", 1)[-1] in targets or n in targets]
    if named_tied:  # a merge into the shared matrix would change the input embedding too
        raise CptError(f"{where}.targets: {named_tied[0]} shares its weight with the input embedding (tied); "
                       "leave it out (it trains at full rank with `trainable:`), or untie the model "
                       "(cpt vocab init --untie)")
    unknown = [t for t in targets if not any(n.rsplit(".", 1)[-1] == t or n == t for n in linears)]
    if unknown:  # each name must mean something: a typo beside valid names would be dropped silently
        known = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise CptError(f"{where}.targets: {', '.join(unknown)} match no linear layer of {type(model).__name__}; "
                       f"its linear layers are named {', '.join(known)}")
    small = min(found.items(), key=lambda kv: min(kv[1].in_features, kv[1].out_features))
    if cfg.rank > min(small[1].in_features, small[1].out_features):
        raise CptError(f"{where}.rank: {cfg.rank} is larger than {small[0]} "
                       f"({small[1].in_features} x {small[1].out_features}); choose at most "
                       f"{min(small[1].in_features, small[1].out_features)}")
    return found


def wrap(model: nn.Module, cfg: ReLoRACfg, seed: int = 0, where: str = "relora") -> list[nn.Module]:
    """Put LoRA adapters on the targets (in place: the model keeps its class and the names of
    every parameter that is not wrapped); the wrapped weights are frozen, A and B train. A is
    drawn from `seed` (not the global RNG), so every rank and every resume draws the same."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                        target_modules=sorted(chosen(model, cfg, where)), init_lora_weights=True)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for p in model.parameters():  # PEFT freezes all but the adapters; the rest keeps `trainable:`'s choice
        if id(p) in flags:
            p.requires_grad_(flags[id(p)])
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    freeze(layers)
    _redraw(layers, _generator(seed, 0))
    return layers


def freeze(layers: list[nn.Module]) -> None:
    """The wrapped weights frozen, the adapters trainable (again after `trainable:` is applied)."""
    for layer in layers:
        layer.get_base_layer().weight.requires_grad_(False)
        for p in (*layer.lora_A[ADAPTER].parameters(), *layer.lora_B[ADAPTER].parameters()):
            p.requires_grad_(True)


def _generator(seed: int, merges: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + merges) % 2**63)  # any recipe seed fits


@torch.no_grad()
def _redraw(layers: list[nn.Module], gen: torch.Generator) -> None:
    """A from Kaiming-uniform (a=sqrt(5): PEFT's and nn.Linear's init), B = 0: s.B.A = 0."""
    for layer in layers:
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        bound = 1 / math.sqrt(a.shape[1])
        a.copy_(torch.empty(a.shape).uniform_(-bound, bound, generator=gen).to(a.dtype))
        b.zero_()


def lora_params(layers: list[nn.Module]) -> list[nn.Parameter]:
    return [p for layer in layers for lin in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]) for p in lin.parameters()]


@torch.no_grad()
def merge(layers: list[nn.Module], optimizer: torch.optim.Optimizer | None, prune: PruneCfg, seed: int,
          merges: int) -> float:
    """Fold every adapter into its weight, re-initialise it, prune its moments. `merges`: how many
    merges came before (with `seed`, it fixes A's new draw). Returns the share of the adapters'
    moment entries that are zero afterwards (what was pruned, measured)."""
    for layer in layers:
        # under FSDP2 each rank adds the rows of s.B.A that fall in its shard of W (the product is
        # computed whole, as one process computes it, so the merged weights are the same)
        shard, first = local_rows(layer.get_base_layer().weight)
        delta = layer.get_delta_weight(ADAPTER)[first:first + shard.shape[0]]
        shard.add_(delta.to(shard.dtype))
    gen = _generator(seed, merges + 1)
    _redraw(layers, gen)
    if optimizer is None:
        return 0.0
    zero = total = 0
    for p in lora_params(layers):
        moments = [t for key, t in optimizer.state.get(p, {}).items() if key in ("exp_avg", "exp_avg_sq")]
        if moments:
            _prune(moments, prune, gen)
            zero += sum(int((t == 0).sum()) for t in moments)
            total += sum(t.numel() for t in moments)
    return zero / total if total else 0.0


def _prune(moments: list[torch.Tensor], cfg: PruneCfg, gen: torch.Generator) -> None:
    """Zero `ratio` of a parameter's entries in both moments: exactly round(ratio x n) entries,
    chosen by the smallest |exp_avg| (ties by position) or at random. An entry loses both moments
    or neither: with its second moment gone and its first kept, its next step would be
    m / (sqrt((1 - beta2) g^2) + eps): some 30 times a normal Adam step, and unbounded for A on
    the step after a merge, whose gradient is exactly 0 there (B = 0): m / eps. The study saw an
    entry of A reach 863 (its draw is bounded by 0.125) before this."""
    n = moments[0].numel()
    k = round(cfg.ratio * n) if cfg.method != "reset" else n
    if k <= 0:
        return
    if cfg.method == "random":
        idx = torch.randperm(n, generator=gen)[:k].to(moments[0].device)
    else:  # magnitude of the first moment (all entries for `reset`)
        idx = moments[0].view(-1).abs().topk(k, largest=False, sorted=False).indices
    for t in moments:
        t.view(-1)[idx] = 0


@torch.no_grad()
def unwrap(model: nn.Module, layers: list[nn.Module]) -> None:
    """Merge a last time and put the plain linear layers back: the model is what it was, with the
    sum of every update in its weights (what a checkpoint's export and `AutoModel` load)."""
    merge(layers, None, PruneCfg(), 0, 0)
    for name, module in list(model.named_modules()):
        if any(module is layer for layer in layers):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    model.__dict__.pop("peft_config", None)  # inject's record: a later wrap would warn it exists
