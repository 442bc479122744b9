"""A stage's `relora:` section (owned by model/relora.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import MAX_TOKENS, Strict


class PruneCfg(Strict):
    """What happens to the LoRA parameters' Adam moments at each merge: `magnitude` zeroes both
    moments of the `ratio` share of entries whose first moments are smallest (the paper: 0.99),
    `random` of a random share, `reset` of all. Other parameters' moments are never touched."""

    method: Literal["magnitude", "random", "reset"] = "magnitude"
    ratio: float = Field(0.99, ge=0.0, le=1.0)


class ReLoRACfg(Strict):
    """ReLoRA (Lialin et al., ICLR 2024): rank-`rank` adapters on `targets` (default: every linear
    layer of the decoder blocks, i.e. attention and MLP), merged into the frozen weight every
    `merge_every_tokens`, then re-initialised, with the moments pruned and the LR re-warmed over
    `restart_warmup_tokens`. `warm_start` tokens train at full rank first."""

    rank: int = Field(128, ge=1, le=65536)
    alpha: float = Field(32.0, gt=0, le=1e6)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | None = Field(None, min_length=1)
    merge_every_tokens: int = Field(gt=0, le=MAX_TOKENS)
    prune: PruneCfg = PruneCfg()
    # None: 2% of a cycle (the paper re-warms over 50-100 of its 5,000-step cycles); 0: no re-warmup
    restart_warmup_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS)
    warm_start: int = Field(0, ge=0, le=MAX_TOKENS)

    def rewarm_tokens(self, step: int) -> int:
        """The re-warmup after each restart, for a stage of `step` tokens a step: as given, else
        2% of a cycle and at least two steps (a step runs at the LR of the token count it
        completes: a one-step re-warmup would run its step at the full LR), never past a cycle.
        Pruned moments make the next steps of the pruned entries up to ~3x a normal Adam step;
        the paper's jagged schedule is what keeps that from diverging."""
        if self.restart_warmup_tokens is not None:
            return self.restart_warmup_tokens
        return min(max(2 * step, self.merge_every_tokens // 50 // step * step), self.merge_every_tokens)

    def problems(self, batch: int, total: int, trainable: list[str], where: str) -> list[str]:
        """What a stage of `total` tokens, `batch` a step, that trains `trainable`, cannot do with
        this section (the recipe's cross-field checks): cycles are whole optimizer steps that tile
        the stage after the warm start, and the default targets are layers the stage trains."""
        problems: list[str] = []
        p = problems.append
        if self.merge_every_tokens < batch:
            p(f"{where}.merge_every_tokens: {self.merge_every_tokens} is less than one optimizer step ({batch} tokens)")
        elif self.merge_every_tokens % batch:
            p(f"{where}.merge_every_tokens: {self.merge_every_tokens} is not a whole number of optimizer steps "
              f"({batch} tokens)")
        if self.warm_start % batch:
            p(f"{where}.warm_start: {self.warm_start} is not a whole number of optimizer steps ({batch} tokens)")
        elif self.warm_start >= total:
            p(f"{where}.warm_start: {self.warm_start} leaves no LoRA phase in the stage's {total} tokens; lower it")
        elif not problems and (total - self.warm_start) % self.merge_every_tokens:
            p(f"{where}.merge_every_tokens: {self.merge_every_tokens} does not divide the stage's LoRA phase "
              f"({total} tokens - warm_start {self.warm_start}); choose a divisor, or change the stage's tokens")
        rewarm = self.restart_warmup_tokens
        if rewarm is not None and rewarm > self.merge_every_tokens:
            p(f"{where}.restart_warmup_tokens: {rewarm} is longer than a cycle (merge_every_tokens = "
              f"{self.merge_every_tokens})")
        elif rewarm and rewarm < 2 * batch:  # a step runs at the LR of the tokens it completes
            p(f"{where}.restart_warmup_tokens: {rewarm} is less than two optimizer steps ({2 * batch} tokens): the "
              "first step after a merge would run at the full LR; give at least two steps, or 0 for no re-warmup")
        if self.targets is None and not {"all", "layers"} & set(trainable):
            p(f"{where}: the stage freezes the layers ReLoRA trains (trainable: {', '.join(trainable)}); "
              "add `layers` to trainable, or remove relora")
        return problems

    def merge_points(self, total: int) -> list[int]:
        """Stage tokens after which the adapters merge inside a stage of `total` tokens (the merge
        at the stage's end, which puts the plain layers back, is not one of them)."""
        return list(range(self.warm_start + self.merge_every_tokens, total, self.merge_every_tokens))

    def restarts(self, total: int) -> list[int]:
        """Where the LR re-warms: where the LoRA phase begins after a warm start (fresh adapters
        and moments), and after each merge (pruned moments)."""
        return ([self.warm_start] if self.warm_start else []) + self.merge_points(total)
