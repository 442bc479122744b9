#!/usr/bin/env bash
# The chained plan (chain.yaml): extend stories260K's tokenizer with 1,000 Vietnamese tokens, give
# them rows, then run every stage; `--resume`s a run that stopped. Writes runs/chain/{tokenizer,model,run}.
set -euo pipefail
cd "$(dirname "$0")/../.."
CPT=${CPT:-.venv/bin/cpt}
DATA=${CPT_SHARED_DATA:-../shared/data}
OUT=runs/chain

[ -d "$OUT/tokenizer" ] || $CPT vocab extend --base "$DATA/models/stories260K" \
  --corpus "$DATA/corpora/vi/viwiki.jsonl" --add 1000 \
  --protect "$DATA/corpora/en/tinystories.txt" --out "$OUT/tokenizer"
[ -d "$OUT/model" ] || $CPT vocab init --model "$DATA/models/stories260K" --tokenizer "$OUT/tokenizer" \
  --out "$OUT/model" --input-init mean
if [ -d "$OUT/run/checkpoints" ]; then
  $CPT run examples/chain/chain.yaml --out "$OUT/run" --resume
else
  $CPT run examples/chain/chain.yaml --out "$OUT/run"
fi
