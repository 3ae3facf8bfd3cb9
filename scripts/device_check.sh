#!/usr/bin/env bash
# The prepared GPU check (scripts/device_check.py: lm-eval and gar patch/heads/circuit on the device
# against the CPU, timings, peak GPU memory; one JSON). On a GPU machine where nothing can be
# installed from the network, the packages its image lacks travel as wheels in .whl (made here by
# scripts/device_wheels.sh). With --device cpu it is the smoke test CI runs.
#   bash scripts/device_check.sh --device cuda --out "$OUT/device_check.json"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${GAR_PY:-}" ]; then
  PY=$GAR_PY
elif [ -x .venv/bin/python ]; then  # a machine set up by scripts/setup.sh
  PY=.venv/bin/python
else  # an offline GPU machine: its image's python3, plus the carried wheels
  PY=python3
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gar-site .whl/*.whl
    export PYTHONPATH=/tmp/gar-site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec timeout "${DEVICE_CHECK_TIMEOUT:-480}" "$PY" scripts/device_check.py "$@"
