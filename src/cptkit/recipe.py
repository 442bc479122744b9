"""The recipe: one YAML file describing a whole multi-stage CPT plan, validated before any work.

Typed models reject unknown keys; `load_recipe` then runs the cross-field checks (mixes, buffer
order, budgets, `init:` references, files on disk) and reports *every* problem in one line that
names the recipe file and each field path.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, AfterValidator, model_validator

from . import merging, presets
from .config import MAX_SEQ_LEN, MAX_TOKENS, RecipeLoader, Strict, describe_error, read_json_object
from .data.sources import check_source
from .checkpoint.refs import check_point, parse_ref
from .errors import RecipeError
from .ladder import GuardCfg, check_guard, check_rungs, resolve_ladders, with_attempts
from .train.guard_cfg import NonFiniteCfg
from .train.monitor_cfg import MonitorCfg, check_monitor
from .model.init_check import check_init_config
from .model.relora_cfg import ReLoRACfg
from .eval.passkey import PasskeyCfg
from .eval.tasks import TaskCfg
from .model.rope import RopeCfg, context_problems
from .model.upscale import UpscaleCfg, depth_problems
from .distributed.config import DistributedCfg
from .schedules import (KINDS, ContinueSchedule, CooldownSchedule, PositiveLR, Schedule, ConstantSchedule, Segment,
                        plan_segments)

BUFFER = "buffer"  # the reserved mix name of the replay buffer B
VOCAB_EXTENSION = "vocab_extension.json"  # the record of added tokens in a model folder (model/load.py)

# Bounds (README, "Bounds"): each number a recipe gives is finite (config.Strict) and within what
# its use can hold, so that a typo is refused at load instead of overflowing or allocating later.
# MAX_TOKENS and MAX_LR (config.py) bound token counts and LRs.
MAX_SEED = 2**64 - 1  # torch.manual_seed takes 64 bits
MAX_MICRO_BATCH = 2**16
MAX_BATCH_TOKENS = 2**30  # tokens per optimizer step (today's largest runs use ~2^24)
MAX_VALIDATION_TOKENS = 10**9  # per source, held in memory for every evaluation
MAX_DOCUMENT_TOKENS = 2**31 - 1  # a shard stores document lengths as int32
MAX_UPSAMPLE = 100  # copies of each long document per epoch; an epoch's document list grows by this
MAX_POOL = 1000  # a `hard` buffer scores pool x its budget in tokens
MAX_WORKERS = 1024
MAX_EPOCHS = 1e6
def _relative_to_recipe(value: Path, info: ValidationInfo) -> Path:
    """Paths in a recipe are relative to the recipe file, not to the working directory."""
    base = (info.context or {}).get("base_dir")
    value = Path(value).expanduser()
    return value if value.is_absolute() or base is None else Path(base) / value


RelPath = Annotated[Path, AfterValidator(_relative_to_recipe)]


class ModelCfg(Strict):
    """`path`: a Hugging Face model folder; or `init`: LlamaConfig fields to train from scratch."""

    path: RelPath | None = None
    init: dict[str, Any] | None = None


class OptimizerCfg(Strict):
    lr: PositiveLR = 1e-3
    weight_decay: float = Field(0.0, ge=0, le=10)  # decoupled: each step shrinks weights by lr x weight_decay
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0, le=1e6)  # None: no clipping


class UpsampleCfg(Strict):
    """Long-context upsampling of one source (Gao et al. 2024): each document longer than
    `min_tokens` tokens is read `factor` times per epoch; the source's share of the mix is unchanged."""

    min_tokens: int = Field(gt=0, le=MAX_DOCUMENT_TOKENS)
    factor: float = Field(ge=1, le=MAX_UPSAMPLE)


