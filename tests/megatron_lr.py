"""Reference model of argonne-lcf/Megatron-DeepSpeed's learning-rate scheduler, for tests.

Written independently of cptkit, from the spec (`schedules-relora-blending.md`, B5 and B6):

- `parse_launch(path)` reads a launch script of the form
  `export NAME=value ...` / `bash train_alcf.sh --flag value ...` and returns the Megatron
  arguments it sets, as ALCF's helpers.sh maps them;
- `MegatronLR(args).lr(n)` is the LR when the scheduler's counter is `n` samples;
- `megatron_lr_per_iteration(...)` is the LR Megatron logs after each iteration of a resumed run.

Notation (spec B6): n = samples seen, D = decay steps = lr_decay_iters * GBS,
W = warmup steps = lr_warmup_fraction * D, n' = n - W, T' = D - W.
"""

import math
import re
import shlex

# ALCF helpers.sh variable -> (Megatron argument, type)
ENV_MAP = {
    "LR": ("lr", float),
    "LR_DECAY_STYLE": ("lr_decay_style", str),
    "LR_WARMUP_FRAC": ("lr_warmup_fraction", float),
    "LR_DECAY_ITERS": ("lr_decay_iters", int),
    "TRAIN_ITERS": ("train_iters", int),
}
INT_ENV = ("MICRO_BATCH", "GRAD_ACC_STEPS", "NGPUS")
# Variables people set that helpers.sh never reads (spec B5 pitfall).
IGNORED_ENV = {"LR_WARMUP_FRACTION": "helpers.sh reads LR_WARMUP_FRAC, not LR_WARMUP_FRACTION"}
BOOL_FLAGS = ("override_opt_param_scheduler", "lr_constant_plus_cooldown", "finetune",
              "universal_checkpoint", "use_checkpoint_opt_param_scheduler")
DEFAULTS = {
    "lr": 2e-4, "lr_decay_style": "cosine", "lr_warmup_fraction": 0.05, "min_lr": 0.0,
    "constant_lr": 1.1e-4, "timescale": 10.0, "lr_cooldown_fraction": 0.65,
    "lr_constant_fraction": 0.001, "lr_constant_plus_cooldown_frac": 0.05,
    **{flag: False for flag in BOOL_FLAGS},
}
STYLES = ("constant", "linear", "cosine", "inverse-square-root", "infinite-cosine",
          "infinite-inv-square-root")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


def _int(text):
    return int(float(text))


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def _parse_flags(tokens):
    """`--x-y VALUE` -> {"x_y": float or str}; a flag with no value (or a known boolean) -> True."""
    flags, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            continue  # stray positional: Megatron would reject it; nothing to record
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if not eq:
            nxt = tokens[i] if i < len(tokens) else None
            if key in BOOL_FLAGS or nxt is None or (nxt.startswith("-") and _number(nxt) is None):
                flags[key] = True
                continue
            value, i = nxt, i + 1
        number = _number(value)
        flags[key] = number if number is not None else value
    return flags


