#!/usr/bin/env bash
# The prepared GPU check: one device call, < 8 min on one H100 (bench/README.md: fetch the wheels
# into .whl/ first, then run with carry [".whl"]). Writes gpu.log, gpu.json, card.txt under $OUT.
# Rows: the projector's share of weights moved in 2 bf16 steps at lr 2e-5 (fp32 masters); the
# DPO step of a LLaVA-Med-shaped ~0.8B model (576 image tokens): step time, tokens/s, peak
# memory, MFU and HFU, against TRL's DPOTrainer; SAM vit_b fp32 vs bf16; the noise arithmetic.
# Exits non-zero when a row failed.
set -uo pipefail
OUT=${OUT:-/tmp/devcheck}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
timeout 450 python3 bench/gpu.py --budget 360 --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
exit "${PIPESTATUS[0]}"
