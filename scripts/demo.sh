#!/usr/bin/env bash
# The main job: set up from scratch, evaluate GAR with lm-eval on the embedded SmolLM2-135M
# (offline), print lm-eval's table, then the GAR report (accuracy by family x n_r x schema pair).
#   bash scripts/demo.sh              quick form: --limit 8 docs per leaf task (~2 min)
#   GAR_LIMIT=0 bash scripts/demo.sh  the full benchmark (4608 docs; ~3 min in bf16 on 2 AMX cores)
#   GAR_DTYPE=float32 ...             fp32 instead of bf16 (CPUs without bf16 support; ~4x slower here)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
LIMIT=${GAR_LIMIT:-8}
OUT=${GAR_OUT:-out/demo}
MODEL=$(.venv/bin/gar models)
ARGS=(--tasks gar --model hf --model_args "pretrained=$MODEL,dtype=${GAR_DTYPE:-bfloat16}"
      --batch_size 32 --output_path "$OUT" --log_samples)
if [ "$LIMIT" != "0" ]; then ARGS+=(--limit "$LIMIT"); fi
rm -rf "$OUT"
.venv/bin/gar eval "${ARGS[@]}"
# the GAR report: the full tables go to $OUT/report/report.md; print the totals
.venv/bin/gar report "$OUT" --out "$OUT/report" | sed -n '/^### Totals per family$/,$p'
echo "full report: $OUT/report/report.md"
