#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up the environment from scratch, start a local
# NDIF server for the remote tests (scripts/ndif_local.sh: built on first use, stopped at the end
# whatever happens), run pytest (every tier: unit, integration, e2e) and list the 15 slowest tests.
# Without the server (no Python 3.12, say) the remote tests skip, unless GAR_REQUIRE_NDIF=1.
# GAR_NDIF=0 leaves the server out. The fast loop: .venv/bin/python -m pytest -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${GAR_NDIF:-1}" != 0 ]; then
  trap 'bash scripts/ndif_local.sh down || true; rm -rf "${GAR_TEST_NDIF_TINY:-}"' EXIT
  trap 'exit 130' INT TERM
  t0=$SECONDS
  # tiny random models of the architecture families the circuit engine must serve remotely too
  GAR_TEST_NDIF_TINY=$(mktemp -d)
  NDIF_LOCAL_EXTRA=$(.venv/bin/python tests/tiny_models.py "$GAR_TEST_NDIF_TINY" gemma2 gpt_neox olmo2 gpt2)
  export GAR_TEST_NDIF_TINY NDIF_LOCAL_EXTRA
  if lines=$(bash scripts/ndif_local.sh up); then
    GAR_TEST_NDIF_HOST=$(sed -n 's/^export NDIF_HOST=//p' <<< "$lines")
    GAR_TEST_NDIF_HF_HOME=$(sed -n 's/^export HF_HOME=\([^ ]*\).*/\1/p' <<< "$lines")
    export GAR_TEST_NDIF_HOST GAR_TEST_NDIF_HF_HOME
    echo "local NDIF ready at $GAR_TEST_NDIF_HOST in $((SECONDS - t0)) s (set-up included)"
  elif [ "${GAR_REQUIRE_NDIF:-0}" = 1 ]; then
    echo "the local NDIF server did not start and GAR_REQUIRE_NDIF=1" >&2
    exit 1
  else
    echo "the local NDIF server did not start: the remote tests will skip" >&2
  fi
fi
rc=0
.venv/bin/python -m pytest -q --durations=15 "$@" || rc=$?
exit $rc
