#!/usr/bin/env bash
# Wheels of what scripts/device_check.sh needs and an offline GPU machine's image lacks (it has torch,
# transformers, accelerate, numpy, pandas, pyarrow, ... but no lm-eval, nnsight or datasets; nothing
# can be fetched there). Downloads them for CPython 3.12 on x86-64 into .whl (git-ignored), which the
# device tool carries (carry: [".whl"]); the check installs them with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(lm-eval==0.4.13 nnsight==0.8.1 datasets==4.4.1 evaluate dill multiprocess pytablewriter dataproperty
      mbstrdecoder pathvalidate tabledata tcolorpy typepy chardet nltk more-itertools jsonlines zstandard
      greenlet websocket-client pydantic pydantic-core annotated-types typing-inspection)
PURE_SDISTS=(sqlitedict rouge-score word2number)  # no wheels on PyPI: built here (pure Python)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${PKGS[@]}" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
python3 -m pip wheel -q --no-deps -w .whl "${PURE_SDISTS[@]}" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
du -sh .whl
