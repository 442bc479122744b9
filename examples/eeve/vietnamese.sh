#!/usr/bin/env bash
# EEVE (Kim et al. 2024) on stories260K: extend its 512-token SentencePiece-style tokenizer with
# 1,000 Vietnamese tokens learned by continued BPE (TinyStories' tokenization kept exactly), give
# the new tokens embedding rows (mean of their old pieces), then train the EEVE stages.
# Run from anywhere; writes runs/eeve-vi/{tokenizer,model,run}. Steps already done are skipped.
# `vietnamese.sh relora` trains vietnamese-relora.yaml instead (ReLoRA in the last two stages),
# into runs/eeve-vi/run-relora.
set -euo pipefail
cd "$(dirname "$0")/../.."
CPT=${CPT:-.venv/bin/cpt}
DATA=${CPT_SHARED_DATA:-../shared/data}
OUT=runs/eeve-vi

[ -d "$OUT/tokenizer" ] || $CPT vocab extend --base "$DATA/models/stories260K" \
  --corpus "$DATA/corpora/vi/viwiki.jsonl" --add 1000 \
  --protect "$DATA/corpora/en/tinystories.txt" --out "$OUT/tokenizer"
$CPT vocab report --old "$DATA/models/stories260K" --new "$OUT/tokenizer" --corpus "$DATA/corpora/vi/viwiki.jsonl"
[ -d "$OUT/model" ] || $CPT vocab init --model "$DATA/models/stories260K" --tokenizer "$OUT/tokenizer" \
  --out "$OUT/model" --input-init mean
RECIPE=examples/eeve/vietnamese.yaml RUN=$OUT/run
if [ "${1:-}" = relora ]; then RECIPE=examples/eeve/vietnamese-relora.yaml RUN=$OUT/run-relora; fi
if [ -d "$RUN/checkpoints" ]; then
  $CPT run "$RECIPE" --out "$RUN" --resume
else
  $CPT run "$RECIPE" --out "$RUN"
fi
