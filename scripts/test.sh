#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up the environment from scratch, run pytest (every
# tier: unit, integration, e2e) and list the 15 slowest tests. The fast loop: .venv/bin/python -m pytest -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=15 "$@"
