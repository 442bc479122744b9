"""Tokenization throughput: `cpt tokenize`'s pipeline against raw `tokenizers` `encode_batch`.

Baseline: the documents already in memory, `Tokenizer.encode_batch` in batches, single-threaded
(TOKENIZERS_PARALLELISM=false), nothing written. For reference, also `encode_batch_fast` (the
same ids without character offsets), which cpt itself calls. cpt: the whole pipeline from the file on disk
(JSONL parsing, encoding, EOS, the Megatron .bin/.idx and metadata, fsyncs) with 1 and 2 worker
processes, worker start-up included. MB/s is input text bytes per second; rounds alternate and
the median counts. Targets (issue 3): 1 worker >= 0.9x the baseline, 2 workers >= 1.7x.

    .venv/bin/python bench/tokenize_speed.py [--repeat 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("CPT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def corpus(folder: Path, repeat: int) -> tuple[Path, list[str]]:
    """Vietnamese Wikipedia and TinyStories as one JSONL file, `repeat` times over."""
    docs = [json.loads(line)["text"] for line in open(SHARED / "corpora/vi/viwiki.jsonl", encoding="utf-8")]
    docs += [d.strip() for d in (SHARED / "corpora/en/tinystories.txt").read_text().split("\n\n") if d.strip()]
    docs = docs * repeat
    path = folder / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    return path, docs


def baseline(docs: list[str], tokenizer_dir: Path, method: str = "encode_batch") -> float:
    from tokenizers import Tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    encode = getattr(tok, method)
    t0 = time.perf_counter()
    for i in range(0, len(docs), 1024):
        encode(docs[i : i + 1024], add_special_tokens=True)
    return time.perf_counter() - t0


def cpt_pipeline(path: Path, tokenizer, out: Path, workers: int) -> float:
    from cptkit.data.tokenize import content_key, input_record, tokenize_source, tokenizer_fingerprint
    from cptkit.recipe import SourceCfg

    src = SourceCfg(paths=[path])
    inputs = [input_record(path)]
    key = content_key(tokenizer_fingerprint(tokenizer), inputs, src)
    t0 = time.perf_counter()
    tokenize_source("bench", src, tokenizer, out, key, inputs, workers)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="copies of the corpus (9.1 MB each)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sys.stderr = open(os.devnull, "w")  # progress bars off the measurement's terminal
    from cptkit.model.load import load_tokenizer

    tokenizer_dir = SHARED / "tokenizers/gpt2"
    tokenizer = load_tokenizer(tokenizer_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path, docs = corpus(Path(tmp), args.repeat)
        mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        times: dict[str, list[float]] = {"baseline": [], "encode_batch_fast": [], "cpt 1 worker": [],
                                         "cpt 2 workers": []}
        for r in range(args.rounds):
            times["cpt 1 worker"].append(cpt_pipeline(path, tokenizer, Path(tmp) / f"w1-{r}", 1))
            times["baseline"].append(baseline(docs, tokenizer_dir))
            times["cpt 2 workers"].append(cpt_pipeline(path, tokenizer, Path(tmp) / f"w2-{r}", 2))
            times["encode_batch_fast"].append(baseline(docs, tokenizer_dir, "encode_batch_fast"))
    base = mb / statistics.median(times["baseline"])
    print(f"{len(docs):,} documents, {mb:.1f} MB of text, GPT-2 tokenizer, {os.cpu_count()} cores")
    for name, ts in times.items():
        rate = mb / statistics.median(ts)
        print(f"{name:18s} {rate:6.2f} MB/s  ({rate / base:.2f}x baseline)  rounds: "
              + ", ".join(f"{t:.2f}s" for t in ts))


if __name__ == "__main__":
    main()
