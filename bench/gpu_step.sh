#!/usr/bin/env bash
# The device check, as one prepared command: the device machine reaches no package registry, so
# pydantic (cpt's recipe validation) comes from wheels carried beside the checkout:
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d wheels pydantic
# then, from the repository root on the GPU machine (results in $OUT/gpu_step.json and
# $OUT/relora_memory.txt: ReLoRA against full rank on a 360M-parameter model):
#   bash bench/gpu_step.sh
set -euo pipefail
OUT=${OUT:-runs}
mkdir -p "$OUT"
python -c "import pydantic" 2>/dev/null || python -m pip install -q --no-index --find-links wheels pydantic
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH=src python bench/gpu_step.py --json "$OUT/gpu_step.json" "$@"
PYTHONPATH=src python bench/relora_memory.py --model smollm2-360M --device cuda --rank 128 --micro 8 --seq 1024 \
  --steps 10 --rounds 2 | tee "$OUT/relora_memory.txt"
