"""ReLoRA on a real model (issue 15, part 5): what low-rank training with merges costs and saves in
continual pre-training, at equal tokens, on stories260K (a 260K-parameter Llama, hidden 64, trained
on TinyStories = D0).

Part A: stories260K continues on grade-school maths questions (gsm8k, `template: "{question}"`),
mix 0.8 maths + 0.2 TinyStories replay, one cosine schedule, seed 0, for
  full      every parameter at full rank (the baseline);
  lora      plain LoRA: one `relora:` cycle as long as the stage, merged once at the end;
  relora    ReLoRA: merges every quarter of the stage, moments magnitude-pruned (0.99), jagged LR;
  relora-ws ReLoRA after a full-rank warm start of a quarter of the stage, then three cycles;
each at the shared LR (1e-3) and at 3e-3 (a LoRA-style higher LR; full rank too, for fairness), plus
  relora-reset     ReLoRA with every adapter moment reset at a merge instead of pruned (both LRs),
  relora-ws-reset  the same after the warm start (1e-3) (diagnostics: see "Adapter A after a merge"
                   in docs/relora-study.md).
In every LoRA variant the embeddings and norms train at full rank (`trainable: [all]`, as in the
ReLoRA paper); the adapters (rank 8, alpha 16) sit on every attention and MLP linear.

Part B: EEVE's stages on a vocabulary-extended stories260K for Vietnamese (1,000 tokens learned on
viwiki by `cpt vocab extend`, rows by `cpt vocab init`), once at full rank and once with `relora:`
on the stage (which applies it to EEVE's sub-stages that train the layers: `vi.eeve6` and `vi`), and once
more with ReLoRA's moments reset at merges (the diagnostic of Part A).

Each run is done in-process (`cptkit.build.build_run`, `cptkit.train.loop.train`, `cptkit.train.finish.finish`)
with one extra hook that measures, after every step, the trainable parameters, the optimizer state
the AdamW actually holds, and the largest entry of the adapters' A matrices. A run's numbers are
written into results.json in the work folder as soon as it finishes; a run whose recipe is
unchanged is skipped on a rerun, so an interrupted study resumes.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/relora_study.py           # the study (~18 min, 1 thread)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/relora_study.py --quick   # smoke, into runs/relora-quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN GENERATED (experiments/relora_study.py) -->", "<!-- END GENERATED -->"

# Part A
TOKENS_A = 262_144        # per run: 64 steps of 4,096 tokens
BATCH_A = 4096            # 2 micro-batches of 8 x 256
LRS = (1e-3, 3e-3)        # the shared LR (the replay study's P) and a LoRA-style 3x
RANK, ALPHA = 8, 16       # rank 8 of hidden 64; scale alpha/rank = 2
VARIANTS = {              # name: (label, cycles, warm start share, prune method)
    "full": ("full rank", None, 0, None),
    "lora": ("LoRA (merged once, at the end)", 1, 0, None),
    "relora": ("ReLoRA (4 cycles)", 4, 0, "magnitude"),
    "relora-ws": ("ReLoRA, warm start 1/4 + 3 cycles", 3, 4, "magnitude"),
}
DIAGNOSTIC = {"relora-reset": ("ReLoRA (4 cycles), moments reset at merges", 4, 0, "reset"),
              "relora-ws-reset": ("ReLoRA, warm start 1/4 + 3 cycles, moments reset", 3, 4, "reset")}

# Part B
HELD_OUT = 77             # the last viwiki articles: never trained on (as experiments/eeve_vietnamese.py)
ADD = 1000                # tokens added to stories260K's 512
BATCH_B = 8192
EEVE_SHARES = (1, 1, 3, 3)  # eeve1-3, eeve4-5, eeve6, vi (tied: 4 stages), in eighths of the stage
TOKENS_B = 524_288        # 64 steps; eeve6 and vi 196,608 tokens (24 steps) each
MERGE_B = 65_536          # 3 cycles in each of eeve6 and vi
RUNS_B = {"eeve-full": ("EEVE, full rank", None), "eeve-relora": ("EEVE + ReLoRA on eeve6 and vi", "magnitude"),
          "eeve-relora-reset": ("EEVE + ReLoRA, moments reset at merges", "reset")}


def shared_data() -> Path:
    root = Path(os.environ.get("CPT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "models" / "stories260K").is_dir():
        sys.exit(f"shared data not found at {root}; set CPT_SHARED_DATA to the folder that holds models/ and corpora/")
    return root


# ---------------------------------------------------------------- recipes

def relora_cfg(tokens: int, cycles: int | None, warm_share: int, prune: str | None) -> dict:
    """The stage's `relora:` section: `cycles` equal cycles after a warm start of tokens/warm_share
    (none when 0); a re-warmup of a quarter of a cycle after each restart (none for plain LoRA)."""
    if cycles is None:
        return {}
    warm = tokens // warm_share if warm_share else 0
    merge = (tokens - warm) // cycles
    cfg = {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "merge_every_tokens": merge}
    if cycles > 1 or warm:
        cfg["restart_warmup_tokens"] = merge // 4
        cfg["prune"] = {"method": prune, "ratio": 0.99}
    if warm:
        cfg["warm_start"] = warm
    return {"relora": cfg}


def recipe_a(variant: tuple, lr: float, tokens: int, data: Path, shards: Path) -> dict:
    _, cycles, warm_share, prune = variant
    return {
        "seed": 0,
        "model": {"path": str(data / "models/stories260K")},
        "base_sources": ["stories"],
        "seq_len": 256, "micro_batch": 8, "batch_tokens": BATCH_A,
        "optimizer": {"lr": lr, "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0},
        "device": "cpu", "tokenize_workers": 1,
        "data_dir": str(shards),  # tokenized once for every run
        "sources": {
            "stories": {"paths": [str(data / "corpora/en/tinystories.txt")], "separator": "<|endoftext|>"},
            "math": {"paths": [str(data / "corpora/math/gsm8k_train.jsonl")], "template": "{question}"},
        },
        "validation": {"tokens_per_source": 20000},
        "stages": [{"name": "math", "tokens": tokens, "mix": {"math": 0.8, "stories": 0.2}, "new": ["math"],
                    "schedule": {"kind": "cosine", "lr": lr, "warmup_steps": max(1, tokens // BATCH_A // 16)},
                    **relora_cfg(tokens, cycles, warm_share, prune)}],
        "eval": {"every_tokens": tokens // 8},
        "checkpoint": {"every_tokens": 10 * tokens},  # none mid-run: a run is short, rerun it instead
    }


def recipe_b(prune: str | None, tokens: int, data: Path, model: Path, train: Path, shards: Path) -> dict:
    budgets = [tokens * s // sum(EEVE_SHARES) for s in EEVE_SHARES]
    merge = MERGE_B * tokens // TOKENS_B
    stage = {"name": "vi", "tokens": tokens, "mix": {"vi": 0.8, "stories": 0.2}, "new": ["vi"],
             "strategy": {"name": "eeve", "tokens": budgets},
             "schedule": {"kind": "cosine", "lr": 1e-3, "warmup_steps": 2}}
    if prune is not None:
        stage["relora"] = {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "merge_every_tokens": merge,
                           "restart_warmup_tokens": merge // 4, "prune": {"method": prune, "ratio": 0.99}}
    return {
        "seed": 0,
        "model": {"path": str(model)},
        "base_sources": ["stories"],
        "seq_len": 256, "micro_batch": 8, "batch_tokens": BATCH_B,
        "optimizer": {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0},
        "device": "cpu", "tokenize_workers": 1,
        "data_dir": str(shards),
        "sources": {
            "stories": {"paths": [str(data / "corpora/en/tinystories.txt")], "separator": "<|endoftext|>"},
            "vi": {"paths": [str(train)]},
        },
        "validation": {"tokens_per_source": 20000},
        "stages": [stage],
        "eval": {"every_tokens": tokens // 8},
        "checkpoint": {"every_tokens": 10 * tokens},
    }


# ---------------------------------------------------------------- running and measuring

def meter_hook():
    """A hook that records, after every step: trainable parameters (counted once each, tied
    embeddings too), bytes of the optimizer's moment tensors actually held (scalars such as `step`
    left out), and the largest |entry| of the adapters' A matrices while they are on."""
    import torch

    from cptkit.train.hooks import Hook

    class Meter(Hook):
        name = "relora-study-meter"

        def __init__(self):
            self.rows: list[dict] = []

        def on_step_end(self, run, stage, result) -> None:
            relora = next((h for h in run.hooks.hooks if h.name == "relora"), None)
            layers = relora.layers if relora is not None else []
            adapters = sum(p.numel() for layer in layers for lin in (layer.lora_A["default"], layer.lora_B["default"])
                           for p in lin.parameters())
            held = sum(t.numel() * t.element_size() for s in run.optimizer.state.values() for t in s.values()
                       if torch.is_tensor(t) and t.dim() > 0)
            a_max = max((float(layer.lora_A["default"].weight.detach().abs().max()) for layer in layers), default=None)
            self.rows.append({"stage": stage.name, "step": run.state.global_step, "tokens": run.state.tokens,
                              "trainable": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
                              "adapters": adapters, "state_bytes": held, "a_max": a_max})

    return Meter()


