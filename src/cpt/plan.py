"""A readable description of what a recipe will run, printed before training starts."""

from __future__ import annotations

from .recipe import Recipe
from .schedules import Segment, step_lr


def describe_plan(recipe: Recipe, segments: list[Segment]) -> str:
    lines = [f"{len(recipe.stages)} stage(s); {recipe.batch_tokens:,} tokens per step "
             f"({recipe.accum_steps} x {recipe.micro_batch} x {recipe.seq_len})"]
    for st, seg in zip(recipe.stages, segments):
        steps = recipe.stage_steps(st)
        mix = ", ".join(f"{n} {w:g}" for n, w in st.mix.items())
        lr = f"lr {step_lr(seg, 0, recipe.batch_tokens):.3g} -> {seg.end_lr:.3g} ({seg.kind})"
        extra = f"; then {st.buffer_add.tokens:,} tokens of {st.buffer_add.source} -> buffer" if st.buffer_add else ""
        lines.append(f"  {st.name}: {steps} steps, {steps * recipe.batch_tokens:,} tokens, init {st.init}; "
                     f"{mix}; {lr}{extra}")
    return "\n".join(lines)
