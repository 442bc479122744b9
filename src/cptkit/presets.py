"""The cookbook's CPT strategies as stage presets: `strategy: replay` instead of a mix by hand.

A stage with `strategy:` names its new data in `new:` (Di); D0 is the recipe's `base_sources`;
B is the replay buffer. Each preset expands, when the recipe is loaded, into plain stages (a mix
and a schedule), so training, `cpt plan` and `cpt schedule` see exactly what will run. A share of
D0 or Di is split equally between the sources listed there.

| preset | mix (D0 / Di / B) | schedule |
|---|---|---|
| naive | 0 / 1 / 0 | the stage's own (default: hold the LR where it starts) |
| replay | alpha0 / 1 - alpha0 / 0 (alpha0 0.05) | the stage's own |
| buffer-mix | A .33/.33/.34, B .05/.48/.47, C 0/.10/.90 | the stage's own |
| strategy4 | 1 / 0 / 0 until the LR reaches switch_at, then alpha0 / 1 - alpha0 / 0 | decay from the start LR to LR/N |
| strategy5 | alpha0 / 1 - alpha0 / 0 | rewarm to `peak`, re-decay |
| cooldown-mix | A .33/.33/.34, B .05/.47/.48 | cooldown to `to` |
| rewarm-replay | alpha0 / 1 - alpha0 / 0 (alpha0 0.05) | rewarm to `peak`, re-decay (Ibrahim et al.) |
| eeve | the stage's own `mix` | the stage's own, over EEVE's 7 stages (4 when tied) of `trainable` |
| anneal | `mix`, or the previous mix with a tag's sources upweighted to a share | hold, then decay to `to` |

`wsm` and `soup-with-base` are presets of merge stages (merging.py).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import AfterValidator, BeforeValidator, Field

from .config import MAX_TOKENS, Strict
from .merging import SoupWithBase, Wsm, expand_merge
from .schedules import (ContinueSchedule, CooldownSchedule, FloorLR, Fraction, PositiveLR, RewarmSchedule, Segment,
                        Shape, WSDSchedule, plan_segments, step_lr)

if TYPE_CHECKING:
    from .recipe import Recipe, StageCfg

BUFFER_MIXES = {"A": (0.33, 0.33, 0.34), "B": (0.05, 0.48, 0.47), "C": (0.0, 0.10, 0.90)}
COOLDOWN_MIXES = {"A": (0.33, 0.33, 0.34), "B": (0.05, 0.47, 0.48)}
Share = Annotated[float, Field(ge=0, le=1)]
Weights = tuple[Share, Share, Share]


class Naive(Strict):
    name: Literal["naive"]


class Replay(Strict):
    name: Literal["replay"]
    alpha0: Share = 0.05  # the cookbook: 0.05 is a safe start; 0.25-0.30 if forgetting shows


class BufferMix(Strict):
    name: Literal["buffer-mix"]
    mix: Literal["A", "B", "C"] | Weights = "A"


class Strategy4(Strict):
    """From a pre-cooldown checkpoint: decay on D0 alone from the start LR to LR/N, and switch to
    alpha0 D0 + (1 - alpha0) Di at the first step whose LR is at or below `switch_at` (default
    LR/5), continuing the same decay (Parmar et al. 2024)."""

    name: Literal["strategy4"]
    N: float = Field(10.0, gt=1, le=1e6)
    switch_at: PositiveLR | None = None
    alpha0: Share = 0.7
    shape: Shape = "cosine"


class Strategy5(Strict):
    """From a converged checkpoint: rewarm to `peak`, re-decay, with more pretraining data."""

    name: Literal["strategy5"]
    peak: PositiveLR
    alpha0: Share
    warmup: Fraction = 0.01


class CooldownMix(Strict):
    name: Literal["cooldown-mix"]
    mix: Literal["A", "B"] | Weights = "A"
    shape: Shape = "1-sqrt"
    to: FloorLR = 0.0


class RewarmReplay(Strict):
    """For a model trained with a cosine to the end (Ibrahim et al. 2024): rewarm over `warmup` to
    `peak`, cosine to 0.1 x peak, replaying alpha0 of D0."""

    name: Literal["rewarm-replay"]
    peak: PositiveLR
    warmup: Fraction = 0.01
    alpha0: Share = 0.05


class Eeve(Strict):
    """EEVE's stages for a model whose vocabulary `cpt vocab init` extended (Kim et al. 2024): from
    the new input rows through all parameters to the layers alone, on the stage's own `mix`. One
    schedule runs over all of them (the later ones continue its curve). `tokens`: each stage's
    budget (default: the stage's tokens split evenly, in whole steps)."""

    name: Literal["eeve"]
    tokens: list[Annotated[int, Field(gt=0, le=MAX_TOKENS)]] | None = None


def _key_value(tag: str) -> str:
    key, eq, value = tag.partition("=")
    if not (eq and key.strip() and value.strip()):
        raise ValueError(f"`{tag}` is not key=value; name a tag as a source's `tags:` give it, e.g. quality=high")
    return tag


class Upweight(Strict):
    """The sources carrying `tag` (`key=value`, a source's `tags:`) together get `share`."""

    tag: Annotated[str, AfterValidator(_key_value)]
    share: Annotated[float, Field(gt=0, lt=1)]

    def matches(self, tags: dict[str, str]) -> bool:
        key, value = self.tag.split("=", 1)
        return str(tags.get(key.strip())) == value.strip()


class Anneal(Strict):
    """Annealing as SmolLM2 and OLMo 2 do it: the LR decays to `to` over the last `decay` of the
    stage (`shape`), while a new mix is in force: `mix` (weights), or the previous stage's mix with
    the sources carrying a tag `upweight`ed to a share."""

    name: Literal["anneal"]
    shape: Shape = "linear"
    decay: Annotated[float, Field(gt=0, le=1)] = 1.0
    to: FloorLR = 0.0
    mix: dict[str, Share] | None = None
    upweight: Upweight | None = None


# (suffix, trainable) of EEVE's seven stages; with tied embeddings input and output rows are one
# matrix, so stages 1-3 and 4-5 collapse (the grouping of VinaSmol's SmolLM2 recipe)
EEVE_STAGES = (("eeve1", ["new_input_rows"]), ("eeve2", ["new_output_rows"]),
               ("eeve3", ["new_input_rows", "new_output_rows"]), ("eeve4", ["output_embeddings"]),
               ("eeve5", ["new_input_rows", "output_embeddings"]), ("eeve6", ["all"]), ("eeve7", ["layers", "norms"]))
EEVE_TIED = (("eeve1-3", ["new_input_rows"]), ("eeve4-5", ["input_embeddings"]), ("eeve6", ["all"]),
             ("eeve7", ["layers", "norms"]))


def _by_name(value):
    """`strategy: naive` is short for `strategy: {name: naive}`."""
    return {"name": value} if isinstance(value, str) else value


Strategy = Annotated[
    Union[Naive, Replay, BufferMix, Strategy4, Strategy5, CooldownMix, RewarmReplay, Eeve, Anneal, Wsm, SoupWithBase],
    Field(discriminator="name"), BeforeValidator(_by_name),
]
NAMES = ("naive", "replay", "buffer-mix", "strategy4", "strategy5", "cooldown-mix", "rewarm-replay", "eeve", "anneal",
         "wsm", "soup-with-base")
SETS_SCHEDULE = (Strategy4, Strategy5, CooldownMix, RewarmReplay, Anneal)


def check_stage(r: Recipe, st: StageCfg, where: str, buffer_filled: bool) -> list[str]:
    """What a preset needs before it can expand: no hand-made mix, Di, D0, the buffer, weights."""
    s, problems = st.strategy, []
    p = problems.append
    if isinstance(s, Eeve):
        return _check_eeve(r, st, where)
    if st.mix is not None:
        p(f"{where}.mix: the strategy `{s.name}` sets the mix; remove `mix` (or drop `strategy`)")
    if isinstance(s, SETS_SCHEDULE) and "schedule" in st.model_fields_set:
        p(f"{where}.schedule: the strategy `{s.name}` sets the schedule; remove `schedule`")
    if isinstance(s, Anneal):
        return problems + _check_anneal(r, st, where)
    if not st.new:
        p(f"{where}.new: the strategy `{s.name}` needs the stage's new data (Di): new: [source, ...]")
    weights = _weights(s)
    if weights[0] > 0 and not r.base_sources:
        p(f"{where}.strategy: `{s.name}` replays D0; list the base model's data in `base_sources`")
    if weights[2] > 0 and not buffer_filled:
        p(f"{where}.strategy: `{s.name}` mixes in the replay buffer, which is empty here; "
          "an earlier stage needs `buffer_add`")
    if abs(sum(weights) - 1) > 1e-6:
        p(f"{where}.strategy.mix: weights {list(weights)} sum to {sum(weights):g}; they must sum to 1")
    return problems


def _check_anneal(r: Recipe, st: StageCfg, where: str) -> list[str]:
    """A target: weights, or a tag some source carries and a stage before whose mix it reweights.
    The weights themselves are checked as any mix once the stage expands."""
    s = st.strategy
    if (s.mix is None) == (s.upweight is None):
        return [f"{where}.strategy: give anneal exactly one of `mix` (target weights) or `upweight` "
                "({tag: key=value, share: s})"]
    if s.upweight is None:
        return []
    problems = []
    if not any(s.upweight.matches(src.tags) for src in r.sources.values()):
        carried = sorted({f"{k}={v}" for src in r.sources.values() for k, v in src.tags.items()})
        problems.append(f"{where}.strategy.upweight.tag: no source carries `{s.upweight.tag}` (tags in this recipe: "
                        f"{', '.join(carried) or 'none'}); add it to a source's `tags:`")
    if not any(x.kind == "train" for x in r.stages[:r.stages.index(st)]):
        problems.append(f"{where}.strategy.upweight: no stage before this one has a mix to reweight; give `mix`")
    return problems


def _anneal(r: Recipe, st: StageCfg, before: list[StageCfg]) -> StageCfg:
    """The annealing stage: its mix (given, or the last training stage's with the tagged sources
    upweighted) and its decay."""
    s = st.strategy
    mix = dict(s.mix) if s.mix is not None else upweighted(r, [x for x in before if x.kind == "train"][-1].mix,
                                                            s.upweight)
    schedule = WSDSchedule(kind="wsd", decay=s.decay, shape=s.shape, min_lr=s.to)
    return st.model_copy(update={"mix": mix, "schedule": schedule})


def upweighted(r: Recipe, previous: dict[str, float], up: Upweight) -> dict[str, float]:
    """`previous` with the sources carrying the tag at `up.share` together (in proportion to their
    previous weights; a tagged source the previous mix lacked counts as the tagged ones' mean, or
    1 when none had weight) and the others scaled to the rest, in proportion."""
    from .recipe import BUFFER

    tagged = [n for n, src in r.sources.items() if up.matches(src.tags)]
    had = [previous[n] for n in tagged if previous.get(n, 0) > 0]
    fill = sum(had) / len(had) if had else 1.0
    raw = {n: previous.get(n, 0) if previous.get(n, 0) > 0 else fill for n in tagged}
    rest = {n: w for n, w in previous.items() if n not in raw and (n == BUFFER or n in r.sources)}
    mix = {n: up.share * w / sum(raw.values()) for n, w in raw.items()}
    if sum(rest.values()) > 0:
        mix |= {n: (1 - up.share) * w / sum(rest.values()) for n, w in rest.items()}
    else:  # the previous mix was all tagged sources: they keep everything
        mix = {n: w / up.share for n, w in mix.items()}
    order = list(previous) + [n for n in tagged if n not in previous]  # as the stage before had them
    return {n: mix[n] for n in order if mix.get(n, 0) > 0}


def _check_eeve(r: Recipe, st: StageCfg, where: str) -> list[str]:
    """The stage's own mix is checked as any mix; here what EEVE needs besides."""
    from .recipe import VOCAB_EXTENSION

    problems = []
    if "trainable" in st.model_fields_set:
        problems.append(f"{where}.trainable: the strategy `eeve` sets what each of its stages trains; remove `trainable`")
    if r.model.path is None or not (r.model.path / VOCAB_EXTENSION).is_file():
        problems.append(f"{where}.strategy: `eeve` trains the rows of added tokens, but the model has no "
                        f"{VOCAB_EXTENSION}; extend it first (cpt vocab extend, then cpt vocab init)")
        return problems
    try:
        n = len(eeve_stages(r))
    except Exception as e:  # transformers raises many types for an unreadable config
        return problems + [f"model.path: cannot read {r.model.path / 'config.json'} ({type(e).__name__})"]
    budgets, batch = st.strategy.tokens, r.stage_batch(st)
    if budgets is None and r.stage_steps(st) < n:
        problems.append(f"{where}.tokens: {r.stage_steps(st)} steps cannot be split over {n} EEVE stages; raise tokens")
    elif budgets is not None and len(budgets) != n:
        problems.append(f"{where}.strategy.tokens: {len(budgets)} budgets for {n} EEVE stages "
                        f"({'tied' if n == 4 else 'untied'} embeddings)")
    elif budgets is not None and (sum(budgets) != st.tokens or min(budgets) < batch):
        problems.append(f"{where}.strategy.tokens: budgets {budgets} must each be at least one step ({batch} tokens) "
                        f"and sum to the stage's tokens ({st.tokens})")
    return problems


def eeve_stages(r: Recipe) -> tuple:
    """The seven stages, or the four of a model whose input and output embeddings are tied."""
    from transformers import AutoConfig  # its defaults decide when config.json omits the key

    tied = AutoConfig.from_pretrained(str(r.model.path)).tie_word_embeddings
    return EEVE_TIED if tied else EEVE_STAGES


def _weights(s) -> tuple[float, float, float]:
    """(alpha0, alphaD, alphaB) of the mix the preset trains on (after Strategy 4's switch)."""
    if isinstance(s, Naive):
        return 0.0, 1.0, 0.0
    if isinstance(s, (BufferMix, CooldownMix)):
        table = BUFFER_MIXES if isinstance(s, BufferMix) else COOLDOWN_MIXES
        return table[s.mix] if isinstance(s.mix, str) else tuple(s.mix)
    return s.alpha0, 1.0 - s.alpha0, 0.0


def _mix(r: Recipe, st: StageCfg, weights: tuple[float, float, float]) -> dict[str, float]:
    """Named weights: D0's share split over base_sources, Di's over `new`; zero shares dropped."""
    from .recipe import BUFFER

    mix: dict[str, float] = {}
    for names, w in ((r.base_sources, weights[0]), (st.new, weights[1]), ([BUFFER], weights[2])):
        for name in names:
            if w > 0:
                mix[name] = mix.get(name, 0.0) + w / len(names)
    return mix


def expand(r: Recipe) -> tuple[Recipe, list[str]]:
    """The recipe with every preset stage replaced by the plain stages it stands for, and the
    problems found on the way (a Strategy 4 threshold the decay never reaches)."""
    out: list[StageCfg] = []
    problems: list[str] = []
    for i, st in enumerate(r.stages):
        s, first = st.strategy, len(out)
        if st.kind == "merge":  # its checkpoints may be named by the stages expanded so far
            done = r.model_copy(update={"stages": out})
            merged, problem = expand_merge(done, st, plan_segments(done), r, f"stages[{i}]")
            out.append(merged)
            problems += [problem] if problem else []
        elif s is None:
            out.append(st)
        elif isinstance(s, Eeve):
            out += _eeve(r, st)
        elif isinstance(s, Anneal):
            out.append(_anneal(r, st, out))
        elif isinstance(s, Strategy4):
            stages, problem = _strategy4(r.model_copy(update={"stages": out + [st]}), st, f"stages[{i}]")
            out += stages
            problems += [problem] if problem else []
        else:
            update = {"mix": _mix(r, st, _weights(s))}
            if isinstance(s, (Strategy5, RewarmReplay)):
                update["schedule"] = RewarmSchedule(kind="rewarm", lr=s.peak, warmup=s.warmup)
            elif isinstance(s, CooldownMix):
                update["schedule"] = CooldownSchedule(kind="cooldown", shape=s.shape, to=s.to)
            out.append(st.model_copy(update=update))
        # a stage that expands into several up-scales once, at the first of them
        out[first + 1:] = [x.model_copy(update={"upscale": None}) for x in out[first + 1:]]
    return r.model_copy(update={"stages": out}), problems


def _strategy4(r: Recipe, st: StageCfg, where: str) -> tuple[list[StageCfg], str | None]:
    """Two stages sharing one decay: `<name>.base` on D0 alone, then `<name>` on the mix from the
    first step whose LR is at or below the threshold."""
    s = st.strategy
    def with_decay(to: float) -> tuple[CooldownSchedule, Segment]:
        decay = CooldownSchedule(kind="cooldown", shape=s.shape, to=to)
        probe = r.model_copy(update={"stages": r.stages[:-1] + [st.model_copy(update={"schedule": decay, "mix": {}})]})
        return decay, plan_segments(probe)[-1]

    start = with_decay(0.0)[1].start_lr  # LR_max: where the stage starts (its checkpoint's LR)
    floor, threshold = start / s.N, s.switch_at or start / 5
    decay, seg = with_decay(floor)
    batch, steps = r.stage_batch(st), r.stage_steps(st)
    # the decay never rises, so the first step at or below the threshold is found by bisection
    # (a stage may have ~10^14 steps)
    switch = bisect_left(range(steps), True, key=lambda k: step_lr(seg, k, batch) <= threshold)
    switch = None if switch == steps else switch
    if threshold >= start:
        return [], (f"{where}.strategy.switch_at: {threshold:g} is at or above the LR the stage starts at "
                    f"({start:g}), so nothing would train on D0 alone; lower switch_at")
    if threshold < floor or switch is None:
        return [], (f"{where}.strategy.switch_at: the LR decays from {start:g} to {floor:g} (LR/N) and never "
                    f"reaches {threshold:g}; raise switch_at above {floor:g} or raise N")
    if switch == 0:
        return [], (f"{where}.strategy.switch_at: the first step's LR is already at or below {threshold:g}; "
                    "lower switch_at or give the stage more tokens")
    base = st.model_copy(update={"name": f"{st.name}.base", "tokens": switch * batch, "schedule": decay,
                                 "mix": _mix(r, st, (1.0, 0.0, 0.0)), "buffer_add": None, "new": []})
    # the switch is mid-decay: the optimizer goes on as it is (a reset here would wipe the moments)
    mixed = st.model_copy(update={"tokens": (steps - switch) * batch, "init": "previous", "optimizer_state": "keep",
                                  "schedule": ContinueSchedule(kind="continue"),
                                  "mix": _mix(r, st, _weights(s))})
    return [base, mixed], None


def _eeve(r: Recipe, st: StageCfg) -> list[StageCfg]:
    """`<name>.eeve1` ... `<name>.eeve6`, then `<name>` (stage 7, so that later stages can start
    from `<name>@final`): the first takes the stage's init, schedule and optimizer policy, the
    others continue from it; `buffer_add` happens after the last. All measure adaptation on the
    stage's new data (`new:`, else its mix's sources outside `base_sources`). A `relora:` applies
    to the stages that train the layers (6 and 7), as the Vietnamese recipe asks."""
    from .recipe import BUFFER

    plan = eeve_stages(r)
    batch = r.stage_batch(st)
    budgets = st.strategy.tokens or [batch * k for k in _split(r.stage_steps(st), len(plan))]
    new = st.new or [n for n in st.mix if n not in r.base_sources and n != BUFFER]
    out = []
    for k, ((suffix, trainable), tokens) in enumerate(zip(plan, budgets)):
        later = {} if k == 0 else {"init": "previous", "schedule": ContinueSchedule(kind="continue"),
                                   "optimizer_state": "keep"}
        last = k == len(plan) - 1
        layers = {"all", "layers"} & set(trainable)  # ReLoRA (the recipe's stages 6 and 7) trains the layers
        out.append(st.model_copy(update={"name": st.name if last else f"{st.name}.{suffix}", "tokens": tokens,
                                         "trainable": trainable, "new": new,
                                         "relora": st.relora if layers else None,
                                         "buffer_add": st.buffer_add if last else None, **later}))
    return out


def _split(steps: int, n: int) -> list[int]:
    """n whole-step shares of `steps`, the remainder going to the last ones."""
    q, rem = divmod(steps, n)
    return [q + (1 if i >= n - rem else 0) for i in range(n)]
