"""What a recipe will run, stage by stage: tokens per source, epochs, unique and repeated tokens,
the LR at each end, and warnings. Printed by `cpt plan` (a dry run, no model) and by `cpt run`.

The numbers come from the same exact mixture the training loop uses (per-source cursors carried
across stages), so "source X is read 6.2 times by the end of stage 3" is what will happen, not an
estimate — except where a source's size itself is estimated because it is not tokenized yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .ladder import guard_words
from .data.mixture import StageMixture
from .data.packing import carry
from .merging import merge_weights
from .recipe import BUFFER, Recipe, budget_tokens
from .report.summary import source_roles
from .presets import Strategy4
from .schedules import ConstantSchedule, ContinueSchedule, InfiniteSchedule, Segment, WSDSchedule, step_lr

# schedules that hold the LR a stage inherits (when they name no `lr`) instead of warming or decaying
HOLDING = (ConstantSchedule, WSDSchedule, InfiniteSchedule)


def checkpoint_phase(path) -> str | None:
    """The schedule phase stored with a checkpoint folder (warmup, hold, decay, converged)."""
    try:
        return json.loads((path / "meta.json").read_text()).get("phase")
    except (OSError, ValueError):
        return None

SMALL_NEW = 0.25  # the cookbook: a new dataset "considerably smaller" than the data before it
HEAVY_NEW = 0.5  # ...that still carries most of the stage's weight


@dataclass(frozen=True)
class SourceSize:
    samples_per_epoch: int  # what the mixture draws from (training documents, packed)
    tokens: int  # training tokens of one pass
    exact: bool = True  # False: estimated from a sample of the files
    distinct: int | None = None  # tokens of the distinct documents, when long ones are upsampled


@dataclass
class SourceUse:
    name: str
    weight: float
    samples: int  # drawn in this stage
    tokens: int
    unique: int  # tokens this stage reads for the first time
    repeated: int
    epochs_end: float  # passes over the source by the end of the stage


@dataclass
class StagePlan:
    name: str
    steps: int
    tokens: int
    lr_start: float
    lr_end: float
    schedule: str  # the segment in words
    batch: int  # tokens per step
    scale: float  # lr_scaling factor on the inherited LR
    seq_len: int = 0  # tokens per sample
    uses: list[SourceUse] = field(default_factory=list)


def seen(samples: int, size: SourceSize, seq_len: int) -> tuple[int, int]:
    """(unique, repeated) tokens among the first `samples` samples of a source. With upsampled
    long documents an epoch already repeats some: its unique share is distinct / epoch tokens."""
    unique = min(samples, size.samples_per_epoch) * seq_len
    if size.distinct is not None and size.distinct < size.tokens:
        unique = unique * size.distinct // size.tokens
    return unique, samples * seq_len - unique


def plan_stages(recipe: Recipe, segments: list[Segment], sizes: dict[str, SourceSize]) -> list[StagePlan]:
    """Walk the stages with the training loop's own cursors; the buffer's size grows by each
    `buffer_add` (each version is a fresh stream, as in training)."""
    cursors: dict[str, int] = {}
    buffer_tokens, version = 0, 0
    epoch_tokens: dict[str, int] = {}  # per stream, to carry its cursor to another seq_len
    plans = []
    for i, (st, seg) in enumerate(zip(recipe.stages, segments)):
        streams = [f"{BUFFER}@v{version}" if n == BUFFER else n for n in st.mix]
        steps, batch, length = recipe.stage_steps(st), recipe.stage_batch(st), recipe.stage_len(st)
        mixture = StageMixture(streams, list(st.mix.values()), steps, recipe.stage_samples(st), cursors)
        plan = StagePlan(st.name, steps, steps * batch, step_lr(seg, 0, batch), seg.end_lr,
                         f"{seg.kind}: {seg.describe()}", batch, seg.scale, length)
        for name, stream, (w, n) in zip(st.mix, streams, zip(st.mix.values(), mixture.counts().values())):
            size = at_len(sizes[name] if name != BUFFER else _buffer_size(buffer_tokens, recipe.seq_len), length)
            epoch_tokens[stream] = size.tokens
            before, after = cursors.get(stream, 0), cursors.get(stream, 0) + n
            (u0, r0), (u1, r1) = seen(before, size, length), seen(after, size, length)
            plan.uses.append(SourceUse(name, w, n, n * length, u1 - u0, r1 - r0, after / size.samples_per_epoch))
        following = recipe.stage_len(recipe.stages[min(i + 1, len(recipe.stages) - 1)])
        cursors = {k: carry(c, epoch_tokens[k], length, following) for k, c in mixture.cursors_after().items()}
        if st.buffer_add is not None:
            buffer_tokens += budget_tokens(st.buffer_add, _distinct(sizes[st.buffer_add.source]))
            version += 1
        plans.append(plan)
    return plans


def at_len(size: SourceSize, seq_len: int) -> SourceSize:
    """A source's size counted in samples of another length (the same epoch tokens)."""
    return SourceSize(max(1, size.tokens // seq_len), size.tokens, size.exact, size.distinct)


def _distinct(size: SourceSize) -> int:
    """A buffer's fraction is of the source's documents, each counted once (not upsampled copies)."""
    return size.tokens if size.distinct is None else size.distinct


def _buffer_size(tokens: int, seq_len: int) -> SourceSize:
    return SourceSize(max(1, tokens // seq_len), tokens)


def plan_warnings(recipe: Recipe, segments: list[Segment], plans: list[StagePlan], sizes: dict[str, SourceSize],
                  max_epochs: float) -> list[str]:
    out = start_point_warnings(recipe, segments) + shorter_context_warnings(recipe)
    for plan in plans:
        for use in plan.uses:
            if use.epochs_end > max_epochs:
                out.append(f"stage {plan.name}: source `{use.name}` is read {use.epochs_end:.1f} times by the end "
                           f"of this stage (more than {max_epochs:g} epochs); add data, lower its weight or the "
                           "stage's tokens (repeating data past ~4 epochs adds little, Muennighoff et al. 2023)")
    before = sum(sizes[n].tokens for n in recipe.base_sources)
    for st, plan, (new, _) in zip(recipe.stages, plans, source_roles(recipe)):
        for name in new:
            w = st.mix.get(name, 0.0)
            if before and name in sizes and sizes[name].tokens < SMALL_NEW * before and w >= HEAVY_NEW:
                out.append(f"stage {st.name}: new source `{name}` ({sizes[name].tokens:,} tokens) is much smaller "
                           f"than the data before it ({before:,} tokens) but has weight {w:g}; the cookbook: put "
                           "more weight on previous data (replay) when the new dataset is considerably smaller")
        before += plan.tokens
    return out


def shorter_context_warnings(recipe: Recipe) -> list[str]:
    """VinaSmol lost its 8k context when a later stage trained at 2048 and nobody noticed: a
    stage shorter than a context the plan extended to (with `rope:`) is pointed out."""
    out, longest, extended = [], recipe.seq_len, False
    for st in recipe.stages:
        if st.kind == "merge":
            continue
        length = recipe.stage_len(st)
        extended = extended or st.rope is not None
        if extended and length < longest:
            out.append(f"stage {st.name}: trains at seq_len {length:,}, shorter than the {longest:,} an earlier "
                       "stage extended the context to; long-context ability fades when it is not trained (give "
                       f"this stage seq_len: {longest}, or upsample long documents)")
        longest = max(longest, length) if extended else longest
    return out


def start_point_warnings(recipe: Recipe, segments: list[Segment]) -> list[str]:
    """The cookbook's first rule: continue from a checkpoint at LR_max, before any cooldown. A stage
    that holds the LR it inherits, starting from a cooled-down point, would hold the decayed LR; a
    Strategy 4 stage would decay from it (the cookbook: "take a checkpoint before cooldown")."""
    out = []
    for i, (st, seg) in enumerate(zip(recipe.stages, segments)):
        holds = isinstance(st.schedule, HOLDING) and getattr(st.schedule, "lr", None) is None
        # Strategy 4 decays from the LR where it starts: that has to be LR_max too
        strategy4 = isinstance(st.strategy, Strategy4) and not isinstance(st.schedule, ContinueSchedule)
        if not (holds or strategy4) or st.init == "base" or (i == 0 and st.init == "previous") or st.kind == "merge":
            continue
        if st.init_path is not None:
            phase = checkpoint_phase(st.init_path)
            pre = st.init_path.parent / f"{st.init_path.name.split('@')[0]}@pre-cooldown"
            instead = f"init: {pre}" if (pre / "meta.json").is_file() else "the checkpoint taken before its cooldown"
            origin = str(st.init_path)
        else:
            j = i - 1 if st.init == "previous" else recipe.stage_index(st.init_ref[0])
            if st.init_ref is not None and st.init_ref[1] == "pre-cooldown":
                continue
            src = segments[j]
            phase = src.phase(src.total)
            name = recipe.stages[j].name
            instead = f"init: {name}@pre-cooldown" if src.decay_start is not None else "a point before the decay"
            origin = f"{name}@final"
        if phase in ("decay", "converged"):
            what = "decays (Strategy 4) from the LR" if strategy4 else "continues at the held LR"
            out.append(f"stage {st.name}: {what} ({seg.start_lr:.3g}) but starts from {origin}, "
                       f"which is {phase} (cooled down); start from the checkpoint at LR_max instead ({instead}), "
                       "or rewarm (schedule kind rewarm / strategy5)")
    return out


def relora_line(c, total: int, step: int) -> str:
    """Where a ReLoRA stage's adapters go on, merge and come off, in stage tokens."""
    points = c.merge_points(total)
    shown = ", ".join(f"{t:,}" for t in points[:8]) + (f", ... ({len(points)} in all)" if len(points) > 8 else "")
    warm = f"full rank for {c.warm_start:,} tokens, then " if c.warm_start else ""
    rewarm = f"; LR re-warms over {c.rewarm_tokens(step):,} tokens after each" if c.rewarm_tokens(step) else ""
    return (f"relora: {warm}rank {c.rank} adapters on {', '.join(c.targets) if c.targets else 'attention and MLP linears'}; "
            f"merges at {shown or 'no point inside the stage'}{rewarm}; merged into the plain model at {total:,} "
            f"(prune {c.prune.method} {c.prune.ratio:g})")


def rope_words(rope) -> str:
    if rope is None:
        return ""
    parts = [] if rope.theta is None else [f"theta {rope.theta:g}"]
    parts += [] if rope.scaling is None else [f"{rope.scaling.type} x{rope.scaling.factor:g}"]
    return "; rope " + ", ".join(parts)


def format_plan(recipe: Recipe, plans: list[StagePlan], sizes: dict[str, SourceSize], warnings: list[str]) -> str:
    lines = [f"{len(plans)} stage(s); {recipe.batch_tokens:,} tokens per step "
             f"({recipe.accum_steps} x {recipe.micro_batch} x {recipe.seq_len})", "sources (training tokens):"]
    for name, size in sizes.items():
        lines.append(f"  {name}: {'' if size.exact else '~'}{size.tokens:,}"
                     + ("" if size.exact else " (estimated from a sample; not tokenized yet)"))
    for st, plan in zip(recipe.stages, plans):
        add = st.buffer_add
        extra = (f"; then {budget_tokens(add, _distinct(sizes[add.source])):,} tokens of {add.source} -> buffer "
                 f"({add.policy})" if add else "")
        if st.kind == "merge":
            pairs = ", ".join(f"{w:.4g} x {c}" for w, c in zip(merge_weights(st), st.checkpoints))
            lines.append(f"stage {plan.name}: merge ({st.method}) {pairs}; fresh optimizer moments")
            continue
        lines.append(f"stage {plan.name}: {plan.steps} steps, {plan.tokens:,} tokens, init {st.init}, "
                     f"lr {plan.lr_start:.3g} -> {plan.lr_end:.3g}{extra}")
        if st.upscale is not None:
            how = f"drop {st.upscale.drop} (SOLAR)" if st.upscale.drop is not None else f"layers {st.upscale.layers}"
            lines.append(f"    up-scaled at the start: {how}; fresh optimizer moments")
        if plan.seq_len != recipe.seq_len or st.rope is not None:
            lines.append(f"    seq_len {plan.seq_len:,}{rope_words(st.rope)}")
        if st.strategy is not None:
            params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in st.strategy.model_dump().items() if k != "name" and v is not None)
            lines.append(f"    from strategy {st.strategy.name}" + (f" ({params})" if params else ""))
            if st.strategy.name == "anneal":  # the mix it computed, in words
                lines.append("    anneal mix: " + ", ".join(f"{n} {w:.4g}" for n, w in st.mix.items()))
        if st.guard is not None:
            lines.append(f"    {guard_words(st.guard)}")
        if st.trainable != ["all"] or st.optimizer_state != "keep":
            rows = "; new rows start with fresh moments" if any(g.startswith("new_") for g in st.trainable) else ""
            lines.append(f"    trainable {', '.join(st.trainable)}; optimizer state {st.optimizer_state}{rows}")
        if plan.batch != recipe.batch_tokens or plan.scale != 1:
            lines.append(f"    batch {plan.batch:,} tokens per step; inherited LR x {plan.scale:.4g} ({st.lr_scaling})")
        lines.append(f"    lr {plan.schedule}")
        if st.relora is not None:
            lines.append(f"    {relora_line(st.relora, plan.tokens, plan.batch)}")
        for u in plan.uses:
            lines.append(f"    {u.name:<12} w {u.weight:<6g} {u.tokens:>14,} tokens  {u.unique:>14,} unique  "
                         f"{u.repeated:>14,} repeated  {u.epochs_end:6.2f} epochs at end")
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)