def parse_launch(path) -> dict:
    """The Megatron arguments a `... bash train_alcf.sh <flags>` launch script sets.

    Extra keys: MICRO_BATCH, GRAD_ACC_STEPS, NGPUS (ints), GLOBAL_BATCH (their product),
    `_env` (every variable train_alcf.sh sees, as strings) and `_ignored_env` ({name: why}
    for variables set but not read by helpers.sh, e.g. LR_WARMUP_FRACTION).
    """
    with open(path) as f:
        text = f.read().replace("\r\n", "\n").replace("\\\n", "")  # join `\`-continued lines
    shell, exported, command, first = {}, set(), None, []
    for line in text.split("\n"):
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        if line.startswith("FIRST=("):  # flags of a run's first start: `"${FIRST[@]}"` on the command
            first = shlex.split(line[len("FIRST=("):line.index(")")])
            continue
        train = [i for i, t in enumerate(tokens) if t.endswith("train_alcf.sh")]
        if train:  # `[NAME=value ...] bash train_alcf.sh <flags>`; the last such line wins
            prefix = dict(_ASSIGN.match(t).groups() for t in tokens[:train[0]] if _ASSIGN.match(t))
            flags = tokens[train[0] + 1:]
            command = (prefix, [f for t in flags for f in (first if t == "${FIRST[@]}" else [t])])
        elif tokens[0] == "export":
            for token in tokens[1:]:
                match = _ASSIGN.match(token)
                if match:
                    shell[match[1]] = match[2]
                exported.add(match[1] if match else token)
        elif all(_ASSIGN.match(t) for t in tokens):  # plain assignment: not seen by the child
            shell.update(_ASSIGN.match(t).groups() for t in tokens)
    if command is None:
        raise ValueError(f"{path}: no `bash train_alcf.sh ...` line")
    env = {name: shell[name] for name in exported if name in shell}
    env.update(command[0])

    args = dict(DEFAULTS)
    for name, (key, kind) in ENV_MAP.items():
        if name in env:
            args[key] = _int(env[name]) if kind is int else kind(env[name])
    for name in INT_ENV:
        if name in env:
            args[name] = _int(env[name])
    if "GLOBAL_BATCH" in env:  # helpers.sh: an exported GLOBAL_BATCH wins over the product
        args["GLOBAL_BATCH"] = _int(env["GLOBAL_BATCH"])
    elif all(name in args for name in INT_ENV):
        args["GLOBAL_BATCH"] = args["MICRO_BATCH"] * args["GRAD_ACC_STEPS"] * args["NGPUS"]
    if {"TRAIN_TOKENS", "SEQ"} <= env.keys() and "GLOBAL_BATCH" in args:
        # helpers.sh: a set TRAIN_TOKENS wins over TRAIN_ITERS, = TRAIN_TOKENS / SEQ / GBS (bash integers)
        args["train_iters"] = _int(env["TRAIN_TOKENS"]) // _int(env["SEQ"]) // args["GLOBAL_BATCH"]
    if "OVERRIDE_CKPT_OPT_PARAM" not in env:  # helpers.sh adds this flag unless that is set
        args["use_checkpoint_opt_param_scheduler"] = True
    args.update(_parse_flags(command[1]))  # the command line wins over the environment
    if args.get("lr_decay_iters") is None and args.get("train_iters") is not None:
        args["lr_decay_iters"] = args["train_iters"]
    args["_env"] = env
    args["_ignored_env"] = {name: why for name, why in IGNORED_ENV.items() if name in env}
    return args


def global_batch(args) -> int:
    """GBS: `--global-batch-size` when given, else MICRO_BATCH * GRAD_ACC_STEPS * NGPUS."""
    gbs = args.get("global_batch_size", args.get("GLOBAL_BATCH"))
    if gbs is None:
        raise ValueError("no global batch size (global_batch_size or GLOBAL_BATCH)")
    return int(gbs)


