"""The LR that Megatron-DeepSpeed's scheduler (ALCF fork) computes from its arguments, so that an
export can say how far a run's LR is from the plan's where Megatron cannot follow it exactly.

With `--train-iters`, the scheduler counts samples: D = lr_decay_iters x global batch, the
warmup W = lr_warmup_fraction x D, and the LR is the one at the samples consumed so far. The
formulas are spec B6's (../shared/spec/schedules-relora-blending.md)."""

from __future__ import annotations

import math


class MegatronLR:
    def __init__(self, args: dict):
        self.a = args
        self.D = args["lr_decay_iters"] * args["global_batch"]
        self.W = args.get("lr_warmup_fraction", 0.0) * self.D

    def lr(self, n: float) -> float:
        a, D, W = self.a, self.D, self.W
        top, floor, style = a["lr"], a.get("min_lr", 0.0), a["lr_decay_style"]
        if W > 0 and n <= W:
            return top * n / W
        if style == "constant" and not a.get("lr_constant_plus_cooldown"):
            return top
        if n > D:
            return floor
        if style == "inverse-square-root":
            return max(floor, top * math.sqrt(max(W, 1)) / math.sqrt(max(n, 1)))
        if style == "constant":  # plus a 1-sqrt cooldown over the last C samples
            C = a["lr_constant_plus_cooldown_frac"] * D
            if n < D - C:
                return top
            return floor + (top - floor) * (1 - math.sqrt((n - (D - C)) / C))
        if style.startswith("infinite-"):
            return self._infinite(n - W)
        r = (n - W) / (D - W)
        coeff = 1 - r if style == "linear" else 0.5 * (1 + math.cos(math.pi * r))
        return floor + coeff * (top - floor)

    def _infinite(self, k: float) -> float:
        a = self.a
        top, const, floor = a["lr"], a["constant_lr"], a["min_lr"]
        cool, hold = a["lr_cooldown_fraction"] * self.D, a["lr_constant_fraction"] * self.D
        if k <= cool:
            x = k / cool
            if a["lr_decay_style"] == "infinite-cosine":
                return const + (top - const) * 0.5 * (1 + math.cos(math.pi * x))
            alpha = a.get("timescale", 10.0)  # Ibrahim et al. 2024: h(x)/h(1) of the way done

            def h(u: float) -> float:
                return 1 / math.sqrt(1 + alpha * u) - 1
            return top - (top - const) * h(x) / h(1)
        if k <= cool + hold:
            return const
        rest = self.D - self.W - cool - hold
        return max(floor, const * math.exp(-math.log(const / floor) * (k - cool - hold) / rest))