class SourceCfg(Strict):
    """A named dataset: raw files to tokenize, an existing Megatron shard `prefix`, or a
    blendcorpus data-file `list` of existing shards (data/lists.py)."""

    paths: list[RelPath] = []
    prefix: RelPath | None = None
    format: Literal["text", "lines", "jsonl", "parquet", "hf"] | None = None  # inferred from the paths
    separator: str | None = None  # text format: document separator (default: a blank line)
    text_field: str = "text"  # jsonl / parquet column
    template: str | None = None  # jsonl / parquet: "{question}\n{answer}" over fields
    # text / lines / jsonl: a byte that is not UTF-8 is an error (strict) or reads as U+FFFD (replace)
    errors: Literal["strict", "replace"] = "strict"
    upsample_long: UpsampleCfg | None = None  # a sampling choice: not part of the shard's cache key
    tags: dict[str, str] = {}  # e.g. {quality: high, kind: math}: what `strategy: anneal` can upweight
    # the tokenizer that wrote a `list:`'s shards where they carry no record of it (the error asking prints it)
    tokenizer_fingerprint: str | None = None
    list_file: RelPath | None = Field(None, alias="list")  # written `list:` (`list` would shadow the type)

    def resolved_format(self) -> str:
        if self.format:
            return self.format
        if self.paths and all(p.is_dir() for p in self.paths):
            return "hf"  # a folder written by datasets' save_to_disk
        suffixes = {p.suffix.lower() for p in self.paths}
        if suffixes <= {".jsonl", ".json"}:
            return "jsonl"
        if suffixes <= {".parquet"}:
            return "parquet"
        return "text"


class ValidationCfg(Strict):
    tokens_per_source: int = Field(20_000, gt=0, le=MAX_VALIDATION_TOKENS)


class BufferAddCfg(Strict):
    """At the stage's end, copy documents of `source` into the replay buffer. The budget is exactly
    one of `tokens` or `fraction` (of the source's training tokens); `policy` picks the documents:
    `uniform` at random, `representative` stratified by input file and length quartile, `hard` the
    highest-loss documents under the end-of-stage model among a random pool of `pool` x the budget."""

    source: str
    tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)
    fraction: float | None = Field(None, gt=0, le=1)
    policy: Literal["uniform", "representative", "hard"] = "uniform"
    pool: float = Field(4.0, ge=1, le=MAX_POOL)


def budget_tokens(cfg: BufferAddCfg, source_train_tokens: int) -> int:
    """The addition's token budget: `tokens`, or `fraction` of the source's training tokens."""
    if cfg.tokens is not None:
        return cfg.tokens
    return max(1, math.floor(cfg.fraction * source_train_tokens))


