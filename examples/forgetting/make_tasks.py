"""Writes the downstream tasks examples/forgetting/forgetting.yaml scores, from the shared corpora
(nothing is downloaded; the files are not part of the repository):

- tasks/cloze.jsonl: LAMBADA-style, `{context, continuation}`: a TinyStories story without its
  last word, and that word (the corpus's last stories; the example trains on about 6% of
  TinyStories, so a few of them may be among what it reads; the base model was trained on
  TinyStories anyway: the task measures what training on other data takes away);
- tasks/gsm8k.jsonl: GSM8K items `{question, answer}` (the answer ends in `#### <number>`); the
  first ones are the few-shot examples. They are the file's last items; the example's `math`
  source is the same file, so it may train on them (a 260K-parameter model solves none anyway).

    python examples/forgetting/make_tasks.py [--shared ../shared/data] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cloze_items(text: str, n: int) -> list[dict]:
    """The last `n` stories of at least 30 words, each split before its last word (punctuation
    stays with the word, as in LAMBADA's targets)."""
    stories = [s.strip() for s in text.split("<|endoftext|>") if len(s.split()) >= 30]
    items = []
    for story in reversed(stories):
        head, last = story.rsplit(" ", 1)
        if last.strip(".!?\"'") and "\n" not in last:
            items.append({"context": head, "continuation": " " + last})
        if len(items) == n:
            break
    return list(reversed(items))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CPT_SHARED_DATA", HERE.parents[2] / "shared" / "data")))
    ap.add_argument("--n", type=int, default=200, help="cloze items")
    ap.add_argument("--gsm8k", type=int, default=40, help="GSM8K items (shots included)")
    args = ap.parse_args()
    out = HERE / "tasks"
    out.mkdir(exist_ok=True)
    text = (args.shared / "corpora" / "en" / "tinystories.txt").read_text(encoding="utf-8")
    cloze = cloze_items(text, args.n)
    (out / "cloze.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cloze), encoding="utf-8")
    lines = (args.shared / "corpora" / "math" / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()
    (out / "gsm8k.jsonl").write_text("\n".join(lines[-args.gsm8k:]) + "\n", encoding="utf-8")
    print(f"{out / 'cloze.jsonl'}: {len(cloze)} items; {out / 'gsm8k.jsonl'}: {args.gsm8k} items")


if __name__ == "__main__":
    main()
