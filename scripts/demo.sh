#!/usr/bin/env bash
# The main job: set up from scratch, evaluate GAR with lm-eval on the embedded SmolLM2-135M
# (offline), with the compositionality sub-questions (gar_sub), print lm-eval's table, then the GAR
# report (accuracy by family x n_r x schema pair, the compositionality gap with its counts).
#   bash scripts/demo.sh              quick form: 8 docs per leaf task and exactly their sub-questions
#   GAR_LIMIT=0 bash scripts/demo.sh  the full benchmark and all sub-questions (4608 + 3520 docs)
#   GAR_DTYPE=float32 ...             fp32 instead of bf16 (CPUs without bf16 support; ~4x slower here)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
LIMIT=${GAR_LIMIT:-8}
OUT=${GAR_OUT:-out/demo}
MODEL=$(.venv/bin/gar models)
ARGS=(--tasks gar,gar_sub --model hf --model_args "pretrained=$MODEL,dtype=${GAR_DTYPE:-bfloat16}"
      --batch_size 32 --output_path "$OUT" --log_samples)
rm -rf "$OUT"
mkdir -p "$OUT"
if [ "$LIMIT" != "0" ]; then
  # --limit would score sub-questions of other parents than the limited ones: pick the documents
  .venv/bin/python scripts/quick_samples.py "$LIMIT" > "$OUT/samples.json"
  ARGS+=(--samples "$OUT/samples.json")
fi
.venv/bin/gar eval "${ARGS[@]}"
# the GAR report: the full tables go to $OUT/report/report.md; print the totals and the gap
.venv/bin/gar report "$OUT" --out "$OUT/report" | sed -n '/^### Totals per family$/,$p'
echo "full report: $OUT/report/report.md"
