"""Benchmark: generator and validator throughput, and their peak memory; writes two sections of
docs/benchmarks.md.

Usage: .venv/bin/python scripts/bench_generate.py [--repeats 5] [--no-write] [--rss-only]
                                                  [--rss-sizes 20,200] [--rss-repeats 3]
Times are medians of --repeats runs in one process (the machine is shared and noisy). Peak memory
is the peak resident set size (ru_maxrss) of a fresh `gar generate` / `gar validate` process at
two --per-task sizes (v1 profile): streaming keeps it flat whatever the number of records.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gar_tasks.generate import GeneratorConfig  # noqa: E402

BEGIN, END = "<!-- bench_generate:begin -->", "<!-- bench_generate:end -->"
RSS_BEGIN, RSS_END = "<!-- bench_generate_rss:begin -->", "<!-- bench_generate_rss:end -->"


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peak_rss(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one fresh process running ``argv``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in (0, 1):  # validate exits 1 on a finding; anything else is a failure
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def rss_rows(sizes: list[int], repeats: int) -> list[tuple[str, int, int, float, float]]:
    """(what, per-task, records, median s, median peak MiB) for generate (jsonl, parquet) and validate."""
    from gar_tasks.generate import GeneratorConfig

    gar = [sys.executable, "-m", "gar_tasks"]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for size in sizes:
            n = GeneratorConfig(profile="v1", n_per_task=size).n_records()
            for fmt in ("jsonl", "parquet"):
                out = str(Path(d) / f"v1_{size}.{fmt}")
                gen = [peak_rss([*gar, "generate", "--profile", "v1", "--per-task", str(size), "-q", "--out", out])
                       for _ in range(repeats)]
                rows.append((f"gar generate ({fmt})", size, n, statistics.median(g[0] for g in gen),
                             statistics.median(g[1] for g in gen)))
            for fmt in ("jsonl", "parquet"):
                out = str(Path(d) / f"v1_{size}.{fmt}")
                val = [peak_rss([*gar, "validate", out]) for _ in range(repeats)]
                rows.append((f"gar validate ({fmt}, {os.path.getsize(out) / 2**20:.0f} MiB file)", size, n,
                             statistics.median(v[0] for v in val), statistics.median(v[1] for v in val)))
    return rows


def write_section(section: str, begin: str, end: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in old:
        old = old[:old.index(begin)] + section + old[old.index(end) + len(end):]
    else:
        old = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(old)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--rss-only", action="store_true", help="only the peak-memory section")
    ap.add_argument("--rss-sizes", default="20,200", help="--per-task sizes for peak memory (default 20,200)")
    ap.add_argument("--rss-repeats", type=int, default=3, help="fresh processes per peak-memory case")
    args = ap.parse_args()

    if not args.rss_only:
        timing(args)
    sizes = [int(x) for x in args.rss_sizes.split(",")]
    rows = rss_rows(sizes, args.rss_repeats)
    lines = [RSS_BEGIN, "## Generator and validator peak memory (`scripts/bench_generate.py`)", "",
             f"Command: `.venv/bin/python scripts/bench_generate.py --rss-only --rss-sizes {args.rss_sizes} "
             f"--rss-repeats {args.rss_repeats}`; machine: {machine()}; date: {datetime.date.today().isoformat()}. "
             f"Peak RSS (ru_maxrss) of a fresh `python -m gar_tasks` process, v1 profile; medians of "
             f"{args.rss_repeats} processes. Records are streamed (JSON Lines line by line, Parquet in row groups "
             f"of 1000; validate reads one record at a time), so peak memory should not grow with the records.", "",
             "| command | --per-task | records | median s | median peak RSS (MiB) |", "|---|---:|---:|---:|---:|"]
    for what, size, n, t, mb in rows:
        lines.append(f"| {what} | {size} | {n} | {t:.1f} | {mb:.0f} |")
    lines.append(RSS_END)
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(section, RSS_BEGIN, RSS_END)


def timing(args: argparse.Namespace) -> None:
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
             f"machine: {machine()}; date: {datetime.date.today().isoformat()}. "
             f"Median of {args.repeats} runs.", "",
             "| what | records | median s | records/s |", "|---|---:|---:|---:|"]
    for name, n, t in rows:
        lines.append(f"| {name} | {n} | {t:.3f} | {n / t:,.0f} |")
    lines.append(END)
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END)


if __name__ == "__main__":
    main()
