"""Memory across batches of the interp batch loops (ndif-team/nnsight#169 and #538 report leaks there).

Runs ``--batches`` AtP batches (``interp.patching.attribution_batch``) and as many ``gar heads`` effect
batches (``interp.heads.effect_batch``) of GAR cls records through the interp core's loader on
``--device``, and records after every batch: on CUDA ``torch.cuda.memory_allocated`` and the peak
``max_memory_allocated`` (reset per batch); on CPU the process RSS (with glibc set to return freed
memory at once, see docs/benchmarks.md). Growth = last batch minus second batch (the first one warms
allocator caches). Prints one JSON object.

    HF_HUB_OFFLINE=1 MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 \\
        .venv/bin/python scripts/bench_batch_memory.py --model smollm2 --device cpu --batches 12
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from interp import heads, patching
    from interp.core.encode import encode_cls
    from interp.core.loader import load_model
    from interp.core.select import choose_twins, filter_records, load_records, select_slices
    from interp.pairs import make_pairs

    torch.set_num_threads(args.threads)
    cuda = args.device != "cpu" and torch.cuda.is_available()
    m = load_model(args.model, args.dtype, args.device)
    slices = select_slices("gar_cls_nr1", "paper")
    records = load_records("paper")
    pairs = make_pairs(filter_records(records, slices), m.tokenizer, families=("cls",))
    pair_batches = pairs.batch_indices(args.batch_size)[:args.batches]
    sel = choose_twins(records, slices, 64, 0)
    rs = encode_cls(sel.records, m.tokenizer, sel.task_index, sel.tasks)
    rec_batches = rs.twin_batches(args.batch_size)[:args.batches]

    def measure(name, batches, run):
        out = []
        for idx in batches:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            run(idx)
            gc.collect()
            row = {"seconds": round(time.perf_counter() - t, 3)}
            if cuda:
                row.update(allocated_mib=torch.cuda.memory_allocated() / 2**20,
                           peak_mib=torch.cuda.max_memory_allocated() / 2**20)
            else:
                row["rss_mib"] = rss_mib()
            out.append(row)
        key = "allocated_mib" if cuda else "rss_mib"
        growth = out[-1][key] - out[1][key] if len(out) > 2 else None
        return {"stage": name, "batches": len(out), "per_batch": out, f"growth_{key}": growth}

    res = [measure("atp", pair_batches, lambda idx: patching.attribution_batch(m.model, pairs.batch(idx))),
           measure("heads", rec_batches, lambda idx: heads.effect_batch(m.model, rs.batch(idx)))]
    print(json.dumps({"model": m.desc, "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
                      "torch": torch.__version__, "results": res}, indent=1))


if __name__ == "__main__":
    main()
