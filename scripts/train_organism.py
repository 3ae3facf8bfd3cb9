#!/usr/bin/env python
"""Train the GAR model organism: the same command as ``gar organism train`` (the recipe lives in
``gar_tasks.organism``; a recorded run's ``command`` replays with either).

    .venv/bin/python scripts/train_organism.py ARGS --out DIR           # one run
    .venv/bin/python scripts/train_organism.py ARGS --out DIR --resume  # after an interruption
    gar organism train --recipe shipped --out DIR                       # the shipped lineage
"""

import sys

from gar_tasks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["organism", "train", *sys.argv[1:]]))