class StageCfg(Strict):
    name: str
    # train: steps on a mix; merge: the weighted average of checkpoints (merging.py), no training
    kind: Literal["train", "merge"] = "train"
    tokens: int = Field(0, ge=0, le=MAX_TOKENS)  # required for training; 0 for a merge
    mix: dict[str, float] | None = None  # required unless `strategy` sets it
    strategy: presets.Strategy | None = None  # a cookbook preset; expands when the recipe loads
    schedule: Schedule = ConstantSchedule(kind="constant")
    batch_tokens: int | None = Field(None, gt=0, le=MAX_BATCH_TOKENS)  # this stage's step, if not the recipe's
    # tokens per sample; default: the previous stage's (the recipe's for the first), so that a
    # context extension is never silently undone by a later stage
    seq_len: int | None = Field(None, gt=1, le=MAX_SEQ_LEN)
    rope: RopeCfg | None = None  # the RoPE base and scaling from this stage on (model/rope.py)
    # samples per forward in this stage (default: the recipe's): a longer seq_len needs fewer
    micro_batch: int | None = Field(None, gt=0, le=MAX_MICRO_BATCH)
    # position ids restart at each document and attention stays inside it (train/inputs.py)
    document_masking: bool = False
    # the LR a stage inherits is scaled by sqrt(k) or k when its batch is k x its starting point's
    lr_scaling: Literal["sqrt", "linear", "none"] = "sqrt"
    # AdamW moments at the stage start: kept, fresh, or fresh only for newly trainable parameters
    optimizer_state: Literal["keep", "reset", "reset-new"] = "keep"
    # what trains; everything else is frozen bit-exactly (see model/trainable.py)
    trainable: list[Literal["all", "input_embeddings", "output_embeddings", "layers", "norms", "new_input_rows",
                            "new_output_rows"]] = Field(["all"], min_length=1)
    buffer_add: BufferAddCfg | None = None
    # previous | base | <stage>@final | <stage>@pre-cooldown | a checkpoint folder; or
    # {upscale: {drop: M} | {layers: [...]}, from: <one of those>}: that point, up-scaled (`upscale`)
    init: str = "previous"
    upscale: UpscaleCfg | None = None
    # sources whose data is new in this stage (adaptation is measured on them); default: the
    # `buffer_add` source, else the mix's sources that no earlier stage trained on.
    new: list[str] | None = None
    # old-data loss (or a task) watched; on failure, roll back and retry down the ladder (ladder.py)
    guard: GuardCfg | None = None
    # train the decoder's linears through merged low-rank updates (model/relora.py); on an `eeve`
    # stage, its last two sub-stages (the ones that train the layers)
    relora: ReLoRACfg | None = None
    # kind: merge (merging.py): what is averaged, with which weights
    checkpoints: list[str] | None = None
    weights: list[float] | None = None
    method: Literal["linear", "ema"] = "linear"
    ema_beta: float = Field(0.5, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _upscale_init(cls, data):
        """`init: {upscale: {...}, from: X}` is `init: X` (default previous) plus `upscale: {...}`."""
        init = data.get("init") if isinstance(data, dict) else None
        if isinstance(init, dict) and "upscale" in init and "upscale" not in data:
            rest = {k: v for k, v in init.items() if k not in ("upscale", "from")}
            if rest:
                raise ValueError(f"init: unknown key `{next(iter(rest))}` beside upscale (give upscale and from)")
            data = {**data, "init": init.get("from", "previous"), "upscale": init["upscale"]}
        return data

    @property
    def init_ref(self) -> tuple[str, str] | None:
        """(stage, tag) when `init` names a checkpoint of this run (`a@final`)."""
        return parse_ref(self.init)

    @property
    def init_path(self) -> Path | None:
        """The checkpoint folder `init` names, when it names one by path."""
        if self.init in ("previous", "base") or self.init_ref is not None:
            return None
        return Path(self.init)


class EvalCfg(Strict):
    every_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)
    passkey: PasskeyCfg | None = None  # passkey retrieval at the base and each stage's start and end
    tasks: Literal["edges", "every"] = "edges"  # `evals:` at stage edges only, or at every_tokens too


class CheckpointCfg(Strict):
    """`every_tokens`: a checkpoint each time training crosses a multiple (besides stage ends and
    the pre-cooldown point). `async`: training goes on while a checkpoint is written (it is copied
    to CPU memory first; the copy is what blocks, and each save logs that time)."""
    every_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)
    asynchronous: bool = Field(False, alias="async")


