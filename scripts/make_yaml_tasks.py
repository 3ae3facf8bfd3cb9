"""Write the lm-eval YAML leaves and groups of yaml_tasks/gar/, and its task card README.md, from
the task grid and configs.

Usage: python scripts/make_yaml_tasks.py [--check]
Every ``*.yaml`` in that folder and ``README.md`` are generated: stale YAML files are removed.
``--check`` writes nothing and exits 1 if the folder is out of date (the test suite runs the same
comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gar_tasks.lm_eval_glue import TASK_README, render_task_readme, render_yaml_files  # noqa: E402

FOLDER = ROOT / "yaml_tasks" / "gar"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    want = render_yaml_files()
    have = {p.name: p.read_text(encoding="utf-8") for p in FOLDER.glob("*.yaml")}
    readme = FOLDER / TASK_README
    want[TASK_README] = render_task_readme(FOLDER)
    if readme.is_file():
        have[TASK_README] = readme.read_text(encoding="utf-8")
    if args.check:
        stale = sorted(set(have) ^ set(want) | {n for n in want if have.get(n) != want[n]})
        print("\n".join(stale) or "up to date")
        return 1 if stale else 0
    for name in set(have) - set(want):
        (FOLDER / name).unlink()
    for name, text in want.items():
        if have.get(name) != text:
            (FOLDER / name).write_text(text, encoding="utf-8")
    print(f"{len(want) - 1} YAML files and {TASK_README} in {FOLDER.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
