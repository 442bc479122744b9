"""A stage's guard and the cookbook's fallback ladder (`guard:` on a stage).

The guard (train/forgetting.py) watches an old source's validation loss during the stage (and a
task's score at its end). When it fails, the stage rolls back to where it started and runs again
with the next strategy of its ladder (train/attempts.py). The ladder is the recipe's own list of
presets, or the cookbook's for the stage's position:

- before any buffer exists (stage 1 -> 2): naive, 5% replay, 25% replay;
- with a buffer (stage 2 -> 3): 5% replay, 30% replay, buffer mixes A, B, C;
- a cooldown with a mix (stage 3 -> 4): cooldown mixes A, B.

The stage as written is attempt 0; attempt k runs the ladder's k-th strategy after the stage's
own (rungs at or before it are skipped). An attempt is a rewrite of the recipe's raw data (the
stage's `strategy`, its hand-made `mix` dropped), validated like any recipe when it loads, so
every rung is checked before any work.
"""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field, TypeAdapter, model_validator

from .config import MAX_TOKENS, Strict
from .errors import CptError, RecipeError, unknown_name
from .presets import NAMES, Strategy


class GuardCfg(Strict):
    source: str | None = None  # an old source whose validation loss is watched
    max_rise: float | None = Field(None, gt=0, le=100)  # nats over the stage's start, at any check
    recover_within: float | None = Field(None, gt=0, le=1)  # back at or under the start by this share of the stage
    every_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)  # checks (default: 20 per stage)
    task: str | None = None  # an `evals:` task whose score at the stage's end ...
    min_score: float | None = None  # ... must be at least this
    ladder: list[str | dict] | None = None  # strategies to fall back on (default: the cookbook's)
    keep: Literal["first-last", "all"] = "first-last"  # a failed attempt's checkpoints
    # set when the recipe loads (resolve_ladders), not by the user: the stage as written, its tokens
    stage: str | None = None
    stage_tokens: int | None = None

    @model_validator(mode="after")
    def _something_to_check(self):
        if self.source is None and self.task is None:
            raise ValueError("give a `source` (with max_rise and/or recover_within) or a `task` (with min_score)")
        if self.source is not None and self.max_rise is None and self.recover_within is None:
            raise ValueError(f"source `{self.source}`: give max_rise and/or recover_within")
        if (self.task is None) != (self.min_score is None):
            raise ValueError("`task` and `min_score` go together")
        return self


ATTEMPTS_FILE = "attempts.json"  # in the run folder (train/attempts.py)
FIRST = ["naive", {"name": "replay", "alpha0": 0.05}, {"name": "replay", "alpha0": 0.25}]
WITH_BUFFER = [{"name": "replay", "alpha0": 0.05}, {"name": "replay", "alpha0": 0.3},
               {"name": "buffer-mix", "mix": "A"}, {"name": "buffer-mix", "mix": "B"}, {"name": "buffer-mix", "mix": "C"}]
COOLDOWN = [{"name": "cooldown-mix", "mix": "A"}, {"name": "cooldown-mix", "mix": "B"}]
_STRATEGY = TypeAdapter(Strategy)


def _same(a, b) -> bool:
    try:
        return _STRATEGY.validate_python(a) == _STRATEGY.validate_python(b)
    except ValueError:
        return False


def _weaker(rung, own) -> bool:
    """A rung that replays no more of D0 than the stage's own replay (never a step back)."""
    try:
        mine, r = _STRATEGY.validate_python(own), _STRATEGY.validate_python(rung)
    except ValueError:
        return False
    level = {"naive": 0.0, "replay": getattr(r, "alpha0", 0.0)}
    return mine.name == "replay" and r.name in level and level[r.name] <= mine.alpha0


def describe(entry) -> str:
    """`replay(alpha0=0.25)`; a stage without a strategy is its hand-made `mix`."""
    if entry is None:
        return "mix as written"
    if isinstance(entry, str):
        return entry
    args = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "name")
    return f"{entry.get('name')}({args})" if args else str(entry.get("name"))


def ladders(data: dict) -> dict[str, list]:
    """Per guarded stage (by name) of a raw recipe: its attempts' strategies, the stage's own first
    (None: its hand-made mix)."""
    out, stages = {}, data.get("stages") or []
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or not isinstance(st.get("guard"), dict):
            continue
        own, given = st.get("strategy"), st["guard"].get("ladder")
        if given is not None:
            out[str(st.get("name"))] = [own, *given]
            continue
        name = own if isinstance(own, str) else (own or {}).get("name")
        buffered = any(isinstance(s, dict) and s.get("buffer_add") for s in stages[:i])
        rungs = COOLDOWN if name == "cooldown-mix" else WITH_BUFFER if buffered else FIRST
        at = next((k for k, r in enumerate(rungs) if own is not None and _same(r, own)), -1)
        rungs = rungs[at + 1:] if at >= 0 else [r for r in rungs if not _weaker(r, own)]
        out[str(st.get("name"))] = [own, *rungs]
    return out