RELORA_SOURCES = ("src/cptkit/model/relora.py", "src/cptkit/model/relora_cfg.py", "src/cptkit/train/relora.py")


def provenance() -> dict:
    """What code made a run: the commit and a fingerprint of the ReLoRA sources (recorded, not used
    to skip: a change to the ReLoRA code reruns nothing by itself; delete the run's entry in
    results.json to redo it)."""
    import subprocess

    h = hashlib.sha256()
    for f in RELORA_SOURCES:
        h.update((REPO / f).read_bytes())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", *RELORA_SOURCES], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"commit": commit, "relora_sources_modified": dirty, "relora_sources_sha": h.hexdigest()[:16]}


def run_one(name: str, recipe: dict, work: Path, results: dict, save) -> dict:
    """Run `recipe` into work/runs/name unless results.json holds this very recipe's result."""
    text = yaml.safe_dump(recipe, sort_keys=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    if results.get(name, {}).get("recipe_sha") == digest:
        return results[name]
    from cptkit.build import build_run
    from cptkit.recipe import load_recipe
    from cptkit.train.finish import finish
    from cptkit.train.loop import train

    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)  # interrupted or stale: from zero
    path = work / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    code = provenance()  # before the run: the code this process imported is the code on disk now
    t0 = time.time()
    loaded = load_recipe(path)
    run = build_run(loaded, text, out, False, recipe_path=path)
    meter = meter_hook()
    run.hooks.hooks.append(meter)
    train(run)
    finish(run)
    wall = time.time() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results[name] = {"recipe_sha": digest, "code": code, "wall_s": wall, "summary": json.loads((out / "summary.json").read_text()),
                     "evals": [{k: r[k] for k in ("stage", "tag", "step", "tokens", "val_loss")}
                               for r in records if r["kind"] == "eval"],
                     "train": [{k: r.get(k) for k in ("stage", "step", "tokens", "lr", "loss", "grad_norm", "tokens_per_s")}
                               for r in records if r["kind"] == "train"],
                     "relora": [r for r in records if r["kind"] == "relora"],
                     "meter": meter.rows,
                     "stages": [{"name": s.name, "tokens": s.tokens, "trainable": list(s.trainable),
                                 "relora": s.relora.model_dump() if s.relora else None} for s in loaded.stages]}
    save()
    print(f"[relora] {name}: {wall:.0f} s", flush=True)
    return results[name]


