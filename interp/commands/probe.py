"""``gar probe``: the seed's MLP truth probe on per-head features (data, features and report:
:mod:`interp.probe_run`; the trainer and feature extraction: :mod:`interp.probe`).

``--seed-features`` probes the seed's released CSV features; ``--model M --heads DIR`` extracts
features of ``M`` (cached in ``--out``, keyed by the model, dtype, texts and direction) and probes
the discovered heads against random ones. Every argument is checked before anything is loaded or
written.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from gar_tasks.errors import GARConfigError

from ..core.loader import check_device, check_dtype, check_model_args, load_model, model_fingerprint, model_sites
from ..core.outputs import (Manifest, Timings, atomic_write, cached_arrays, check_out_dir, check_unlocked, versions,
                            write_json)
from ..core.remote import server_errors
from ..heads import check_heads_model
from ..intervene import random_heads
from ..probe import PAPER_HEADS, batched_head_features, evaluate_got, evaluate_snli, traced_head_features
from ..probe_run import (FEATURE_KINDS, FEATURE_VERSION, GOT_FOLDS, GOT_SEED, SEED_REPORTED, choose_heads, dataset_files,
                         evaluate_features, load_items, majority_accuracy, parse_datasets, parse_k, probe_md,
                         read_heads_dir, resolve_mlp_dir, result_dict, sha256_of, tokenize)
from . import options

NAME = "probe"
Head = tuple[int, int]
Log = Callable[[str], Any]
Progress = Callable[[str, int, int], Any]


@dataclass(frozen=True)
class ProbeArgs:
    """The arguments of ``gar probe`` (see :mod:`interp.probe_run`)."""

    out: str | None = None
    model: str | None = None
    heads: str | None = None
    seed_features: bool = False
    mlp_dir: str | None = None
    datasets: str = "all"
    k: str = "4,8"
    random_draws: int = 5
    runs: int = 5
    limit: int | None = None
    batch_size: int = 32
    dtype: str = "bfloat16"
    device: str = "cpu"
    seed: int = 0
    threads: int = 0  # 0 = torch's default (all cores)
    remote: bool = False


def manifest(out: str | Path) -> Manifest:
    return Manifest(out, NAME, "probe.json", ["probe.md"], legacy_key="mode")


def check_common(args: ProbeArgs) -> None:
    for flag, v, lo in (("--runs", args.runs, 1), ("--batch-size", args.batch_size, 1),
                        ("--threads", args.threads, 0), ("--random-draws", args.random_draws, 0)):
        if v < lo:
            raise GARConfigError(f"{flag} must be at least {lo}, got {v}")
    if args.limit is not None and args.limit < 10:
        raise GARConfigError(f"--limit must be at least 10 (items per file), got {args.limit}")
    if args.out is not None:
        check_out_dir(args.out)
        check_unlocked(args.out)
        manifest(args.out).check()


def run_seed_features(args: ProbeArgs, log: Log | None = None) -> dict[str, Any]:
    """The trainer on the seed's CSV features: 4 paper heads and all 8, beside the seed's figures."""
    log = log or (lambda m: None)
    t0 = time.perf_counter()
    check_common(args)
    if args.model or args.heads:
        raise GARConfigError("--seed-features takes no --model / --heads (it probes the seed's CSV features)")
    mlp = resolve_mlp_dir(args.mlp_dir)
    names = parse_datasets(args.datasets)
    files = {n: dataset_files(mlp, n, csv=True) for n in names}
    results: dict[str, Any] = {}
    with options.torch_threads(args.threads):
        for name in names:
            res = {}
            for n_heads, heads, reported in (("4", PAPER_HEADS, SEED_REPORTED[name][0]),
                                             ("8", None, SEED_REPORTED[name][1])):
                t = time.perf_counter()
                if name == "snli":
                    r = evaluate_snli(files[name]["train"].parent, heads, runs=args.runs, seed=args.seed)
                else:
                    r = evaluate_got(files[name]["all"], heads, folds=GOT_FOLDS, seed=GOT_SEED)
                res[n_heads] = {**result_dict(r), "seed_reported": reported, "seconds": time.perf_counter() - t}
                log(f"{name} {n_heads} heads: {r.mean:.3f} +- {r.std:.3f} (seed {reported:.3f})")
            results[name] = res
    return {"mode": "seed_features", "mlp_dir": str(mlp), "model": "Vicuna-33B v1.3 (the seed's CSV features)",
            "paper_heads": [list(h) for h in PAPER_HEADS], "runs": args.runs, "seed": args.seed,
            "protocol": {"snli": f"given split, {args.runs} runs", "got": f"{GOT_FOLDS}-fold CV, seed {GOT_SEED}"},
            "datasets": results, "versions": versions(), "timings_s": {"total": time.perf_counter() - t0}}


@dataclass
class ModelPlan:
    """Everything a model probe needs, checked before the model loads."""

    ks: list[int]
    names: list[str]
    items: dict[str, dict[str, tuple[list[str], list[int]]]]
    true_heads: list[Head]
    false_heads: list[Head]
    direction: Any
    shape: tuple[int, int, int]
    chosen: dict[int, list[Head]]

    @property
    def discovered(self) -> list[Head]:
        return list(dict.fromkeys([*self.true_heads, *self.false_heads]))


def plan_model_probe(args: ProbeArgs) -> ModelPlan:
    """Check every argument and read every input of a model probe (no model weights)."""
    check_common(args)
    if not args.model or not args.heads:
        raise GARConfigError("gar probe needs --model and --heads (or --seed-features)")
    if not args.out:
        raise GARConfigError("gar probe --model needs --out (the folder for probe.json, probe.md and the features)")
    check_dtype(args.dtype)
    check_device(args.device)
    ks = parse_k(args.k)
    names = parse_datasets(args.datasets)
    mlp = resolve_mlp_dir(args.mlp_dir)
    files = {n: dataset_files(mlp, n) for n in names}
    true_heads, false_heads, direction = read_heads_dir(args.heads)
    if args.remote and args.seed_features:
        raise GARConfigError("--remote runs a model: --seed-features probes the seed's CSV features")
    check_model_args(args.model, args.remote)
    sites = model_sites(args.model, args.remote)
    shape = (sites.n_layers, sites.n_heads, sites.head_dim)
    if direction.shape != shape:
        raise GARConfigError(f"{args.heads}/directions.npz: 'direction' has shape {direction.shape}, but model "
                             f"{args.model!r} has {shape} (layers, heads, head_dim): "
                             "were the heads found on another model?")
    check_heads_model(args.heads, args.model, sites, model_fingerprint(args.model, args.remote))
    n_layers, n_heads = shape[:2]
    if max(ks) > n_layers * n_heads:
        raise GARConfigError(f"--k {max(ks)} is more than the {n_layers * n_heads} heads of model {args.model!r}")
    plan = ModelPlan(ks, names, {}, true_heads, false_heads, direction, shape,
                     {k: choose_heads(true_heads, false_heads, k) for k in ks})
    bad = [h for h in plan.discovered if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise GARConfigError(f"heads {bad} are outside the model's {n_layers} layers x {n_heads} heads")
    spare = n_layers * n_heads - len(plan.discovered)
    for k, heads in plan.chosen.items():
        if args.random_draws and len(heads) > spare:
            raise GARConfigError(f"cannot draw {len(heads)} random heads outside the {len(plan.discovered)} "
                                 f"discovered ones (the model has {n_layers * n_heads} heads)")
    plan.items = {n: {s: load_items(p, "snli" if n == "snli" else "got", args.limit) for s, p in fs.items()}
                  for n, fs in files.items()}
    for n, splits in plan.items.items():
        for s, (_, labels) in splits.items():
            if n != "snli" and len(labels) < GOT_FOLDS:
                raise GARConfigError(f"{n}: {len(labels)} items, {GOT_FOLDS}-fold CV needs more")
            f = Path(args.out) / f"features_{feature_tag(n, s)}.npz"
            if f.exists() and not manifest(args.out).owns(f.name):
                raise GARConfigError(f"--out {args.out} holds {f.name}, not a gar probe feature cache that a previous "
                                     "gar probe run wrote there: "
                                     "choose a new or empty folder (nothing is overwritten that gar did not write)")
    return plan


def feature_tag(name: str, split: str) -> str:
    """``snli_train`` ... or the GoT dataset name: the cache file is ``features_<tag>.npz``."""
    return f"{name}_{split}" if name == "snli" else name


def extract_features(args: ProbeArgs, plan: ModelPlan, timings: Timings, log: Log,
                     progress: Progress | None) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, str], str]:
    """Per dataset and split, every head's features: from the cache in ``--out`` when it was made from
    the same model, dtype, texts and direction, else extracted (and cached). Returns ``(features,
    cache info, model description)``."""
    import numpy as np

    out = Path(args.out)
    with timings("load"):
        m = (load_model(args.model, args.dtype, args.device, remote=True) if args.remote else
             load_model(args.model, args.dtype, args.device, nnsight=False, attn_implementation="eager"))
    out.mkdir(parents=True, exist_ok=True)
    dir_sha = sha256_of(plan.direction)
    feats: dict[str, dict[str, dict[str, Any]]] = {}
    cache_info: dict[str, str] = {}
    timings["extract"] = {}
    for n, splits in plan.items.items():
        feats[n] = {}
        t = time.perf_counter()
        for s, (texts, labels) in splits.items():
            tag = feature_tag(n, s)
            meta = {"version": FEATURE_VERSION, "model": args.model, "model_desc": m.desc,
                    "model_fingerprint": m.fingerprint, "dtype": args.dtype,
                    "texts_sha256": sha256_of(texts), "labels_sha256": sha256_of(labels), "direction_sha256": dir_sha}

            def make(texts: list[str] = texts, labels: list[int] = labels, tag: str = tag) -> dict[str, Any]:
                ids, spans = tokenize(m.tokenizer, "snli" if n == "snli" else "got", texts)
                log(f"{tag}: extracting features of {len(texts)} items")
                step = None if progress is None else (lambda d, tot: progress(f"extract {tag}", d, tot))
                if args.remote:
                    with server_errors(True):
                        f = traced_head_features(m.model, ids, spans, plan.direction, batch_size=args.batch_size,
                                                 remote=True, progress=step)
                else:
                    f = batched_head_features(m.model, ids, spans, plan.direction, batch_size=args.batch_size,
                                              progress=step)
                f["labels"] = np.asarray(labels, dtype=np.int64)
                return f

            # the model is compared by what it is (model_fingerprint), not by its name or path
            feats[n][s], loaded = cached_arrays(out / f"features_{tag}.npz", meta, make, ignore=("model", "model_desc"))
            cache_info[tag] = "loaded" if loaded else "extracted"
            if loaded:
                log(f"{tag}: {len(texts)} items, features loaded from features_{tag}.npz")
        timings["extract"][n] = time.perf_counter() - t
    return feats, cache_info, m.desc


def probe_dataset(args: ProbeArgs, plan: ModelPlan, name: str, feats: dict[str, dict[str, Any]], log: Log
                  ) -> dict[str, Any]:
    """The probe on one dataset's features: per k, discovered vs random heads per feature kind, and
    the every-head reference arm."""
    import numpy as np

    n_layers, n_heads = plan.shape[:2]
    res: dict[str, Any] = {"n_items": {s: int(len(f["labels"])) for s, f in feats.items()},
                           "yes_fraction": {s: float(np.mean(f["labels"])) for s, f in feats.items()},
                           "majority_accuracy": majority_accuracy(name, feats), "k": {}}
    for k in plan.ks:
        heads = plan.chosen[k]
        draws = [random_heads(len(heads), plan.discovered, n_layers, n_heads, seed=args.seed + d)
                 for d in range(args.random_draws)]
        per_kind = {}
        for kind in FEATURE_KINDS:
            disc = evaluate_features(name, feats, kind, heads, args.runs, args.seed)
            rand = [evaluate_features(name, feats, kind, h, args.runs, args.seed) for h in draws]
            means = [r.mean for r in rand]
            per_kind[kind] = {
                "discovered": result_dict(disc),
                "random": {"draws": [{"heads": [list(h) for h in hs], **result_dict(r)} for hs, r in zip(draws, rand)],
                           "mean": float(np.mean(means)) if means else None,
                           "std": float(np.std(means)) if means else None}}
            rtxt = f"{np.mean(means):.3f} +- {np.std(means):.3f}" if means else "-"
            log(f"{name} k={k} {kind}: discovered {disc.mean:.3f} +- {disc.std:.3f}, random {rtxt}")
        res["k"][str(k)] = {"heads": [list(h) for h in heads],
                            "true": [list(h) for h in heads if h in plan.true_heads],
                            "false": [list(h) for h in heads if h not in plan.true_heads],
                            "features": per_kind}
    # reference arm: every head of the model (how much truth signal the heads hold at all)
    every = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    res["all_heads"] = {kind: result_dict(evaluate_features(name, feats, kind, every, args.runs, args.seed))
                        for kind in FEATURE_KINDS}
    return res


def run_model_probe(args: ProbeArgs, log: Log | None = None, progress: Progress | None = None,
                    plan: ModelPlan | None = None) -> dict[str, Any]:
    """Features of ``args.model`` for the discovered and random heads, probed (see :mod:`interp.probe_run`).
    ``plan``: from :func:`plan_model_probe` (made here when not given). Writes the feature caches."""
    log = log or (lambda m: None)
    timings = Timings()
    plan = plan or plan_model_probe(args)
    with options.torch_threads(args.threads):
        feats, cache_info, desc = extract_features(args, plan, timings, log, progress)
        timings["probe"] = {}
        results: dict[str, Any] = {}
        for n in plan.names:
            t = time.perf_counter()
            results[n] = probe_dataset(args, plan, n, feats[n], log)
            timings["probe"][n] = time.perf_counter() - t
    timings.total()
    n_layers, n_heads, head_dim = plan.shape
    return {"mode": "model", "model": desc, "model_arg": args.model, "dtype": args.dtype, "device": args.device,
            "remote": args.remote,
            "heads_dir": str(args.heads), "n_layers": n_layers, "n_heads": n_heads, "head_dim": head_dim,
            "true_heads": [list(h) for h in plan.true_heads], "false_heads": [list(h) for h in plan.false_heads],
            "k": plan.ks, "random_draws": args.random_draws, "runs": args.runs, "seed": args.seed,
            "limit": args.limit, "batch_size": args.batch_size, "threads": args.threads,
            "features": {"attn": "seed's attention feature: max over the statement's query tokens of (largest "
                                 "attention weight to a key other than the first token) - (weight to the first token)",
                         "proj": "head output (o_proj input columns) at the last token . unit(mean Yes - mean No "
                                 "head output at GAR cls answer positions)",
                         "both": "attn and proj concatenated (2k features)"},
            "protocol": {"snli": f"given split, {args.runs} runs", "got": f"{GOT_FOLDS}-fold CV, seed {GOT_SEED}"},
            "cache": cache_info, "datasets": results, "versions": versions(), "timings_s": timings}


def write_report(out: Path, info: dict[str, Any], md: str) -> None:
    """probe.md and probe.json (with the manifest of the files gar probe wrote)."""
    atomic_write(out / "probe.md", md)
    features = [f"features_{tag}.npz" for tag in info.get("cache", {})]
    write_json(out / "probe.json", manifest(out).stamp(info, ["probe.md", *features]))


def run_probe(args: ProbeArgs, log: Log | None = None, progress: Progress | None = None
              ) -> tuple[dict[str, Any], str]:
    """Run ``gar probe`` in the mode ``args`` asks for; write ``probe.json`` / ``probe.md`` to
    ``args.out`` (when given; the folder is locked while this run writes to it) and return
    ``(info, markdown)``. Every argument is checked before anything is written."""
    if args.seed_features:
        info = run_seed_features(args, log)
        md = probe_md(info)
        if args.out:
            with manifest(args.out).own({"command": NAME, **asdict(args)}) as out:
                write_report(out, info, md)
        return info, md
    plan = plan_model_probe(args)
    with manifest(args.out).own({"command": NAME, **asdict(args)}) as out:
        info = run_model_probe(args, log, progress, plan)
        md = probe_md(info)
        write_report(out, info, md)
    return info, md


# ------------------------------------------------------------------------------------------
# the command line


def register(sub: Any) -> None:
    """Add ``gar probe`` to the ``gar`` subcommands."""
    p = sub.add_parser(NAME, help="the seed's MLP truth probe on per-head features (SNLI, Geometry of Truth)",
                       description="Two modes. --seed-features: the seed's MLP protocol on its released Vicuna-33B "
                                   "feature CSVs (SNLI with 4 and 8 heads, the 4 GoT datasets) beside the seed's "
                                   "figures. --model M --heads DIR: per-head features of M on the zero-shot texts "
                                   "(attn: the seed's attention feature; proj: head output at the last token "
                                   "projected on the head's True-minus-False direction from DIR/directions.npz; "
                                   "both) for the top K True+False heads of DIR/heads.json and for --random-draws "
                                   "sets of K random heads; features are cached in --out. Writes probe.json and "
                                   "probe.md to --out and prints the table.")
    p.add_argument("--seed-features", action="store_true", help="probe the seed's released CSV features")
    options.add_model_options(p, required=False, remote=True, dtype="bfloat16")
    p.add_argument("--heads", metavar="DIR", help="a `gar heads` output folder (heads.json, directions.npz)")
    options.add_out(p, required=False, help="output folder (required with --model)")
    p.add_argument("--mlp-dir", metavar="DIR",
                   help="the seed's mlp folder (default: $GAR_SHARED_DIR or ../shared, /reference/mlp)")
    p.add_argument("--datasets", default="all", metavar="LIST",
                   help="all | comma list of snli, cities, companies, counterfact, sp_en_trans (default all)")
    options.add_knob(p, "--k", "discovered heads per probe: top ceil(K/2) True + floor(K/2) False", default="4,8",
                     metavar="K[,K]")
    options.add_knob(p, "--random-draws", "random-head controls", default=5, metavar="R")
    options.add_knob(p, "--runs", "SNLI probe runs", default=5, metavar="N")
    options.add_knob(p, "--limit", "first N items per file", shown_default="all", metavar="N")
    options.add_run_options(p, 32, "texts")
    options.add_knob(p, "--seed", "SNLI run i uses seed S+i, random draw i seed S+i", default=0, metavar="S")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    pa = ProbeArgs(out=args.out, model=args.model, heads=args.heads, seed_features=args.seed_features,
                   mlp_dir=args.mlp_dir, datasets=args.datasets, k=args.k, random_draws=args.random_draws,
                   runs=args.runs, limit=args.limit, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                   seed=args.seed, threads=args.threads, remote=args.remote)
    log = options.stderr_log(args)

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % 20 == 0:
            log(f"{stage}: batch {done}/{total}")

    _, md = run_probe(pa, log=log, progress=progress)
    print(md, end="")
    if args.out:
        print(f"wrote probe.json, probe.md to {args.out}", file=sys.stderr)
    return 0


__all__ = ["ModelPlan", "NAME", "ProbeArgs", "check_common", "extract_features", "feature_tag", "main", "manifest",
           "plan_model_probe", "probe_dataset", "register", "run_model_probe", "run_probe", "run_seed_features",
           "write_report"]
