#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up the environment from scratch, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
