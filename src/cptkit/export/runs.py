"""A plan as Megatron-DeepSpeed runs: where each run starts, what it loads, and its LR flags.

Every stage is one run, or two when its final decay starts inside it: the first run ends at the
stage's pre-cooldown point and saves there (the cookbook's "start CPT from a checkpoint at
LR_max"), and the second resumes from it to cool down. Megatron cannot change the data in the
middle of a run, so a stage that switches its mix (Strategy 4) is already two stages in the plan
(presets.py) and so two runs.

The LR flags describe the *whole* curve of the run's schedule in Megatron's global sample count:
a curve whose first token is trained at sample n_c (its origin) decays over D = n_c + span
samples. Phases before the run's first sample are never executed, so a run that resumes inside a
curve uses the same flags as the run that began it, and a decay that starts mid-curve uses
Megatron's warmup as a placeholder (W = the decay's start: `num_steps <= W` then returns LR_max
there, and never runs before it). A curve that warms up from 0 must start at sample 0, which only
`--finetune` gives: it restarts the iteration count (and drops the optimizer state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CptError
from ..recipe import Recipe
from ..schedules import Curve, Segment, plan_segments, step_lr
from .megatron_lr import MegatronLR

BASE = "BASE"  # the run that loads the base model (a Megatron conversion the user provides)


@dataclass
class Run:
    name: str  # 01-wiki, 02-wiki.cooldown
    stage: int  # index into recipe.stages
    first: int  # the stage's first step this run trains (0-based)
    steps: int
    plan_step: int  # plan steps before this run: its k-th iteration is `cpt schedule --csv` row plan_step + k
    load: str  # the run whose last save this run loads, or BASE
    finetune: bool  # load the weights only: iteration 0, fresh optimizer, data from sample 0
    iter0: int  # Megatron's iteration when the run starts (the loaded checkpoint's)
    samples0: int  # consumed samples when the run starts
    gbs: int  # samples per iteration
    gpus: int
    lr: dict = field(default_factory=dict)  # Megatron arguments of the scheduler (megatron_lr.py)
    deviation: float = 0.0  # the largest relative gap between Megatron's LR and the plan's
    blend_error: float = 0.0  # the largest gap between a corpus's share in Megatron's blend and the plan's
    micro: int = 1  # MICRO_BATCH and GRAD_ACC_STEPS on `gpus` GPUs (megatron.py)
    accum: int = 1
    notes: list[str] = field(default_factory=list)  # what Megatron cannot do exactly here

    @property
    def train_iters(self) -> int:
        return self.iter0 + self.steps

    def overrides(self, loaded: "Run | None") -> bool:
        """Does the run set other scheduler values than the checkpoint it resumes holds?"""
        return not self.finetune and loaded is not None and loaded.lr != self.lr

    def universal(self, loaded: "Run | None") -> bool:
        """Does it resume optimizer state saved on another GPU count? (--finetune loads the model's
        weights only, which are not split over data-parallel ranks: any count reads them.)"""
        return not self.finetune and loaded is not None and loaded.gpus != self.gpus


def plan_runs(recipe: Recipe, gpus: dict[str, int] | int = 1, segments: list[Segment] | None = None) -> list[Run]:
    """The runs of a recipe, or a one-line `CptError` naming the stage Megatron cannot run."""
    segments = segments or plan_segments(recipe)
    for i, st in enumerate(recipe.stages):
        _check_expressible(recipe, i)
    runs: list[Run] = []
    ends: dict[tuple[int, str], Run] = {}  # (stage, "pre-cooldown" | "final") -> the run that saves it
    plan_step = 0
    for i, (st, seg) in enumerate(zip(recipe.stages, segments)):
        batch, steps = recipe.stage_batch(st), recipe.stage_steps(st)
        d = seg.decay_start
        cut = d // batch if d is not None and 0 < d < seg.total and _ends_plateau(recipe, i, seg, d) else None
        windows = [(0, steps)] if cut is None else [(0, cut), (cut, steps - cut)]
        for first, n in windows:
            prev = runs[-1] if first else _start_point(recipe, i, runs, ends)
            name = f"{len(runs) + 1:02d}-{st.name}" + (".cooldown" if first else "")
            run = Run(name, i, first, n, plan_step + first, BASE if prev is None else prev.name, False,
                      0 if prev is None else prev.train_iters,
                      0 if prev is None else prev.samples0 + prev.steps * prev.gbs,
                      batch // recipe.stage_len(st), _gpus(gpus, st.name))
            _schedule(recipe, run, seg, prev)
            runs.append(run)
            if first == 0 and d == 0:  # decays from its first step: the point it starts from
                ends[(i, "pre-cooldown")] = prev
        if cut is not None:
            ends[(i, "pre-cooldown")] = runs[-2]
        ends[(i, "final")] = runs[-1]
        ends.setdefault((i, "pre-cooldown"), runs[-1])
        plan_step += steps
    return runs


def _gpus(gpus, stage: str) -> int:
    """A stage's GPUs: by its name, or by the name written in the recipe (`code` for the two
    stages `code.base` and `code` a Strategy 4 preset expands into), or the default `*`."""
    if isinstance(gpus, int):
        return gpus
    return gpus.get(stage, gpus.get(stage.split(".")[0], gpus.get("*", 1)))


def _start_point(recipe: Recipe, i: int, runs: list[Run], ends: dict) -> Run | None:
    """The run whose last save stage i starts from; None: the base model."""
    st = recipe.stages[i]
    if st.init == "base" or (st.init == "previous" and i == 0):
        return None
    if st.init == "previous":
        return runs[-1]
    name, tag = st.init_ref
    return ends[(recipe.stage_index(name), tag)]


def _check_expressible(recipe: Recipe, i: int) -> None:
    """Refuse, naming the stage, what a Megatron-DeepSpeed run cannot do at all."""
    st, where = recipe.stages[i], f"stage {recipe.stages[i].name}"
    why = None
    if st.kind == "merge":
        why = "a merge of checkpoints is not a training run; merge with `cpt` and convert the result"
    elif st.init_path is not None:
        why = f"it starts from the cpt checkpoint folder {st.init_path}, which Megatron cannot load"
    elif st.upscale is not None:
        why = "depth up-scaling changes the model between runs"
    elif st.relora is not None:
        why = "ReLoRA has no Megatron-DeepSpeed counterpart"
    elif st.trainable != ["all"]:
        why = f"it trains only {', '.join(st.trainable)} (Megatron trains every parameter)"
    elif st.rope is not None or recipe.stage_len(st) != recipe.seq_len:
        why = "it changes the context length or RoPE; export the stages before it"
    elif st.document_masking:
        why = "document_masking has no counterpart in train_alcf.sh"
    elif recipe.stage_batch(st) % recipe.stage_len(st):
        why = f"its batch of {recipe.stage_batch(st):,} tokens is not whole samples of {recipe.stage_len(st)}"
    elif st.buffer_add is not None and st.buffer_add.policy == "hard":
        why = "buffer_add.policy `hard` scores documents with the trained model; use uniform or representative"
    elif st.optimizer_state == "reset-new":
        why = "optimizer_state: reset-new keeps some moments and drops others; Megatron loads all or none"
    if why:
        raise CptError(f"{where}: cannot be exported to Megatron-DeepSpeed: {why}")


# ---------------------------------------------------------------------------------------------
# the LR: a curve as Megatron-DeepSpeed's scheduler flags


def _ends_plateau(recipe: Recipe, i: int, seg: Segment, d: int) -> bool:
    """Is the stage cut at its pre-cooldown point? Where a plateau at LR_max ends (WSD, an infinite
    schedule's anneal), and where a later stage starts from that point."""
    plateau = any(p.name == "hold" and p.end == seg.offset + d for p in seg.curve.phases)
    return plateau or any(s.init_ref == (recipe.stages[i].name, "pre-cooldown") for s in recipe.stages)


def _schedule(recipe: Recipe, run: Run, seg: Segment, prev: Run | None) -> None:
    """Fill `run.lr` (and `run.finetune`) so that Megatron's scheduler runs the segment's curve,
    and note how far Megatron's LR is from the plan's where it cannot follow it exactly."""
    st = recipe.stages[run.stage]
    L, batch = recipe.stage_len(st), recipe.stage_batch(st)
    curve = seg.curve
    start = seg.offset + run.first * batch  # curve tokens before the run's first step
    rise = next((p for p in curve.phases if p.name == "warmup" and p.end > p.start), None)
    rewarms = rise is not None and start == 0
    run.finetune = prev is None or rewarms or (st.optimizer_state == "reset" and run.first == 0)
    if run.finetune:
        run.iter0 = run.samples0 = 0
        if prev is not None and st.optimizer_state == "keep":
            run.notes.append("`--finetune` also drops the AdamW moments, which cpt keeps here (optimizer_state: "
                             "keep); set optimizer_state: reset in the recipe to train alike")
    origin = run.samples0 - start // L
    if origin < 0:
        raise CptError(f"stage {st.name}: cannot be exported to Megatron-DeepSpeed: it restarts the optimizer "
                       "inside a schedule it continues (--finetune restarts Megatron's LR count too)")
    if rise is not None and rise.lr_from > 0 and rewarms:
        run.notes.append(f"Megatron warms up from 0, cpt from {rise.lr_from:.4g} (the LR it starts at)")
    phases = curve_flags(curve, origin, L, st.name, start + run.steps * batch)
    run.lr = megatron_args(phases, run.gbs)
    run.deviation = max_deviation(run, seg, batch)
    if run.deviation > 1e-6:
        run.notes.append(f"Megatron's LR differs from the plan's by up to {run.deviation:.2%} of it in this run")


def max_deviation(run: Run, seg: Segment, batch: int) -> float:
    """Largest |Megatron LR - plan LR| / plan LR over the run's iterations (the LR each logs
    after the step: Megatron's at the samples consumed, the plan's at the tokens completed)."""
    sched = MegatronLR(run.lr)
    worst = 0.0
    for k in range(run.steps):
        want = step_lr(seg, run.first + k, batch)
        got = sched.lr(run.samples0 + (k + 1) * run.gbs)
        worst = max(worst, abs(got - want) / want if want > 0 else abs(got - want))
    return worst


def curve_flags(curve: Curve, origin: int, seq_len: int, stage: str, end: int) -> dict:
    """Where Megatron-DeepSpeed's scheduler phases fall, in global samples, for a run that ends at
    curve token `end` of `curve` laid from global sample `origin`: keys lr, min_lr,
    lr_decay_style, warmup, decay (D), and per style constant_lr, timescale, cooldown, constant
    (the infinite schedules) or plus_cooldown (constant + a 1-sqrt cooldown)."""
    at = {p.name: p for p in curve.phases}  # zero-length phases included: a warmup of 0 is one
    decays = [p for p in curve.phases if p.name == "decay" and p.end > p.start]

    def s(tokens: int) -> int:
        return origin + tokens // seq_len

    def refuse(why: str) -> CptError:
        return CptError(f"stage {stage}: cannot be exported to Megatron-DeepSpeed: {why}")

    w = at["warmup"].end if "warmup" in at else 0
    # W anchors the infinite schedules' phases; elsewhere only a real warmup needs it
    flags = dict(lr=curve.peak, warmup=s(w) if w or curve.kind == "infinite" else 0, decay=s(curve.span))
    if curve.kind == "infinite":
        cool, hold = curve.phases[1:3]  # warmup, cooldown, hold[, anneal] (schedules.build_curve)
        if cool.end == cool.start:
            raise refuse("an infinite schedule with cooldown: 0 (Megatron divides by the cooldown length)")
        const = hold.lr_to
        floor = decays[-1].lr_to if len(decays) > 1 else const / 10  # never reached without an anneal
        if not 0 < floor < const:
            raise refuse(f"the anneal ends at {floor:g}; Megatron's infinite schedules need 0 < min_lr < constant_lr")
        style = {"cosine": "infinite-cosine", "inv-sqrt": "infinite-inv-square-root"}[cool.shape]
        return flags | dict(min_lr=floor, lr_decay_style=style, constant_lr=const, timescale=cool.timescale,
                            cooldown=(cool.end - cool.start) // seq_len, constant=(hold.end - hold.start) // seq_len)
    if not decays or end <= decays[-1].start:  # warm up and hold (a decay after it is another run's)
        return flags | dict(lr=at["hold"].lr_to if "hold" in at else curve.peak, lr_decay_style="constant")
    last = decays[-1]
    flags |= dict(lr=last.lr_from, min_lr=last.lr_to)
    if last.shape == "rsqrt":  # max * sqrt(W / n): its time counts from sample 0
        if origin:
            raise refuse("an inverse-square-root decay counts from sample 0, and this one starts later")
        return flags | dict(lr_decay_style="inverse-square-root")
    if last.shape == "1-sqrt":  # constant, then the cooldown over the last C samples
        return flags | dict(lr_decay_style="constant", plus_cooldown=(last.end - last.start) // seq_len)
    if last.shape in ("linear", "cosine"):  # the decay starts where Megatron's warmup ends
        return flags | dict(lr_decay_style=last.shape, warmup=s(last.start))
    # exponential: an infinite schedule's anneal, its earlier phases laid over [0, start) and flat
    # (cooling from LR_max to constant_lr = LR_max); it needs a start past sample 0 and a floor > 0
    begins = s(last.start)
    if begins == 0 or not 0 < last.lr_to < last.lr_from:
        raise refuse(f"an exponential decay to {last.lr_to:g} from the first sample Megatron counts (it is an "
                     "infinite schedule's anneal there: it needs earlier samples and a final LR above 0)")
    return flags | dict(lr_decay_style="infinite-cosine", warmup=0, constant_lr=last.lr_from, timescale=10.0,
                        cooldown=begins, constant=0)


def megatron_args(phases: dict, gbs: int) -> dict:
    """The phases as Megatron's arguments: lengths become fractions of the decay samples
    D = lr_decay_iters x global batch (rounded to whole iterations, where the fractions refer)."""
    decay_iters = max(1, round(phases["decay"] / gbs))
    D = decay_iters * gbs
    args = {k: v for k, v in phases.items() if k not in ("warmup", "decay", "cooldown", "constant", "plus_cooldown")}
    args |= dict(lr_warmup_fraction=phases["warmup"] / D, lr_decay_iters=decay_iters, global_batch=gbs)
    if "cooldown" in phases:
        args |= dict(lr_cooldown_fraction=phases["cooldown"] / D, lr_constant_fraction=phases["constant"] / D)
    if "plus_cooldown" in phases:
        args |= dict(lr_constant_plus_cooldown=True, lr_constant_plus_cooldown_frac=phases["plus_cooldown"] / D)
    return args