class MegatronLR:
    """The LR of Megatron-DeepSpeed's OptimizerParamScheduler when it has counted n samples."""

    def __init__(self, args: dict):
        a = {**DEFAULTS, **args}
        self.style = a["lr_decay_style"]
        if self.style not in STYLES:
            raise ValueError(f"unknown lr_decay_style {self.style!r}")
        decay_iters = a.get("lr_decay_iters") or a.get("train_iters")
        if decay_iters is None:
            raise ValueError("need lr_decay_iters or train_iters")
        self.max, self.min = float(a["lr"]), float(a["min_lr"])
        self.D = float(decay_iters) * global_batch(a)              # decay steps, in samples
        self.W = float(a["lr_warmup_fraction"]) * self.D           # warmup steps
        self.cooldown = bool(a["lr_constant_plus_cooldown"])
        self.C = float(a["lr_constant_plus_cooldown_frac"]) * self.D  # (1-sqrt) cooldown length
        self.const = float(a["constant_lr"])                       # eta_const
        self.alpha = float(a["timescale"])
        self.Tcd = float(a["lr_cooldown_fraction"]) * self.D       # infinite: cooldown length
        self.Tc = float(a["lr_constant_fraction"]) * self.D        # infinite: constant length
        if self.style.startswith("infinite"):
            if self.min <= 0:
                raise ValueError("infinite schedules need min_lr > 0 (the code takes a log)")
            if not self.min < self.const <= self.max:
                raise ValueError("infinite schedules need min_lr < constant_lr <= lr")

    def lr(self, n: float) -> float:
        n = float(n)
        if self.W > 0 and n <= self.W:                # linear warmup from 0
            return self.max * n / self.W
        if self.style == "constant" and not self.cooldown:
            return self.max                           # constant never decays, even past D
        if n > self.D:
            return self.min
        n1, T1 = n - self.W, self.D - self.W          # n', T'
        if self.style == "constant":                  # constant + (1-sqrt) cooldown over the last C
            if n1 < T1 - self.C:
                return self.max
            if self.C <= 0:                           # zero-length cooldown: the real code divides by 0
                return self.min
            return self.min + (self.max - self.min) * (1 - math.sqrt((n1 - (T1 - self.C)) / self.C))
        if self.style == "inverse-square-root":
            return max(self.min, self.max * math.sqrt(max(self.W, 1)) / math.sqrt(max(n, 1)))
        if self.style in ("linear", "cosine"):
            r = n1 / T1
            coeff = 1 - r if self.style == "linear" else 0.5 * (1 + math.cos(math.pi * r))
            return self.min + coeff * (self.max - self.min)
        # infinite-cosine / infinite-inv-square-root: cooldown to eta_const, constant, exp anneal
        if n1 <= self.Tcd:
            u = n1 / self.Tcd
            if self.style == "infinite-cosine":
                return self.const + (self.max - self.const) * 0.5 * (1 + math.cos(math.pi * u))

            def h(x):
                return 1 / math.sqrt(1 + self.alpha * x) - 1
            return self.max - (self.max - self.const) * h(u) / h(1)
        k = n1 - self.Tcd - self.Tc
        if k <= 0:
            return self.const
        anneal = self.D - self.W - self.Tcd - self.Tc   # > 0 here, since n <= D
        return max(self.min, self.const * math.exp(-math.log(self.const / self.min) * k / anneal))


def megatron_lr_per_iteration(args, first_iteration: int, last_iteration: int,
                              samples_before: int) -> list[float]:
    """The LR logged after each iteration i in [first_iteration, last_iteration] of a run that
    resumed with `samples_before` consumed samples (the scheduler steps by GBS before logging)."""
    sched, gbs = MegatronLR(args), global_batch(args)
    return [sched.lr(samples_before + (i - first_iteration + 1) * gbs)
            for i in range(first_iteration, last_iteration + 1)]


