"""Benchmark: generator and validator throughput; writes the section of docs/benchmarks.md.

Usage: .venv/bin/python scripts/bench_generate.py [--repeats 5] [--no-write]
Times are medians of --repeats runs in one process (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gar_tasks.generate import GeneratorConfig  # noqa: E402

BEGIN, END = "<!-- bench_generate:begin -->", "<!-- bench_generate:end -->"


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from gar_tasks.io import write_records
    from gar_tasks.validate import validate_records

    cases = [
        ("paper (published grid, 4608)", GeneratorConfig()),
        ("v1 defaults (cxt 3, 1 demo, 8/task)", GeneratorConfig(profile="v1")),
        ("v1 cxt 8, 4 demos, 8/task", GeneratorConfig(profile="v1", cxt_len=8, n_demos=4)),
        ("v1 validation split (disjoint from test)", GeneratorConfig(profile="v1", split="validation")),
    ]
    rows = []
    for name, cfg in cases:
        t, recs = median_time(cfg.build, args.repeats)
        rows.append((f"generate {name}", len(recs), t))
    paper = GeneratorConfig().build()
    t, _ = median_time(lambda: validate_records(paper), args.repeats)
    rows.append(("validate paper records (all checks)", len(paper), t))
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("jsonl", "parquet"):
            t, _ = median_time(lambda: write_records(paper, Path(d) / f"x.{fmt}"), args.repeats)
            rows.append((f"write paper records as {fmt}", len(paper), t))

    lines = [BEGIN, "## Generator (`scripts/bench_generate.py`)", "",
             f"Command: `.venv/bin/python scripts/bench_generate.py --repeats {args.repeats}`; "
             f"machine: {platform.processor() or platform.machine()}, 2 cores, CPython "
             f"{platform.python_version()}; date: {datetime.date.today().isoformat()}. "
             f"Median of {args.repeats} runs.", "",
             "| what | records | median s | records/s |", "|---|---:|---:|---:|"]
    for name, n, t in rows:
        lines.append(f"| {name} | {n} | {t:.3f} | {n / t:,.0f} |")
    lines.append(END)
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks.md"
        path.parent.mkdir(exist_ok=True)
        old = path.read_text() if path.exists() else "# Benchmarks\n\n"
        if BEGIN in old:
            old = old[:old.index(BEGIN)] + section + old[old.index(END) + len(END):]
        else:
            old = old.rstrip("\n") + "\n\n" + section + "\n"
        path.write_text(old)


if __name__ == "__main__":
    main()