class Recipe(Strict):
    base_dir: str | None = None  # what relative paths are relative to (default: the recipe file's folder)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelCfg
    tokenizer: RelPath | None = None
    seq_len: int = Field(gt=1, le=MAX_SEQ_LEN)
    micro_batch: int = Field(gt=0, le=MAX_MICRO_BATCH)
    batch_tokens: int = Field(gt=0, le=MAX_BATCH_TOKENS)
    optimizer: OptimizerCfg = OptimizerCfg()
    sources: dict[str, SourceCfg]
    validation: ValidationCfg = ValidationCfg()
    stages: list[StageCfg] = Field(min_length=1)
    eval: EvalCfg = EvalCfg()
    checkpoint: CheckpointCfg = CheckpointCfg()
    distributed: DistributedCfg = DistributedCfg()  # under torchrun: FSDP2 settings (distributed/config.py)
    nonfinite: NonFiniteCfg = NonFiniteCfg()  # skip NaN/Inf steps; stop after max_bad_steps in a row
    monitor: MonitorCfg | None = None  # the stability gap: dense evals over each stage's first part
    base_sources: list[str] = []  # the starting model's own pretraining data (D0), if known
    data_dir: RelPath | None = None  # shard cache shared between runs; default <out>/shards
    tokenize_workers: int = Field(0, ge=0, le=MAX_WORKERS)  # processes that tokenize; 0: one per CPU core
    max_epochs: float = Field(4.0, gt=0, le=MAX_EPOCHS)  # the plan warns when a source is read more often
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # where metrics go: metrics.jsonl always; also TensorBoard event files, W&B (offline by default)
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = ["jsonl"]
    # downstream tasks from local files, scored at the base and at each stage's start and end
    evals: dict[str, TaskCfg] = {}

    @property
    def tokenizer_path(self) -> Path:
        return self.tokenizer or self.model.path

    @property
    def samples_per_step(self) -> int:
        return self.batch_tokens // self.seq_len

    @property
    def accum_steps(self) -> int:
        return self.batch_tokens // (self.seq_len * self.micro_batch)

    @property
    def max_seq_len(self) -> int:
        return max([self.seq_len] + [self.stage_len(st) for st in self.stages])

    def stage_batch(self, stage: StageCfg) -> int:
        """Tokens per optimizer step in a stage."""
        return stage.batch_tokens or self.batch_tokens

    def stage_len(self, stage: StageCfg) -> int:
        """Tokens per sample in a stage (filled in at load: the previous stage's when not given)."""
        return stage.seq_len or self.seq_len

    def stage_micro(self, stage: StageCfg) -> int:
        return stage.micro_batch or self.micro_batch

    def stage_samples(self, stage: StageCfg) -> int:
        return self.stage_batch(stage) // self.stage_len(stage)

    def stage_accum(self, stage: StageCfg) -> int:
        return self.stage_batch(stage) // (self.stage_len(stage) * self.stage_micro(stage))

    def stage_steps(self, stage: StageCfg) -> int:
        """Optimizer steps of a stage: its token budget rounded down to whole steps."""
        return stage.tokens // self.stage_batch(stage)

    def stage_index(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)

    def start_trainable(self, i: int) -> list[str]:
        """What the point stage i starts from trained: the stage before it, or the stage whose
        checkpoint `init:` names; the base model (and a checkpoint folder) trained everything."""
        st, earlier = self.stages[i], [s.name for s in self.stages[:i]]
        if st.init_ref is not None and st.init_ref[0] in earlier:
            return self.stages[earlier.index(st.init_ref[0])].trainable
        return self.stages[i - 1].trainable if st.init == "previous" and i > 0 else ["all"]


# ---------------------------------------------------------------------------------------------
# loading and cross-field checks