def self_check() -> None:
    """Hand-computed values of every style (run by tests/test_export.py and as a script)."""
    import os
    import tempfile

    def close(a, b):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15), (a, b)

    def launch(body):
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
            f.write(body)
        try:
            return parse_launch(f.name)
        finally:
            os.unlink(f.name)

    base = {"lr": 2e-4, "min_lr": 2e-5, "train_iters": 100, "GLOBAL_BATCH": 4}  # D = 400 samples

    # cosine: W = 20; halfway through the decay the LR is (max + min) / 2; min past D
    cos = MegatronLR({**base, "lr_decay_style": "cosine"})
    close(cos.lr(10), 1e-4)
    close(cos.lr(20), 2e-4)
    close(cos.lr(20 + 380 / 2), (2e-4 + 2e-5) / 2)
    close(cos.lr(400), 2e-5)
    close(cos.lr(401), 2e-5)
    close(MegatronLR({**base, "lr_decay_style": "linear"}).lr(20 + 380 / 4), 2e-4 - 0.25 * 1.8e-4)
    close(MegatronLR({**base, "lr_decay_style": "constant"}).lr(1000), 2e-4)
    close(MegatronLR({**base, "lr_decay_style": "inverse-square-root"}).lr(80), 1e-4)  # sqrt(20/80)

    # constant + (1-sqrt) cooldown, frac 0.1: cooldown starts at D * (1 - frac) = 360
    cc = MegatronLR({**base, "lr_decay_style": "constant", "lr_constant_plus_cooldown": True,
                     "lr_constant_plus_cooldown_frac": 0.1})
    close(cc.lr(359.999), 2e-4)
    close(cc.lr(360), 2e-4)
    close(cc.lr(370), (2e-4 + 2e-5) / 2)                   # 1 - sqrt(1/4) = 1/2
    close(cc.lr(400), 2e-5)
    close(cc.lr(500), 2e-5)

    # infinite schedules: D = 400, W = 20, Tcd = 0.5 D = 200, Tc = 0.1 D = 40, anneal = 140
    inf = {**base, "constant_lr": 1e-4, "lr_cooldown_fraction": 0.5, "lr_constant_fraction": 0.1}
    ic = MegatronLR({**inf, "lr_decay_style": "infinite-cosine"})
    close(ic.lr(20 + 100), 1.5e-4)
    close(ic.lr(20 + 200), 1e-4)
    close(ic.lr(20 + 240), 1e-4)
    close(ic.lr(20 + 240 + 70), math.sqrt(1e-4 * 2e-5))    # geometric mean halfway through
    close(ic.lr(400), 2e-5)
    isq = MegatronLR({**inf, "lr_decay_style": "infinite-inv-square-root"})
    ratio = (1 / math.sqrt(6) - 1) / (1 / math.sqrt(11) - 1)  # h(1/2) / h(1) with alpha = 10
    close(isq.lr(20 + 100), 2e-4 - 1e-4 * ratio)
    close(isq.lr(20 + 200), 1e-4)
    for bad in ({"min_lr": 0.0}, {"constant_lr": 3e-4}, {"constant_lr": 1e-5}):
        try:
            MegatronLR({**inf, **bad, "lr_decay_style": "infinite-cosine"})
            raise AssertionError(bad)
        except ValueError:
            pass
    try:
        MegatronLR({**base, "lr_decay_style": "WSD"})
        raise AssertionError("WSD is not an ALCF style")
    except ValueError:
        pass

    # per-iteration: resumed at 40 samples with GBS 4 -> counters 44, 48, 52
    close(megatron_lr_per_iteration({**base, "lr_decay_style": "constant"}, 11, 13, 40)[0], 2e-4)
    assert megatron_lr_per_iteration(base, 11, 13, 40) == [cos.lr(44), cos.lr(48), cos.lr(52)]

    # launch script: quoting, several pairs per export, continuation lines, flags override env
    args = launch("""#!/bin/bash
export LR_WARMUP_FRACTION=0.01 LR="3e-4" LR_DECAY_STYLE='constant'
export MICRO_BATCH=2 GRAD_ACC_STEPS=4
export NGPUS=8 TRAIN_ITERS=1000  # comment
OVERRIDE_CKPT_OPT_PARAM=1
bash train_alcf.sh --override-opt_param-scheduler --lr_constant_plus_cooldown \\
    --lr_constant_plus_cooldown_frac 0.0983 --min-lr 0.0001 --lr 0.0002
""")
    assert args["GLOBAL_BATCH"] == 64 and args["train_iters"] == 1000 and args["lr_decay_iters"] == 1000
    assert args["lr"] == 2e-4 and args["min_lr"] == 1e-4 and args["lr_decay_style"] == "constant"
    assert args["override_opt_param_scheduler"] and args["lr_constant_plus_cooldown"]
    assert args["lr_constant_plus_cooldown_frac"] == 0.0983
    assert args["lr_warmup_fraction"] == 0.05 and "LR_WARMUP_FRACTION" in args["_ignored_env"]
    assert args["use_checkpoint_opt_param_scheduler"]  # OVERRIDE_CKPT_OPT_PARAM was not exported
    sched = MegatronLR(args)                           # LR_WARMUP_FRACTION ignored -> 5% warmup
    close(sched.W, 0.05 * 64_000)
    close(sched.lr(1600), 1e-4)                        # half-way through the 3200-sample warmup
    close(sched.lr(64_000 * (1 - 0.0983)), 2e-4)       # cooldown starts at D (1 - frac)
    close(sched.lr(64_000), 1e-4)
    args = launch("export LR_WARMUP_FRAC=0.01 MICRO_BATCH=1 GRAD_ACC_STEPS=1 NGPUS=1\n"
                  "export OVERRIDE_CKPT_OPT_PARAM=1\n"
                  "TRAIN_ITERS=10 LR_DECAY_ITERS=8 bash train_alcf.sh --finetune --universal-checkpoint\n")
    assert args["lr_warmup_fraction"] == 0.01 and not args["_ignored_env"]
    assert args["train_iters"] == 10 and args["lr_decay_iters"] == 8 and args["lr"] == 2e-4
    assert args["finetune"] and args["universal_checkpoint"]
    assert not args["use_checkpoint_opt_param_scheduler"]
    print("megatron_lr self-check: ok")


if __name__ == "__main__":
    self_check()
