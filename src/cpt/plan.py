"""What a recipe will run, stage by stage: tokens per source, epochs, unique and repeated tokens,
the LR at each end, and warnings. Printed by `cpt plan` (a dry run, no model) and by `cpt run`.

The numbers come from the same exact mixture the training loop uses (per-source cursors carried
across stages), so "source X is read 6.2 times by the end of stage 3" is what will happen, not an
estimate — except where a source's size itself is estimated because it is not tokenized yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .data.mixture import StageMixture
from .recipe import BUFFER, Recipe, budget_tokens
from .report.summary import source_roles
from .schedules import Segment, step_lr

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
    schedule: str
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
    plans = []
    for st, seg in zip(recipe.stages, segments):
        streams = [f"{BUFFER}@v{version}" if n == BUFFER else n for n in st.mix]
        steps = recipe.stage_steps(st)
        mixture = StageMixture(streams, list(st.mix.values()), steps, recipe.samples_per_step, cursors)
        plan = StagePlan(st.name, steps, steps * recipe.batch_tokens, step_lr(seg, 0, recipe.batch_tokens),
                         seg.end_lr, seg.kind)
        for name, stream, (w, n) in zip(st.mix, streams, zip(st.mix.values(), mixture.counts().values())):
            size = sizes[name] if name != BUFFER else _buffer_size(buffer_tokens, recipe.seq_len)
            before, after = cursors.get(stream, 0), cursors.get(stream, 0) + n
            (u0, r0), (u1, r1) = seen(before, size, recipe.seq_len), seen(after, size, recipe.seq_len)
            plan.uses.append(SourceUse(name, w, n, n * recipe.seq_len, u1 - u0, r1 - r0,
                                       after / size.samples_per_epoch))
        cursors = mixture.cursors_after()
        if st.buffer_add is not None:
            buffer_tokens += budget_tokens(st.buffer_add, _distinct(sizes[st.buffer_add.source]))
            version += 1
        plans.append(plan)
    return plans


def _distinct(size: SourceSize) -> int:
    """A buffer's fraction is of the source's documents, each counted once (not upsampled copies)."""
    return size.tokens if size.distinct is None else size.distinct


def _buffer_size(tokens: int, seq_len: int) -> SourceSize:
    return SourceSize(max(1, tokens // seq_len), tokens)


def plan_warnings(recipe: Recipe, plans: list[StagePlan], sizes: dict[str, SourceSize],
                  max_epochs: float) -> list[str]:
    out = []
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
        lines.append(f"stage {plan.name}: {plan.steps} steps, {plan.tokens:,} tokens, init {st.init}, "
                     f"lr {plan.lr_start:.3g} -> {plan.lr_end:.3g} ({plan.schedule}){extra}")
        for u in plan.uses:
            lines.append(f"    {u.name:<12} w {u.weight:<6g} {u.tokens:>14,} tokens  {u.unique:>14,} unique  "
                         f"{u.repeated:>14,} repeated  {u.epochs_end:6.2f} epochs at end")
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)
