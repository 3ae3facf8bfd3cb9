"""Benchmark of interp.patching on the embedded SmolLM2-135M (30 layers x 9 heads), CPU.

One batch of 8 GAR cls pairs (~120 tokens) from the cls task with the most same-length pairs;
AtP, a plain forward and exact patching of all 270 heads are timed side by side (interleaved,
medians of --reps repetitions after a warm-up). Peak memory: each measured call runs in a fresh
child process and a thread samples the process RSS (/proc/self/statm) every 0.5 ms; the figure
is peak RSS during the call minus RSS just before it (model loaded, one warm-up call done),
with glibc told to return freed memory at once (see main). The baseline is a plain forward +
backward of the batch's clean+corrupted rows, and (stricter) of its clean rows only.

    .venv/bin/python scripts/bench_patching.py [--dtype float32|bfloat16] [--reps 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TARGET_LEN = 120


def setup(dtype: str):
    import torch

    from gar_tasks.grid import load_task_rows
    from gar_tasks.lm_eval_glue import pair_name
    from gar_tasks.load import load_records
    from gar_tasks.models import load_embedded
    from interp import as_nnsight, make_pairs

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    hf, tok = load_embedded(dtype=dtype)
    rows = [pair_name(r.person_schema, r.thing_schema) for r in load_task_rows()]
    recs = [r for r in load_records("paper") if r.family == "cls"]
    by_task: dict[tuple, list] = {}
    for r in recs:
        by_task.setdefault((r.n_r, rows[r.task_row]), []).append(r)
    best = None
    for (n_r, pair), rs in sorted(by_task.items()):
        ps = make_pairs(rs, tok, families=("cls",))
        near = sorted(range(len(ps)), key=lambda i: (abs(ps[i].length - TARGET_LEN), i))[:8]
        if len(near) == 8:
            score = sum(abs(ps[i].length - TARGET_LEN) for i in near)
            if best is None or score < best[0]:
                best = (score, f"gar_cls_nr{n_r}_{pair}", ps.subset(sorted(near)))
    _, task, pairs = best
    return hf, tok, as_nnsight(hf, tok), task, pairs


def plain_forward(hf, batch):
    import torch

    with torch.no_grad():
        ids = torch.cat([batch.clean_ids, batch.corrupt_ids])
        hf(input_ids=ids, attention_mask=batch.attention_mask.repeat(2, 1),
           position_ids=batch.position_ids.repeat(2, 1), logits_to_keep=1)


def plain_forward_backward(hf, batch, rows: str = "both"):
    """Forward and backward of the metric, parameters frozen and the embeddings' output requiring
    grad (activation gradients only, as AtP needs), over the clean+corrupted rows of the batch
    (``rows="both"``, what one batched forward+backward would do) or the clean rows only."""
    import torch

    hf.requires_grad_(False)
    n = batch.size
    reps = 2 if rows == "both" else 1
    ids = torch.cat([batch.clean_ids, batch.corrupt_ids][:reps])
    emb = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = hf(inputs_embeds=emb, attention_mask=batch.attention_mask.repeat(reps, 1),
                position_ids=batch.position_ids.repeat(reps, 1), logits_to_keep=1).logits[:n, -1]
    metric = (logits.gather(1, batch.clean_target[:, None]) - logits.gather(1, batch.corrupt_target[:, None])).sum()
    metric.backward()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_delta(fn) -> int:
    base, peak, stop = rss(), [0], threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    t = threading.Thread(target=poll)
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join()
    return max(peak[0], rss()) - base


def child_memory(dtype: str, what: str) -> None:
    from interp import attribution_batch

    hf, tok, nn, task, pairs = setup(dtype)
    batch = pairs.batch(list(range(len(pairs))))
    fn = {"atp": lambda: attribution_batch(nn, batch), "fwdbwd": lambda: plain_forward_backward(hf, batch),
          "fwdbwd_clean": lambda: plain_forward_backward(hf, batch, rows="clean")}[what]
    fn()
    print(json.dumps({"peak_delta": peak_delta(fn)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--exact-reps", type=int, default=3)
    ap.add_argument("--exact-heads", type=int, default=270,
                    help="time exact patching on the first N heads and scale to 270 (exact cost is linear "
                         "in heads: one forward per 8 heads); the agreement pass always patches all 270")
    ap.add_argument("--agreement-pairs", type=int, default=8,
                    help="pairs of the batch used for the all-270-heads agreement pass (default all 8)")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--child-memory", choices=("atp", "fwdbwd", "fwdbwd_clean"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_memory:
        return child_memory(a.dtype, a.child_memory)


    import numpy as np

    from interp import agreement, attribution_batch, exact_patch_scores
    from interp.patching import graddrop_batch

    hf, tok, nn, task, pairs = setup(a.dtype)
    batch = pairs.batch(list(range(len(pairs))))
    all_heads = [(layer, h) for layer in range(30) for h in range(9)]
    times: dict[str, list[float]] = {"forward": [], "atp": [], "exact_all": []}
    atp_terms = attribution_batch(nn, batch)  # warm-up
    plain_forward(hf, batch)
    exact = None
    for rep in range(a.reps):
        for name in ("forward", "atp", "exact_all"):
            if name == "exact_all" and rep >= a.exact_reps:
                continue
            t = time.perf_counter()
            if name == "forward":
                plain_forward(hf, batch)
            elif name == "atp":
                atp_terms = attribution_batch(nn, batch)
            else:
                exact_patch_scores(nn, pairs, all_heads[:a.exact_heads], batch_size=8)
            times[name].append(time.perf_counter() - t)
        print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items() if v), file=sys.stderr,
              flush=True)
    times["exact_all"] = [t * 270 / a.exact_heads for t in times["exact_all"]]
    mem = {}
    # glibc keeps freed blocks mapped, so an RSS delta after a warm-up call would only see growth
    # beyond the warm-up's peak; small mmap and trim thresholds hand freed tensors back at once,
    # so RSS follows live memory and the delta is the call's true transient peak.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    for what in ("fwdbwd", "fwdbwd_clean", "atp"):
        out = subprocess.run([sys.executable, __file__, "--dtype", a.dtype, "--child-memory", what],
                             capture_output=True, text=True, check=True, env=env).stdout
        mem[what] = json.loads(out.strip().splitlines()[-1])["peak_delta"]
    print(f"memory: {mem}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    agp = pairs.subset(range(a.agreement_pairs))
    exact = exact_patch_scores(nn, agp, all_heads, batch_size=8,
                               progress=lambda d, n: print(f"exact {d}/{n} {time.perf_counter() - t:.0f}s",
                                                           file=sys.stderr, flush=True) if d % 160 == 0 else None)
    atp = atp_terms[:a.agreement_pairs].sum((0, 1)) / len(agp)
    ag = agreement(atp, exact, k=10)
    # AtP* GradDrop (L forward+backward passes): timed once, ranked against |exact| (magnitudes)
    t = time.perf_counter()
    gd = graddrop_batch(nn, agp.batch(list(range(len(agp))))).mean(0)
    t_gd = time.perf_counter() - t
    ag_gd = agreement(gd, np.abs(exact.scores), k=10)
    ag_abs = agreement(np.abs(atp), np.abs(exact.scores), k=10)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"dtype": a.dtype, "task": task, "n_pairs": len(pairs), "lengths": [p.length for p in pairs],
           "width": batch.width, "threads": int(os.environ.get("BENCH_THREADS", "2")),
           "reps": {k: len(v) for k, v in times.items()}, "median_s": med, "exact_heads_timed": a.exact_heads, "agreement_pairs": len(agp),
           "atp_over_forward": med["atp"] / med["forward"], "exact_over_atp": med["exact_all"] / med["atp"],
           "spearman_all_heads": ag.spearman, "pearson_all_heads": ag.pearson,
           "top10_overlap": int(round(ag.topk_overlap * 10)),
           "abs_atp_vs_abs_exact": {"spearman": ag_abs.spearman, "top10_overlap": int(round(ag_abs.topk_overlap * 10))},
           "graddrop": {"seconds_once": t_gd, "over_atp": t_gd / statistics.median(times["atp"]),
                        "spearman_vs_abs_exact": ag_gd.spearman, "top10_overlap": int(round(ag_gd.topk_overlap * 10))},
           "peak_rss_delta_mib": {k: v / 2**20 for k, v in mem.items()},
           "mem_atp_over_fwdbwd": mem["atp"] / mem["fwdbwd"],
           "mem_atp_over_fwdbwd_clean_rows": mem["atp"] / mem["fwdbwd_clean"]}
    res["pass"] = {"atp/forward<=3": res["atp_over_forward"] <= 3, "exact/atp>=80": res["exact_over_atp"] >= 80,
                   "spearman>=0.8": ag.spearman >= 0.8, "top10>=7": res["top10_overlap"] >= 7,
                   "mem<=1.5": res["mem_atp_over_fwdbwd"] <= 1.5}
    print(json.dumps(res, indent=1, default=float))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=float)


if __name__ == "__main__":
    main()
