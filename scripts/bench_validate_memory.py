"""Benchmark: peak memory of ``gar validate`` on files of growing size: Parquet with today's reader
(``gar_tasks.io``: a reader per row group, rows decoded ``DECODE_ROWS`` at a time) and, for
comparison, the reader before (one reader over the whole file, a thousand rows decoded at once);
JSON Lines files with the one reader there is.

Usage: .venv/bin/python scripts/bench_validate_memory.py FILE.parquet|FILE.jsonl [...] [--repeats 1]
Make the files with ``gar generate --profile v1 --per-task N --out FILE.parquet`` (N = 200: 115,200
records, 28 MiB; N = 1000: 576,000 records). Each measurement is a fresh process validating one
file; peak memory is its ru_maxrss. Prints one JSON line per (file, reader).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from gar_tasks import io
from gar_tasks.validate import validate_file

assert io.__file__.startswith(sys.argv[3]), io.__file__  # measuring this checkout

if sys.argv[2] == "before":  # one iter_batches over every row group, pre-buffered, 1000 rows decoded at once
    import pyarrow.parquet as pq

    def whole(p):
        i = 0
        for batch in pq.ParquetFile(p).iter_batches(batch_size=io.ROW_GROUP):
            for r in batch.to_pylist():
                i += 1
                yield f"row {i}", r

    io._iter_parquet = whole
t0 = time.perf_counter()
rep = validate_file(sys.argv[1])
print(json.dumps({"records": rep.n_records, "ok": rep.ok, "seconds": round(time.perf_counter() - t0, 1),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""


def measure(path: Path, reader: str) -> dict:
    # this checkout's gar_tasks first (an installed one may be imported at start-up by the lm-eval hook)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-c", CHILD, str(path), reader, str(ROOT)], capture_output=True,
                       text=True, check=True, env=env)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--repeats", type=int, default=1, help="processes per (file, reader); the median is shown")
    args = ap.parse_args()
    for f in args.files:
        for reader in ("now", "before") if f.suffix == ".parquet" else ("now",):
            runs = [measure(f, reader) for _ in range(args.repeats)]
            print(json.dumps({"file": f.name, "mib": round(f.stat().st_size / 2**20), "reader": reader,
                              "records": runs[0]["records"],
                              "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                              "seconds": statistics.median(r["seconds"] for r in runs)}), flush=True)


if __name__ == "__main__":
    main()