def with_attempts(data: dict, attempts: dict[str, int]) -> dict:
    """The raw recipe with each named stage running its attempt's strategy."""
    data, table = copy.deepcopy(data), ladders(data)
    for name, k in attempts.items():
        if name not in table:
            raise CptError(f"{ATTEMPTS_FILE} names stage `{name}`, which has no guard in the recipe; resume with "
                           "the recipe the run started with")
        if not 0 <= k < len(table[name]):
            raise CptError(f"stage {name}: every strategy of its guard's ladder failed "
                           f"({', '.join(describe(r) for r in table[name])}); each attempt is in attempts/ "
                           "beside attempts.json; change the stage or its guard and start a new --out")
    for st in data.get("stages") or []:
        k = attempts.get(str(st.get("name")), 0) if isinstance(st, dict) else 0
        if k:
            st["strategy"] = copy.deepcopy(table[str(st["name"])][k])
            st.pop("mix", None)  # the preset sets it
    return data


def check_guard(guard: GuardCfg | None, where: str, sources, evals, new) -> list[str]:
    """What the recipe can check by names; each rung is then checked by loading it (recipe.py)."""
    if guard is None:
        return []
    problems = []
    if guard.stage is not None or guard.stage_tokens is not None:
        problems.append(f"{where}: `stage` and `stage_tokens` are set by cpt; remove them")
    if guard.source is not None and guard.source not in sources:
        problems.append(f"{where}.source: {unknown_name('source', guard.source, sources)}")
    if guard.task is not None and guard.task not in evals:
        problems.append(f"{where}.task: {unknown_name('task', guard.task, evals)} (tasks are listed in `evals:`)")
    elif guard.task is not None and evals[guard.task].kind == "perplexity":
        problems.append(f"{where}.task: `{guard.task}` is bits per byte (lower is better); a floor needs a score")
    for k, rung in enumerate(guard.ladder or []):
        name = rung if isinstance(rung, str) else rung.get("name")
        if name not in NAMES:
            problems.append(f"{where}.ladder[{k}]: {unknown_name('preset', str(name), NAMES)}")
    if not new:
        problems.append(f"{where}: the ladder's strategies need the stage's new data (Di): new: [source, ...]")
    return problems


def check_rungs(data: dict, validated) -> None:
    """Every rung of every ladder loads as a recipe (`validated(raw) -> Recipe`, raising
    `RecipeError`), named in the error: a bad rung is found before any work, not after a rollback."""
    for name, rungs in ladders(data).items():
        for k, rung in enumerate(rungs[1:], 1):
            try:
                validated(with_attempts(data, {name: k}))
            except RecipeError as e:
                raise RecipeError(e.path, [f"stage {name}, guard ladder rung {k} ({describe(rung)}): {q}"
                                           for q in e.problems]) from None


def written_names(data: dict) -> list[str]:
    return [str(st.get("name")) for st in data.get("stages") or [] if isinstance(st, dict)]


def group(name: str, guarded, written) -> str | None:
    """The guarded stage as written that a stage of the expanded recipe is (`shift`) or came from
    (`shift.base`, `shift.eeve1`); a stage the recipe itself names is its own."""
    if name in guarded:
        return name
    if name in written:
        return None
    return max((n for n in guarded if name.startswith(n + ".")), key=len, default=None)


def resolve_ladders(recipe, data: dict, attempts: dict[str, int]):
    """The recipe with each guard spelled out: `ladder`, the rungs after the one running now (so
    the plan can print it; the default depends on the stage's position); `stage` and
    `stage_tokens`, the stage as written and all its tokens (a preset that expands into several
    stages is guarded as one)."""
    table, written = ladders(data), written_names(data)
    of = [group(st.name, table, written) if st.guard is not None else None for st in recipe.stages]
    tokens = {name: sum(st.tokens for st, g in zip(recipe.stages, of) if g == name) for name in table}
    stages = []
    for st, name in zip(recipe.stages, of):
        if name is not None:
            update = {"ladder": table[name][attempts.get(name, 0) + 1:], "stage": name, "stage_tokens": tokens[name]}
            st = st.model_copy(update={"guard": st.guard.model_copy(update=update)})
        stages.append(st)
    return recipe.model_copy(update={"stages": stages})


def guard_words(g: GuardCfg) -> str:
    """The guard and its ladder in one line, as `cpt plan` prints it."""
    checks = []
    if g.max_rise is not None:
        checks.append(f"{g.source} loss may rise at most {g.max_rise:g} nats over the stage's start")
    if g.recover_within is not None:
        checks.append(f"{g.source} back at its start within {g.recover_within:.0%} of the stage")
    if g.task is not None:
        checks.append(f"{g.task} at least {g.min_score:g} at the end")
    ladder = " -> ".join(describe(r) for r in g.ladder or []) or "none (the stage stops)"
    return f"guard: {'; '.join(checks)}; on failure, roll back and try: {ladder}"