def load_recipe(path: str | Path, attempts: dict[str, int] | None = None) -> Recipe:
    """Parse and validate a recipe file; raise `RecipeError` naming every problem found. With
    `attempts` (stage name -> k), guarded stages run their ladder's k-th strategy (ladder.py);
    without, every rung of every ladder is checked too, before any work."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(path, ["file not found: pass the path of a recipe YAML file"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(path, [f"not UTF-8 text (byte {e.start}); save the recipe as UTF-8"]) from None
    try:
        data = yaml.load(text, Loader=RecipeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(path, [f"malformed YAML: {where}{getattr(e, 'problem', e)}"]) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise RecipeError(path, ["malformed YAML: nested too deeply; a recipe is a few levels deep"]) from None
    if not isinstance(data, dict):
        raise RecipeError(path, ["the recipe must be a YAML mapping of keys (seed, model, sources, stages, ...)"])
    recipe = _validated(path, with_attempts(data, attempts) if attempts else data)
    if attempts is None:
        check_rungs(data, lambda d: _validated(path, d))
    return resolve_ladders(recipe, data, attempts or {})


def _validated(path: Path, data: dict) -> Recipe:
    home = path.resolve().parent  # what paths are relative to: the recipe's folder, or its `base_dir`
    if isinstance(data.get("base_dir"), str):
        home = home / Path(data["base_dir"]).expanduser()
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": home})
    except ValidationError as e:
        raise RecipeError(path, [_describe(err) for err in e.errors()]) from None
    recipe = _resolve_seq_lens(_resolve_init_paths(recipe, home))
    recipe = recipe.model_copy(update={"evals": {n: t.model_copy(update={"path": home / t.path})
                                                 for n, t in recipe.evals.items()}})
    problems = check_recipe(recipe)
    if not problems:  # presets expand into plain stages; then the LRs they imply are checked
        recipe, problems = presets.expand(recipe)
        problems = problems or check_recipe(recipe, expanded=True) or check_segments(recipe, plan_segments(recipe))
    if problems:
        raise RecipeError(path, problems)
    return recipe


def _resolve_init_paths(r: Recipe, base_dir: Path) -> Recipe:
    """`init:` may be a checkpoint folder, relative to the recipe like every other path."""
    stages = []
    for st in r.stages:
        if st.init_path is not None and not st.init_path.is_absolute():
            st = st.model_copy(update={"init": str(base_dir / st.init_path)})
        stages.append(st)
    return r.model_copy(update={"stages": stages})


def _resolve_seq_lens(r: Recipe) -> Recipe:
    """Each stage's `seq_len`: its own, else the previous stage's (the recipe's for the first)."""
    stages, length = [], r.seq_len
    for st in r.stages:
        length = st.seq_len or length
        stages.append(st if st.seq_len else st.model_copy(update={"seq_len": length}))
    return r.model_copy(update={"stages": stages})


def _describe(err: dict) -> str:
    return describe_error(err, {"schedule": KINDS, "strategy": presets.NAMES})


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_recipe(r: Recipe, expanded: bool = False) -> list[str]:
    """Cross-field checks that typed fields cannot express. Returns every problem found. Run once
    as written and once `expanded` (presets replaced by their stages, whose mixes they set)."""
    problems: list[str] = []
    p = problems.append

    if (r.model.path is None) == (r.model.init is None):
        p("model: give exactly one of `path` (a Hugging Face model folder) or `init` (a Llama config)")
    elif r.model.path is not None:
        if not r.model.path.is_dir():
            p(f"model.path: folder not found: {r.model.path}")
        elif not any(r.model.path.glob("*.safetensors")) and not any(r.model.path.glob("pytorch_model*.bin")):
            p(f"model.path: no weights (*.safetensors or pytorch_model.bin) in {r.model.path}")
        elif not (r.model.path / "config.json").is_file():
            p(f"model.path: no config.json in {r.model.path}; it is not a Hugging Face model folder")
        else:
            try:
                read_json_object(r.model.path / "config.json")
            except (OSError, ValueError) as e:
                p(f"model.path: the model's config {r.model.path / 'config.json'} is {e}; restore it from the model's source")
    else:
        problems += check_init_config(r.model.init)
    if r.tokenizer_path is None:
        p("tokenizer: required when the model is built from `init`")
    elif not r.tokenizer_path.is_dir():
        p(f"tokenizer: folder not found: {r.tokenizer_path}")

    unit = r.seq_len * r.micro_batch
    if r.batch_tokens % unit:
        p(f"batch_tokens: {r.batch_tokens} is not a multiple of seq_len x micro_batch = {unit}")
    if r.validation.tokens_per_source < r.max_seq_len:  # validation windows are the longest seq_len
        p(f"validation.tokens_per_source: {r.validation.tokens_per_source} is below seq_len ({r.max_seq_len})")

    for name, src in r.sources.items():
        if expanded:
            break  # presets change stages only; the sources were checked as written
        where = f"sources.{name}"
        if name == BUFFER:
            p(f"{where}: `{BUFFER}` is reserved for the replay buffer; rename the source")
        elif not _NAME.match(name):
            p(f"{where}: a source name must be letters, digits, `_`, `-` or `.` (it names files)")
        if bool(src.paths) + (src.prefix is not None) + (src.list_file is not None) != 1:
            p(f"{where}: give one of `paths` (files to tokenize), `prefix` (an existing .bin/.idx shard) or `list` "
              "(a data-file list of existing shards)")
        if src.list_file is not None and not src.list_file.is_file():
            p(f"{where}.list: file not found: {src.list_file}")
        if src.tokenizer_fingerprint is not None and src.list_file is None:
            p(f"{where}.tokenizer_fingerprint: only a `list:` source's shards are declared this way")
        if src.prefix is not None:
            for ext in (".bin", ".idx"):
                if not Path(str(src.prefix) + ext).is_file():
                    p(f"{where}.prefix: file not found: {src.prefix}{ext}")
        problems += check_source(src, where)

    problems += check_monitor(r.monitor, r.sources)
    for name in r.base_sources:
        if name not in r.sources:
            p(f"base_sources: unknown source `{name}`")

    names = [s.name for s in r.stages]
    buffer_filled = False
    for i, st in enumerate(r.stages):
        where = f"stages[{i}]"
        if not _NAME.match(st.name):
            p(f"{where}.name: `{st.name}` must be letters, digits, `_`, `-` or `.`")
        if names.count(st.name) > 1 and names.index(st.name) == i:
            p(f"{where}.name: `{st.name}` is used by more than one stage")
        if st.kind == "merge":
            problems += merging.check_merge(r, i, where, lambda ref, at, i=i: check_point(r, i, ref, at, merge=True,
                                                                                     max_batch=MAX_BATCH_TOKENS),
                                             expanded)
            continue
        for key in ("checkpoints", "weights", "method", "ema_beta"):
            if key in st.model_fields_set:
                p(f"{where}.{key}: only a merge stage (kind: merge) averages checkpoints; remove `{key}`")
        if "tokens" not in st.model_fields_set and not expanded:
            p(f"{where}.tokens: required key is missing")
            continue
        batch, length = r.stage_batch(st), r.stage_len(st)
        stage_unit = length * r.stage_micro(st)
        if stage_unit != unit or st.batch_tokens is not None:
            if batch % stage_unit:
                p(f"{where}.batch_tokens: {batch} is not a multiple of seq_len x micro_batch = {stage_unit}")
        if st.tokens < batch:
            p(f"{where}.tokens: {st.tokens} is less than one optimizer step (batch_tokens = {batch})")
        preset = st.strategy is not None and not expanded
        problems += [] if expanded else check_guard(st.guard, f"{where}.guard", r.sources, r.evals, st.new)
        if preset:
            problems += presets.check_stage(r, st, where, buffer_filled)
        if not preset or isinstance(st.strategy, presets.Eeve):  # eeve trains on the stage's own mix
            problems += _check_mix(r, st, where, buffer_filled)
        problems += _check_schedule(r, i, where)
        if st.buffer_add is not None and st.buffer_add.source not in r.sources:
            p(f"{where}.buffer_add.source: unknown source `{st.buffer_add.source}`")
        if st.buffer_add is not None and (st.buffer_add.tokens is None) == (st.buffer_add.fraction is None):
            p(f"{where}.buffer_add: give exactly one of `tokens` (a count) or `fraction` (of the source's "
              "training tokens) as the budget")
        elif st.buffer_add is not None and st.buffer_add.tokens is not None and st.buffer_add.tokens < r.max_seq_len:
            p(f"{where}.buffer_add.tokens: {st.buffer_add.tokens} is less than one sample (seq_len = {r.max_seq_len})")
        problems += _check_init(r, i, where)
        if st.relora is not None and preset and isinstance(st.strategy, presets.Strategy4):
            p(f"{where}.relora: not with strategy4, which splits the stage where the LR crosses a threshold (the "
              "merges cannot tile both parts); give ReLoRA a stage of its own")
        elif st.relora is not None and (expanded or not preset):
            problems += st.relora.problems(r.stage_batch(st), r.stage_steps(st) * r.stage_batch(st), st.trainable,
                                           f"{where} ({st.name}).relora")
        eeve = preset and isinstance(st.strategy, presets.Eeve)  # its trainable sets are checked expanded
        if st.optimizer_state == "reset-new" and not eeve and not _groups(st.trainable) - _groups(r.start_trainable(i)):
            p(f"{where}.optimizer_state: reset-new gives fresh moments only to newly trainable parameters, but this "
              "stage trains nothing that its starting point kept frozen; use keep or reset, or change `trainable`")
        rows = [g for g in st.trainable if g.startswith("new_")]
        if rows and (r.model.path is None or not (r.model.path / VOCAB_EXTENSION).is_file()):
            p(f"{where}.trainable: `{rows[0]}` names nothing: the model has no {VOCAB_EXTENSION} (made by `cpt vocab "
              "init` when it extends a vocabulary); train `input_embeddings` / `output_embeddings` instead")
        for n in st.new or []:
            if preset and n not in r.sources:
                p(f"{where}.new: unknown source `{n}`")
            elif not preset and n not in (st.mix or {}):
                p(f"{where}.new: `{n}` is not in this stage's mix")
        buffer_filled = buffer_filled or st.buffer_add is not None

    if expanded and not problems:  # the model's positions and rotary embeddings, read from its config
        problems += context_problems(r) + depth_problems(r)
    if r.eval.every_tokens is not None and r.eval.every_tokens < r.batch_tokens:
        p(f"eval.every_tokens: {r.eval.every_tokens} is less than one optimizer step ({r.batch_tokens})")
    if r.checkpoint.every_tokens is not None and r.checkpoint.every_tokens < r.batch_tokens:
        p(f"checkpoint.every_tokens: {r.checkpoint.every_tokens} is less than one optimizer step ({r.batch_tokens})")
    return problems


def _groups(trainable: list[str]) -> set[str]:
    every = {"input_embeddings", "output_embeddings", "layers", "norms", "new_input_rows", "new_output_rows"}
    return every if "all" in trainable else set(trainable)


def _check_mix(r: Recipe, st: StageCfg, where: str, buffer_filled: bool) -> list[str]:
    problems = []
    if not st.mix:
        return [f"{where}.mix: empty; name at least one source with weight 1"]
    for name, w in st.mix.items():
        if name == BUFFER:
            if not buffer_filled:
                problems.append(f"{where}.mix.buffer: the replay buffer is empty here; an earlier stage needs `buffer_add`")
        elif name not in r.sources:
            problems.append(f"{where}.mix.{name}: unknown source (known: {', '.join(r.sources)}, buffer)")
        if not math.isfinite(w) or w < 0:
            problems.append(f"{where}.mix.{name}: weight {w} is negative; weights are shares in [0, 1]")
    total = sum(st.mix.values())
    if abs(total - 1.0) > 1e-6:
        problems.append(f"{where}.mix: weights sum to {total:g}; they must sum to 1")
    return problems


def _check_schedule(r: Recipe, i: int, where: str) -> list[str]:
    """What a schedule says about itself; LRs it inherits are checked by `check_segments`."""
    st, s = r.stages[i], r.stages[i].schedule
    w, problems = f"{where}.schedule", []
    p = problems.append
    if isinstance(s, ContinueSchedule):
        if i == 0:
            p(f"{w}: the first stage has no schedule to continue; give it one (constant, cosine, wsd, ...)")
        elif r.stages[i - 1].kind == "merge":
            p(f"{w}: the stage before is a merge, which has no schedule to continue; give this one its own")
        elif st.init != "previous":
            p(f"{where}.init: a stage that continues the previous schedule also continues its weights (init: previous)")
        return problems
    if "warmup" in s.model_fields_set and getattr(s, "warmup_steps", None) is not None:
        p(f"{w}: give `warmup` (a fraction of the stage) or `warmup_steps`, not both")
    used = getattr(s, "warmup", 0.0) + getattr(s, "decay", 0.0) + getattr(s, "cooldown", 0.0) + getattr(s, "anneal", 0.0)
    if used > 1:
        p(f"{w}: its phases (warmup, decay, cooldown, anneal) add up to {used:g} of the stage; at most 1")
    if s.kind == "inverse-sqrt" and not (s.warmup or s.warmup_steps):
        p(f"{w}.warmup: inverse-sqrt needs a warmup (its decay is peak x sqrt(warmup / t))")
    floor_key = "to" if isinstance(s, CooldownSchedule) else "min_lr"
    if getattr(s, "shape", None) == "exponential" and not getattr(s, floor_key):
        p(f"{w}.{floor_key}: an exponential decay needs a positive final LR (it decays by a constant factor)")
    if s.kind == "infinite" and s.anneal > 0 and not s.min_lr:
        p(f"{w}.min_lr: the exponential anneal needs a positive final LR below constant_lr")
    return problems


def check_segments(r: Recipe, segments: list[Segment]) -> list[str]:
    """LRs that only the composed plan knows: a floor above the LR it decays from (explicit or
    inherited), a stage that would train at LR 0 throughout."""
    problems = []
    for i, (st, seg) in enumerate(zip(r.stages, segments)):
        if st.kind == "merge":
            problems += [f"stages[{i}].checkpoints[{k}]: {why}" for k, ref in enumerate(st.checkpoints)
                         if (why := merging.step_problem(r, i, ref, segments) if merging.STEP.match(ref)
                             else _no_pre_cooldown(r, ref, segments))]
            continue
        if why := _no_pre_cooldown(r, st.init, segments):
            problems.append(f"stages[{i}].init: {why}")
        if seg.offset:
            continue  # a continued curve was checked with the stage that started it
        for ph in seg.curve.phases:
            if ph.name == "decay" and ph.end > ph.start and ph.lr_to > ph.lr_from * (1 + 1e-12):
                problems.append(f"stages[{i}].schedule: the floor {ph.lr_to:g} is above the LR it decays from "
                                f"({ph.lr_from:g}); lower min_lr / to / constant_lr, or raise lr")
        first = r.stage_batch(st)  # the LR is monotone within a phase: its largest step is at an edge
        edges = {min(max(t, first), seg.total) for ph in seg.curve.phases for t in (ph.start, ph.end)}
        if max(seg.lr(t) for t in edges | {first}) <= 0:
            problems.append(f"stages[{i}].schedule: the LR is 0 throughout (it continues from {seg.start_lr:g}); "
                            "give the schedule a peak `lr`, or start from a checkpoint before the cooldown")
    return problems


def _no_pre_cooldown(r: Recipe, ref: str, segments: list[Segment]) -> str | None:
    """`<stage>@pre-cooldown` of a stage that continues a decay begun earlier: never written."""
    ref = parse_ref(ref)
    if ref is not None and ref[1] == "pre-cooldown" and segments[r.stage_index(ref[0])].decay_start is None:
        return (f"stage `{ref[0]}` continues a decay that began in an earlier stage, so it has no pre-cooldown "
                "checkpoint; name that earlier stage's @pre-cooldown")
    return None


def _check_init(r: Recipe, i: int, where: str) -> list[str]:
    return check_point(r, i, r.stages[i].init, f"{where}.init", max_batch=MAX_BATCH_TOKENS)