# ---------------------------------------------------------------- Part B preparation

def prepare_vietnamese(data: Path, work: Path) -> tuple[Path, Path]:
    """viwiki's training articles in a file of their own, and stories260K extended by ADD tokens
    learned on them (TinyStories' tokenization protected), rows initialised as `cpt vocab init` does."""
    from cptkit.vocab.extend import extend, reader
    from cptkit.vocab.init import init_model

    lines = (data / "corpora/vi/viwiki.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    train = work / "vi-train.jsonl"
    if not train.is_file():
        train.write_text("".join(lines[:-HELD_OUT]), encoding="utf-8")
    tok = work / "tok-stories"
    if not (tok / "tokenizer.json").is_file():
        extend(data / "models/stories260K", [train], ADD, tok, reader(), protect=[data / "corpora/en/tinystories.txt"])
    model = work / "model-ext"
    if not (model / "vocab_extension.json").is_file():
        init_model(data / "models/stories260K", tok, model)
    return train, model


# ---------------------------------------------------------------- reading the results

def lora_phase(res: dict, stage: str | None = None) -> list[dict]:
    """The meter's rows of the steps trained with the adapters on (every step of a full-rank run)."""
    rows = [r for r in res["meter"] if stage is None or r["stage"] == stage]
    on = [r for r in rows if r["adapters"]]
    return on or rows


def val(res: dict, stage: str, tag: str, source: str) -> float:
    return next(e["val_loss"][source] for e in res["evals"] if e["stage"] == stage and e["tag"] == tag)


def tokens_per_s(res: dict, stage: str | None = None) -> float:
    xs = [r["tokens_per_s"] for r in res["train"] if stage is None or r["stage"] == stage]
    return statistics.median(xs[1:] or xs)


def fmt_bytes(n: float) -> str:
    return f"{n / 1024:,.0f} KiB"


def row_a(name: str, res: dict) -> dict:
    st = res["summary"]["stages"][0]
    phase = lora_phase(res)
    trainable = max(r["trainable"] for r in phase)
    return {"name": name, "math": (st["val_loss_start"]["math"], st["val_loss_end"]["math"]),
            "stories": (st["val_loss_start"]["stories"], st["val_loss_end"]["stories"]),
            "trainable": trainable, "adapters": max(r["adapters"] for r in phase),
            "formula_bytes": 2 * 4 * trainable, "held_bytes": max(r["state_bytes"] for r in phase),
            "peak_bytes": max(r["state_bytes"] for r in res["meter"]),
            "wall": res["wall_s"], "tok_s": tokens_per_s(res),
            "a_max": max((r["a_max"] for r in res["meter"] if r["a_max"] is not None), default=None)}


def table_a(rows: list[dict], labels: dict) -> list[str]:
    lines = ["| variant | LR | maths val loss (start → end) | adaptation ↓ | TinyStories val loss (start → end) | "
             "forgetting ↑ | trainable in LoRA phase (adapters) | optimizer state 2 × 4 B × trainable | "
             "optimizer state held (max, LoRA phase / whole run) | max abs A entry | wall | tokens/s (median) |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        (m0, m1), (s0, s1) = r["math"], r["stories"]
        adapters = f" ({r['adapters']:,})" if r["adapters"] else ""
        a_max = "—" if r["a_max"] is None else f"{r['a_max']:.2f}"
        lines.append(f"| {labels[r['variant']]} | {r['lr']:g} | {m0:.3f} → {m1:.3f} | {m0 - m1:.3f} | {s0:.3f} → {s1:.3f} | "
                     f"{s1 - s0:+.3f} | {r['trainable']:,}{adapters} | {fmt_bytes(r['formula_bytes'])} | "
                     f"{fmt_bytes(r['held_bytes'])} / {fmt_bytes(r['peak_bytes'])} | {a_max} | {r['wall']:.0f} s | {r['tok_s']:,.0f} |")
    return lines


def table_b(results: dict) -> list[str]:
    lines = ["| run | vi val loss: base → eeve6 start → end | vi fall in eeve6 + vi | TinyStories: base → eeve6 start → end | "
             "TinyStories rise in eeve6 + vi | trainable (eeve6 / vi) | optimizer state held, max (eeve6 / vi) | "
             "2 × 4 B × trainable (eeve6 / vi) | wall | tokens/s in eeve6 + vi |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, (label, _) in RUNS_B.items():
        res = results.get(name)
        if res is None:
            continue
        cells = []
        for src in ("vi", "stories"):
            b, s, e = (res["summary"]["base_val_loss"][src], val(res, "vi.eeve6", "start", src), val(res, "vi", "end", src))
            cells += [f"{b:.3f} → {s:.3f} → {e:.3f}", f"{(s - e) if src == 'vi' else (e - s):+.3f}"]
        ph6, ph7 = lora_phase(res, "vi.eeve6"), lora_phase(res, "vi")
        tr = [max(r["trainable"] for r in ph) for ph in (ph6, ph7)]
        held = [max(r["state_bytes"] for r in ph) for ph in (ph6, ph7)]
        tok_s = statistics.median([r["tokens_per_s"] for r in res["train"] if r["stage"] in ("vi.eeve6", "vi")])
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {tr[0]:,} / {tr[1]:,} | "
                     f"{fmt_bytes(held[0])} / {fmt_bytes(held[1])} | {fmt_bytes(8 * tr[0])} / {fmt_bytes(8 * tr[1])} | "
                     f"{res['wall_s']:.0f} s | {tok_s:,.0f} |")
    return lines


# ---------------------------------------------------------------- plots

STYLE = {"full": ("black", "o"), "lora": ("tab:blue", "s"), "relora": ("tab:red", "D"),
         "relora-ws": ("tab:green", "^"), "relora-reset": ("tab:purple", "v"),
         "relora-ws-reset": ("tab:olive", "<")}


def plot_a(results: dict, names: dict, path: Path, merges: dict) -> None:
    """Rows: the two LRs; columns: the new domain and TinyStories. Curves that leave the plot's
    range (a run that diverged) are clipped and say so in the legend."""
    import matplotlib.pyplot as plt

    caps = {"math": 3.8, "stories": 2.7}
    fig, axes = plt.subplots(len(LRS), 2, figsize=(12, 4.2 * len(LRS)), sharex=True)
    for row, lr in zip(axes, LRS):
        for key, (variant, run_lr) in names.items():
            res = results.get(key)
            if res is None or run_lr != lr:
                continue
            colour, marker = STYLE[variant]
            ev = res["evals"]
            for ax, src in zip(row, ("math", "stories")):
                ys = [e["val_loss"][src] for e in ev]
                off = " (leaves the plot)" if max(ys) > caps[src] else ""
                ax.plot([e["tokens"] for e in ev], ys, color=colour, marker=marker, ms=3,
                        linestyle="--" if "reset" in variant else "-", label=variant + off)
        for ax, src, title in zip(row, ("math", "stories"), ("gsm8k questions (new domain)", "TinyStories (D0)")):
            for t in merges.get("relora", []):
                ax.axvline(t, color="tab:red", alpha=0.12, lw=3)
            if any("leaves the plot" in line.get_label() for line in ax.get_lines()):
                ax.set_ylim(top=caps[src])
            ax.set_ylabel("val loss (nats/token)")
            ax.set_title(f"{title}, LR {lr:g}")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("training tokens (shaded: ReLoRA's merges; warm start: the last two)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_diag(results: dict, keys: dict, path: Path) -> None:
    """Per step: the training grad norm and the largest |A| entry of the adapters."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for key, label in keys.items():
        res = results.get(key)
        if res is None:
            continue
        colour = STYLE[key.split("@")[0]][0]
        axes[0].plot([r["step"] for r in res["train"]], [r["grad_norm"] for r in res["train"]], color=colour, label=label)
        pts = [(r["step"], r["a_max"]) for r in res["meter"] if r["a_max"] is not None]
        if pts:
            axes[1].plot(*zip(*pts), color=colour, label=label)
    axes[0].set_ylabel("grad norm before clipping (trainable parameters)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("max |A| over the adapters")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_b(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    bounds = []
    for name, colour in (("eeve-full", "black"), ("eeve-relora", "tab:red"), ("eeve-relora-reset", "tab:purple")):
        res = results.get(name)
        if res is None:
            continue
        ev = res["evals"]
        for ax, src in zip(axes, ("vi", "stories")):
            ax.plot([e["tokens"] for e in ev], [e["val_loss"][src] for e in ev], color=colour, marker="o", ms=3, label=name)
        bounds = [(s["name"], s["tokens_end"]) for s in res["summary"]["stages"]]
    for ax in axes:
        for label, t in bounds[:-1]:
            ax.axvline(t, color="grey", alpha=0.4, ls=":")
            ax.text(t, ax.get_ylim()[1], f" ↤{label.split('.')[-1]}", fontsize=7, va="top", color="grey")
        ax.set_xlabel("training tokens (dotted: EEVE stage ends)")
        ax.set_ylabel("val loss (nats/token, extended tokenizer)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Vietnamese (viwiki): adaptation")
    axes[1].set_title("TinyStories (D0): forgetting")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the document

def write_doc(doc: Path, block: str) -> None:
    """Replace the generated block; the prose around it is kept as written."""
    text = doc.read_text() if doc.is_file() else f"# ReLoRA study\n\n{BEGIN}\n{END}\n\n## Reading\n\n(to write)\n"
    head, rest = text.split(BEGIN, 1)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(head + block + rest.split(END, 1)[1])


def key_a(variant: str, lr: float) -> str:
    return f"{variant}@{lr:g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: a quarter of the tokens, report into --out")
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/relora-study)")
    p.add_argument("--part", choices=("A", "B", "both"), default="both", help="run only one part (the doc needs both)")
    args = p.parse_args()
    work = (args.out or REPO / ("runs/relora-quick" if args.quick else "runs/relora-study")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    doc = work / "relora-study.md" if args.quick else REPO / "docs/relora-study.md"
    plots = work if args.quick else REPO / "docs/study"
    plots.mkdir(parents=True, exist_ok=True)
    tokens_a = TOKENS_A // 4 if args.quick else TOKENS_A
    tokens_b = TOKENS_B // 4 if args.quick else TOKENS_B

    import torch

    torch.set_num_threads(1)  # the timings assume one thread; set OMP_NUM_THREADS=1 too
    data = shared_data()
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}

    def save() -> None:
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(store)

    t0 = time.time()
    runs_a = {key_a(v, lr): (v, lr) for lr in LRS for v in VARIANTS}
    runs_a.update({key_a("relora-reset", lr): ("relora-reset", lr) for lr in LRS})
    runs_a[key_a("relora-ws-reset", LRS[0])] = ("relora-ws-reset", LRS[0])
    every = {**VARIANTS, **DIAGNOSTIC}
    if args.part in ("A", "both"):
        for key, (v, lr) in runs_a.items():
            run_one(key, recipe_a(every[v], lr, tokens_a, data, work / "shards-a"), work, results, save)
    if args.part in ("B", "both"):
        train_vi, model = prepare_vietnamese(data, work)
        for name, (_, prune) in RUNS_B.items():
            run_one(name, recipe_b(prune, tokens_b, data, model, train_vi, work / "shards-b"), work, results, save)
    if args.part != "both":
        print(f"[relora] part {args.part} done in {time.time() - t0:.0f} s (doc not written: run both parts)")
        return

    labels = {k: v[0] for k, v in every.items()}
    rows = [{**row_a(k, results[k]), "variant": v, "lr": lr} for k, (v, lr) in runs_a.items()]
    merges = {v: [e["tokens"] for e in results[key_a(v, LRS[0])]["relora"] if e["event"] == "merge"]
              for v in every if key_a(v, LRS[0]) in results}
    plot_a(results, runs_a, plots / "relora-curves.png", merges)
    plot_diag(results, {key_a("full", LRS[0]): "full rank", key_a("relora", LRS[0]): "ReLoRA, magnitude prune 0.99",
                        key_a("relora-reset", LRS[0]): "ReLoRA, moments reset",
                        key_a("relora-ws", LRS[0]): "ReLoRA + warm start, magnitude prune 0.99",
                        key_a("relora-ws-reset", LRS[0]): "ReLoRA + warm start, moments reset"},
              plots / "relora-merges.png")
    plot_b(results, plots / "relora-eeve.png")
    rel = os.path.relpath(plots, doc.parent)
    ex = recipe_a(VARIANTS["relora-ws"], LRS[0], tokens_a, data, work)["stages"][0]["relora"]
    ex_r = recipe_a(VARIANTS["relora"], LRS[0], tokens_a, data, work)["stages"][0]["relora"]
    stages_b = [f"`{s['name']}` {s['tokens']:,} ({', '.join(s['trainable'])}{', relora' if s['relora'] else ''})"
                for s in results["eeve-relora"]["stages"]]
    wall = sum(r["wall_s"] for r in results.values() if isinstance(r, dict) and "wall_s" in r)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python experiments/relora_study.py" + (" --quick" if args.quick else "")
    lines = [
        BEGIN,
        f"Rerun: `{cmd}` (runs already finished with the same recipe are skipped: their numbers are kept in "
        f"`{os.path.relpath(store, REPO)}`; delete it to redo all). Training wall time of the {len(results)} runs as "
        f"recorded: {wall:.0f} s; nice 10, one thread, on a 2-core machine shared with other work, so times are noisy.",
        "",
        f"### Part A: stories260K → gsm8k questions, {tokens_a:,} tokens a run",
        "",
        f"Mix 0.8 gsm8k questions (`template: \"{{question}}\"`) + 0.2 TinyStories replay; batch {BATCH_A:,} tokens "
        f"(2 × 8 × 256), {tokens_a // BATCH_A} steps; cosine from the LR to 0.1 × LR after {max(1, tokens_a // BATCH_A // 16)} "
        "warmup steps; AdamW β (0.9, 0.95), weight decay 0.1 (adapters too), clip 1.0; seed 0 (same data order and "
        f"validation slices, 20,000 tokens a source, in every run). Adapters rank {RANK}, alpha {ALPHA}, on q/k/v/o and "
        "gate/up/down of all 5 blocks (35 linears); embeddings (tied) and norms train at full rank in every variant. "
        f"ReLoRA: `{json.dumps(ex_r)}`; with warm start: `{json.dumps(ex)}`; plain LoRA: one cycle of the whole "
        "stage, no restarts.",
        "",
        "Adaptation = maths val loss fall over the run; forgetting = TinyStories val loss rise (nats/token). "
        "\"2 × 4 B × trainable\" is AdamW's two fp32 moments for what trains in the LoRA phase; \"held\" is what the "
        "optimizer's state really holds, measured after every step (LoRA phase: after the adapters go on, "
        "which drops the moments of the weights they freeze; whole run: the warm start included). Max |A|: the largest adapter entry at any step (the Kaiming draw's bound is 0.125).",
        "",
        *table_a(rows, labels),
        "",
        f"![val loss curves of the new domain and of TinyStories]({rel}/relora-curves.png)",
        "",
        f"![grad norm and adapter A entries per step]({rel}/relora-merges.png)",
        "",
        f"### Part B: EEVE's last two stages with and without ReLoRA, {tokens_b:,} tokens a run",
        "",
        f"stories260K + {ADD:,} Vietnamese tokens (`cpt vocab extend --protect tinystories.txt` on viwiki's first "
        f"{677 - HELD_OUT} articles, then `cpt vocab init`, mean rows, tied). Mix 0.8 vi + 0.2 TinyStories, batch "
        f"{BATCH_B:,}, cosine 1e-3 → 1e-4 over the whole EEVE stage (2 warmup steps), seed 0; "
        f"`strategy: {{name: eeve, tokens: {[tokens_b * s // sum(EEVE_SHARES) for s in EEVE_SHARES]}}}`: "
        f"{', '.join(stages_b)}. ReLoRA: `{json.dumps(results['eeve-relora']['stages'][-1]['relora'], default=str)}` "
        "on the two stages that train the layers. The runs are the same until `vi.eeve6` starts, so the eeve6-start "
        "column is the common starting point of the comparison. vi val loss is per token of the extended tokenizer "
        "(the same in both runs).",
        "",
        *table_b(results),
        "",
        f"![Vietnamese and TinyStories val loss across the EEVE stages]({rel}/relora-eeve.png)",
        END,
    ]
    write_doc(doc, "\n".join(lines))
    print("\n".join(lines))
    print(f"[relora] done in {time.time() - t0:.0f} s; doc: {doc}")


if __name__ == "__main__":
    main()
