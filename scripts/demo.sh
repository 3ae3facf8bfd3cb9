#!/usr/bin/env bash
# The main job: set up from scratch, evaluate GAR with lm-eval on the embedded SmolLM2-135M
# (offline), print lm-eval's table, then the GAR report (accuracy by family x n_r x schema pair).
#   bash scripts/demo.sh              quick form: --limit 8 docs per leaf task (~2 min)
#   GAR_LIMIT=0 bash scripts/demo.sh  the full benchmark (4608 docs)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
LIMIT=${GAR_LIMIT:-8}
OUT=${GAR_OUT:-out/demo}
ARGS=(--tasks gar --batch_size 32 --output_path "$OUT" --log_samples)
if [ "$LIMIT" != "0" ]; then ARGS+=(--limit "$LIMIT"); fi
rm -rf "$OUT"
.venv/bin/gar eval "${ARGS[@]}"
if .venv/bin/gar report --help >/dev/null 2>&1; then
  .venv/bin/gar report "$OUT" --out "$OUT/report"
fi
