"""EEVE on a real model: stories260K (TinyStories = D0, 512-token SentencePiece-style tokenizer)
learns Vietnamese, with and without a vocabulary extension, at equal training tokens.

Steps (each skipped when its output is already there):
1. split viwiki into training articles and held-out articles (never seen by tokenizer or model);
2. `cpt vocab extend` stories260K's tokenizer and GPT-2's with 1,000 Vietnamese tokens, and
   `cpt vocab report` both on held-out Vietnamese and on English;
3. `cpt vocab init` (tied, mean rows), then three runs of examples/eeve/vietnamese.yaml's plan:
   `eeve` (the extended model, EEVE's stages), `no-extension` (stories260K as it is, all
   parameters), `extension, all at once` (the extended model, all parameters from the start);
4. the held-out Vietnamese loss in nats per UTF-8 byte (comparable across tokenizers, unlike
   nats per token) and per token, and TinyStories val loss (forgetting), into docs/eeve-vietnamese.md.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/eeve_vietnamese.py           # ~15 min on one thread
    OMP_NUM_THREADS=1 .venv/bin/python experiments/eeve_vietnamese.py --quick   # smoke, into runs/eeve-quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "eeve" / "vietnamese.yaml"
HELD_OUT = 77  # the last articles of viwiki's 677
ADD = 1000
BEGIN, END = "<!-- BEGIN GENERATED (experiments/eeve_vietnamese.py) -->", "<!-- END GENERATED -->"
RUNS = {"eeve": "EEVE stages (4, tied)", "no-extension": "no extension, all parameters",
        "ext-all": "extension, all parameters at once"}


def shared_data() -> Path:
    root = Path(os.environ.get("CPT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "models" / "stories260K").is_dir():
        sys.exit(f"shared data not found at {root}; set CPT_SHARED_DATA to the folder that holds models/ and corpora/")
    return root


def split_viwiki(data: Path, work: Path) -> tuple[Path, list[str]]:
    """Training articles into a file of their own; held-out articles returned as texts."""
    lines = (data / "corpora/vi/viwiki.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    train = work / "vi-train.jsonl"
    if not train.is_file():
        train.write_text("".join(lines[:-HELD_OUT]), encoding="utf-8")
    return train, [json.loads(line)["text"] for line in lines[-HELD_OUT:]]


def extend_and_report(base: Path, out: Path, train: Path, protect: list[Path], corpora: dict) -> dict:
    from cptkit.vocab.extend import extend, reader
    from cptkit.vocab.report import measure

    if not (out / "tokenizer.json").is_file():
        extend(base, [train], ADD, out, reader(), protect=protect)
    result = measure(base, out, corpora)
    result["extension"] = {k: v for k, v in json.loads((out / "vocab_extension.json").read_text()).items()
                           if k in ("learned", "merges_added", "seconds", "protect")}
    return result


def recipe_for(name: str, data: Path, model: Path, train: Path, tokens: int) -> dict:
    """examples/eeve/vietnamese.yaml with absolute paths, the training split, and the run's model
    and trainable plan; everything else (mix, schedule, batch) as in the example."""
    r = yaml.safe_load(EXAMPLE.read_text())
    r["model"] = {"path": str(model)}
    r["sources"]["stories"]["paths"] = [str(data / "corpora/en/tinystories.txt")]
    r["sources"]["vi"]["paths"] = [str(train)]
    stage = r["stages"][0]
    stage["tokens"] = tokens
    if name != "eeve":
        del stage["strategy"]  # every parameter trains from the first step
    r["eval"] = {"every_tokens": tokens // 8}
    return r


def run(name: str, recipe: dict, work: Path) -> Path:
    from cptkit.runner import run_recipe

    out = work / "runs" / name
    text = yaml.safe_dump(recipe, sort_keys=False)
    if (out / "summary.json").is_file() and (out / "recipe.yaml").read_text() == text:
        return out
    path = work / f"{name}.yaml"
    path.write_text(text)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    run_recipe(path, out)
    print(f"[eeve] {name}: {time.time() - t0:.0f} s", flush=True)
    return out


def per_byte(model_dir: Path, texts: list[str], seq_len: int = 256) -> tuple[float, float]:
    """(nats per UTF-8 byte, nats per token) of the model on `texts` under its own tokenizer: the
    texts joined by EOS, read in windows of seq_len that overlap by one token, so every token
    after the first is predicted once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = []
    for t in texts:
        ids += tok(t).input_ids + [tok.eos_token_id]
    ids = torch.tensor(ids)
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_len - 1):
            w = ids[start:start + seq_len].unsqueeze(0)
            if w.shape[1] < 2:
                break
            logits = model(w).logits[0, :-1].double()
            nll += float(torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum"))
            n += w.shape[1] - 1
    return nll / sum(len(t.encode("utf-8")) for t in texts), nll / n


def summary_losses(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    return {"base": s["base_val_loss"], "end": s["stages"][-1]["val_loss_end"]}


def vi_curve(out: Path) -> tuple[list[int], list[float]]:
    """The run's Vietnamese val loss over training, per byte of its own validation slice."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    seq, budget = recipe["seq_len"], recipe["validation"]["tokens_per_source"]
    from cptkit.data.shards import Shard

    key = json.loads((out / "data" / "sources.json").read_text())["vi"]
    shard = out / "shards" / f"vi.{key}"
    stream = np.concatenate([Shard(str(shard))[int(i)] for i in np.load(out / "data" / "vi.val.npy")])
    stream = stream[: budget // seq * seq]
    bytes_per_token = len(tok.decode(stream.tolist()).encode("utf-8")) / len(stream)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("kind") == "eval"]
    return [e["tokens"] for e in evals], [e["val_loss"]["vi"] / bytes_per_token for e in evals]


def write_doc(doc: Path, block: str) -> None:
    text = doc.read_text() if doc.is_file() else f"# EEVE for Vietnamese on stories260K\n\n{BEGIN}\n{END}\n\n## Reading\n\n(to write)\n"
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + block + rest.split(END, 1)[1])


def tokenizer_table(results: dict) -> list[str]:
    lines = ["| tokenizer | corpus | documents | tokens before | tokens after | change | tokens/word | docs changed | round trips failed |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for label, res in results.items():
        for name, r in res["corpora"].items():
            lines.append(f"| {label} | {name} | {r['documents']:,} | {r['tokens_old']:,} | {r['tokens_new']:,} | "
                         f"{r['token_change_pct']:+.2f}% | {r['tokens_per_word_old']:.2f} → {r['tokens_per_word_new']:.2f} | "
                         f"{r['changed_pct']:.2f}% | {r['roundtrip_failures']} |")
    return lines


def plot(curves: dict, stories: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, (x, y) in curves.items():
        axes[0].plot(x, y, marker="o", ms=3, label=RUNS[name])
    for name, (x, y) in stories.items():
        axes[1].plot(x, y, marker="o", ms=3, label=RUNS[name])
    axes[0].set_ylabel("Vietnamese val loss (nats per byte)")
    axes[1].set_ylabel("TinyStories val loss (nats per token)")
    for ax in axes:
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stories_curve(out: Path):
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("kind") == "eval"]
    return [e["tokens"] for e in evals], [e["val_loss"]["stories"] for e in evals]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: 131k tokens per run, report into --out")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    work = (args.out or REPO / ("runs/eeve-quick" if args.quick else "runs/eeve-study")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    doc = work / "eeve-vietnamese.md" if args.quick else REPO / "docs/eeve-vietnamese.md"
    plots = work if args.quick else REPO / "docs/study"
    plots.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    data = shared_data()
    train, held_out = split_viwiki(data, work)
    from cptkit.vocab.extend import reader

    stories = list(reader(separator="<|endoftext|>")(data / "corpora/en/tinystories.txt"))
    wiki = list(reader("lines")(data / "corpora/en/wikipedia_en.txt"))
    # paragraphs: the unit for "English tokenized as before" (a story or an article is many)
    paragraphs = [line.strip() for doc in stories + wiki for line in doc.split("\n") if line.strip()]
    corpora = {"vi held-out": held_out, "TinyStories": stories, "wikipedia_en": wiki, "English paragraphs": paragraphs}
    protect = [data / "corpora/en/tinystories.txt"]
    tok_results = {
        "stories260K (512)": extend_and_report(data / "models/stories260K", work / "tok-stories", train, protect, corpora),
        "GPT-2 (50,257)": extend_and_report(data / "tokenizers/gpt2", work / "tok-gpt2", train, [], corpora),
    }
    model = work / "model-ext"
    if not (model / "vocab_extension.json").is_file():
        from cptkit.vocab.init import init_model

        init_model(data / "models/stories260K", work / "tok-stories", model)
    tokens = 131_072 if args.quick else yaml.safe_load(EXAMPLE.read_text())["stages"][0]["tokens"]
    models = {"eeve": model, "no-extension": data / "models/stories260K", "ext-all": model}
    outs = {n: run(n, recipe_for(n, data, m, train, tokens), work) for n, m in models.items()}

    rows = {"base stories260K": per_byte(data / "models/stories260K", held_out),
            "extended, before training": per_byte(model, held_out)}
    rows.update({RUNS[n]: per_byte(o / "model", held_out) for n, o in outs.items()})
    losses = {n: summary_losses(o) for n, o in outs.items()}
    plot({n: vi_curve(o) for n, o in outs.items()}, {n: stories_curve(o) for n, o in outs.items()},
         plots / "eeve-curves.png")

    from cptkit.recipe import load_recipe

    steps = [f"`{s.name}` {s.tokens:,} tokens ({', '.join(s.trainable)})" for s in load_recipe(work / "eeve.yaml").stages]
    lines = [BEGIN, "Rerun: `OMP_NUM_THREADS=1 .venv/bin/python experiments/eeve_vietnamese.py` "
             f"(finished steps are skipped; delete `runs/eeve-study` to redo all). This run: {time.time() - t0:.0f} s.", "",
             f"viwiki: {677 - HELD_OUT} training articles, {HELD_OUT} held out (never seen by tokenizer or model). "
             f"{ADD:,} tokens added by `cpt vocab extend` (min frequency 2); stories260K's with "
             "`--protect tinystories.txt`, GPT-2's without.", "", "### Tokenizers", ""]
    lines += tokenizer_table(tok_results)
    lines += ["", f"### Training: {tokens:,} tokens per run, mix 0.8 vi + 0.2 TinyStories, cosine 1e-3", "",
              f"EEVE stages (tied, `strategy: eeve`): {', '.join(steps)}.", "",
              "| model | vi held-out, nats/byte | vi held-out, nats/token (own tokenizer) | TinyStories val loss (start → end) |",
              "|---|---:|---:|---:|"]
    for label, (nb, nt) in rows.items():
        run_name = next((n for n, lab in RUNS.items() if lab == label), None)
        st = losses.get(run_name)
        stories_cell = f"{st['base']['stories']:.3f} → {st['end']['stories']:.3f}" if st else "—"
        lines.append(f"| {label} | {nb:.4f} | {nt:.3f} | {stories_cell} |")
    lines += ["", "![Vietnamese and TinyStories val loss over training](study/eeve-curves.png)"
              if not args.quick else "![curves](eeve-curves.png)", END]
    write_doc(doc, "\n".join(lines))
    (work / "results.json").write_text(json.dumps({"tokenizers": tok_results, "loss": rows, "summary": losses}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
