#!/usr/bin/env python
"""Drill accuracy of an organism, per drill form: the same command as ``gar organism eval``
(the library is ``gar_tasks.organism.drill_eval``).

    .venv/bin/python scripts/eval_drills.py gar_tasks/data/organism      # a model folder
    .venv/bin/python scripts/eval_drills.py .organism_work               # a training work folder
"""

import sys

from gar_tasks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["organism", "eval", *sys.argv[1:]]))
