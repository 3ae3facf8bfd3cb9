"""``gar intervene``: cls accuracy before/after a head intervention vs disjoint random heads (the
measurements: :mod:`interp.intervene_report`; the hooks: :mod:`interp.intervene`).

Every argument is checked before the first forward (heads against the model's config before the
weights load), and nothing is written unless the whole run succeeds.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from gar_tasks.errors import GARConfigError

from ..core.encode import ClsPrompts, encode_cls
from ..core.loader import check_device, check_dtype, check_model_args, load_model, model_fingerprint, model_sites
from ..core.outputs import Manifest, Timings, atomic_write, check_out_dir, check_unlocked, versions, write_json
from ..core.remote import server_errors
from ..core.select import Selection, choose_balanced, load_records, select_slices
from ..heads import check_heads_model, load_heads
from ..intervene import MODES, Head, head_means, parse_heads, traced_head_means
from ..intervene_report import (OUTPUTS, HeadPlan, check_heads, control_plans, normalize_heads, report_md, run_arm,
                                summarize, traced_arms)
from . import options

NAME = "intervene"
WHICH = ("true", "false", "both")


@dataclass(frozen=True)
class InterveneArgs:
    """What ``gar intervene`` was asked (the CLI's flags, one field each)."""

    model: str
    mode: str
    out: str
    heads: str | None = None
    tasks: str = options.DEFAULT_CLS_TASKS
    config: str = "paper"
    n: int = 64
    batch_size: int = 16
    dtype: str = "float32"
    device: str = "cpu"
    factor: float | None = None
    up: float = 2.0
    down: float = 0.0
    true_heads: str | None = None
    false_heads: str | None = None
    which: str | None = None
    random_draws: int = 5
    seed: int = 0
    threads: int = 0
    remote: bool = False


def looks_like_path(spec: str) -> bool:
    """A --heads value meant as a file or folder (not a head list)."""
    return "/" in spec or spec.endswith(".json") or spec.startswith((".", "~"))


def resolve_plan(args: InterveneArgs) -> tuple[HeadPlan, dict[str, Any]]:
    """The targeted arm from the flags, and where its heads (and means) came from.

    No model needed: range checks come later (:func:`check_heads`). Returns ``(plan, source)``
    with ``source = {"heads": "spec" | path, "means": array or None}``.
    """
    if args.mode not in MODES:
        raise GARConfigError(f"unknown intervention mode {args.mode!r}; choose from {', '.join(MODES)}")
    if args.which is not None and args.which not in WHICH:
        raise GARConfigError(f"--which must be one of {', '.join(WHICH)}, got {args.which!r}")
    true_h: list[Head] = []
    false_h: list[Head] = []
    spec_heads: list[Head] = []
    dirs: dict[str, Any] = {}
    source: dict[str, Any] = {"heads": None, "means": None}
    if args.heads:
        p = Path(args.heads).expanduser()
        if p.exists():
            if p.is_dir() and not (p / "heads.json").exists():
                raise GARConfigError(f"--heads {args.heads}: folder has no heads.json (expected `gar heads` output)")
            true_h, false_h, dirs = load_heads(p)
            source["heads"] = str(p)
        elif looks_like_path(args.heads):
            raise GARConfigError(f"--heads {args.heads!r}: no such file or folder")
        else:
            spec_heads = parse_heads(args.heads)
            if not spec_heads:
                raise GARConfigError(f"--heads {args.heads!r} names no head")
            source["heads"] = "spec"
    explicit = args.true_heads is not None or args.false_heads is not None
    if args.mode == "label":
        if args.which is not None:
            raise GARConfigError("--which applies to modes ablate/mean/scale; label mode uses both sets")
        if explicit:
            if args.heads:
                raise GARConfigError("label mode: give either --heads DIR or --true-heads/--false-heads, not both")
            true_h, false_h = parse_heads(args.true_heads or ""), parse_heads(args.false_heads or "")
            source["heads"] = "spec"
        elif source["heads"] == "spec":
            raise GARConfigError("label mode needs True and False heads: --heads DIR (output of `gar heads`) "
                                 "or --true-heads SPEC --false-heads SPEC")
        elif not args.heads:
            raise GARConfigError("label mode needs --heads DIR or --true-heads SPEC / --false-heads SPEC")
        true_n, false_n = normalize_heads(true_h), normalize_heads(false_h)
        if not true_n and not false_n:
            raise GARConfigError("label mode: no True and no False heads given")
        both = sorted(set(true_n) & set(false_n))
        if both:
            raise GARConfigError(f"heads {', '.join(f'{l}:{h}' for l, h in both)} are both True and False heads")
        plan = HeadPlan("label", true_heads=true_n, false_heads=false_n, up=float(args.up), down=float(args.down))
    else:
        if explicit:
            raise GARConfigError("--true-heads/--false-heads are for --mode label; use --heads")
        if not args.heads:
            raise GARConfigError(f"mode {args.mode} needs --heads SPEC (e.g. 14:0;15:3) or --heads DIR")
        if source["heads"] == "spec":
            if args.which is not None:
                raise GARConfigError("--which picks from a `gar heads` folder; --heads is a head list here")
            heads = normalize_heads(spec_heads)
        else:
            which = args.which or "both"
            heads = normalize_heads((true_h if which in ("true", "both") else []) + (false_h if which in ("false", "both") else []))
            if not heads:
                raise GARConfigError(f"--heads {args.heads}: no {which} heads in it")
        if args.mode == "scale" and args.factor is None:
            raise GARConfigError("mode scale needs --factor")
        if args.mode != "scale" and args.factor is not None:
            raise GARConfigError(f"--factor applies to mode scale, not {args.mode}")
        plan = HeadPlan(args.mode, heads=heads, factor=float(args.factor or 0.0))
        if args.mode == "mean" and dirs.get("mean") is not None:
            source["means"] = dirs["mean"]
    return plan, source


def check_args(args: InterveneArgs) -> None:
    for name, v in (("--n", args.n), ("--batch-size", args.batch_size), ("--random-draws", args.random_draws)):
        if v < 1:
            raise GARConfigError(f"{name} must be at least 1, got {v}")
    if args.threads < 0:
        raise GARConfigError(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    for name, v in (("--factor", args.factor), ("--up", args.up), ("--down", args.down)):
        if v is not None and not math.isfinite(v):
            raise GARConfigError(f"{name} must be a finite number, got {v}")


def choose(args: InterveneArgs) -> Selection:
    """``--n`` label-balanced cls records per selected task."""
    slices = [s for s in select_slices(args.tasks, args.config) if s.family == "cls"]
    if not slices:
        raise GARConfigError(f"task selector {args.tasks!r} selects no cls task (intervene reports cls accuracy)")
    return choose_balanced(load_records(args.config), slices, args.n, args.seed, args.config)


def check_means(means: Any, sites: Any) -> Any:
    """The ``mean`` array of a heads folder as a tensor of the model's head shape."""
    import numpy as np
    import torch

    if means is None:
        return None
    means = torch.as_tensor(np.asarray(means), dtype=torch.float32)
    want = (sites.n_layers, sites.n_heads, sites.head_dim)
    if tuple(means.shape) != want:
        raise GARConfigError(f"directions.npz 'mean' has shape {tuple(means.shape)}, the model needs {want}")
    return means


def run_arms(model: Any, enc: ClsPrompts, plan: HeadPlan, controls: list[HeadPlan], means: Any, batch_size: int,
             timings: Timings, log: Callable[[str], Any]) -> tuple[Any, Any, list[Any]]:
    """Baseline, targeted and every random arm: per-record ``(correct, margin)``."""

    def arm(name: str, p: HeadPlan | None) -> tuple[Any, Any]:
        with timings(name):
            res = run_arm(model, enc, p, means, batch_size)
        log(f"{name}: acc {res[0].mean():.3f}, margin {res[1].mean():+.3f} ({timings[name]:.1f}s)")
        return res

    return arm("baseline", None), arm("targeted", plan), [arm(f"random_{i}", c) for i, c in enumerate(controls)]


def run_intervene(args: InterveneArgs, log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run ``gar intervene``; returns the ``intervene.json`` dict (plus ``markdown``)."""
    log = log or (lambda msg: None)
    timings = Timings()
    check_args(args)
    plan, source = resolve_plan(args)
    out = check_out_dir(args.out)
    manifest = Manifest(out, NAME, "intervene.json", OUTPUTS, legacy_key="targeted_heads")
    manifest.check()
    check_unlocked(out)
    check_dtype(args.dtype)
    check_device(args.device)
    check_model_args(args.model, args.remote)
    sel = choose(args)
    sites = model_sites(args.model, args.remote)  # every head check before the weights load
    if source["heads"] not in (None, "spec"):
        check_heads_model(source["heads"], args.model, sites, model_fingerprint(args.model, args.remote))
    check_heads(plan.all_heads, sites.n_layers, sites.n_heads, "targeted head")
    controls = control_plans(plan, sites.n_layers, sites.n_heads, args.random_draws, args.seed)
    means = check_means(source["means"], sites)
    with timings("load"):
        m = load_model(args.model, args.dtype, args.device, nnsight=args.remote, remote=args.remote)
        if m.sites != sites:
            raise GARConfigError(f"model {args.model!r}: loaded model's heads differ from its config's")
        enc = encode_cls(sel.records, m.tokenizer, sel.task_index, sel.tasks)
    means_source = None
    with options.torch_threads(args.threads), server_errors(args.remote):
        if plan.mode == "mean":
            with timings("means"):
                if means is None:
                    log(f"head means over {len(enc)} prompts")
                    means = (traced_head_means(m.model, enc.ids, args.remote) if args.remote
                             else head_means(m.model, enc.ids))
                    means_source = f"head_means over the {len(enc)} chosen prompts"
                else:
                    means_source = f"{source['heads']} directions.npz 'mean'"
        if args.remote:  # every arm of a batch in one request
            with timings("arms"):
                base, targ, *rand = traced_arms(m.model, enc, [None, plan, *controls], means, args.batch_size,
                                                args.remote, lambda done, total: log(f"arms: batch {done}/{total}"))
        else:
            base, targ, rand = run_arms(m.model, enc, plan, controls, means, args.batch_size, timings, log)
    rows, overall = summarize(enc, base, targ, rand)
    info = {"command": "intervene", "settings": {**asdict(args), "model_desc": m.desc},
            "server": m.server, "model_type": sites.model_type, "n_layers": sites.n_layers,
            "n_heads": sites.n_heads,
            "heads_source": source["heads"], "means_source": means_source, "targeted_heads": plan.to_dict(),
            "random_draws": [{"seed": args.seed + i, **c.to_dict()} for i, c in enumerate(controls)],
            "tasks": rows, "overall": overall, "versions": versions(), "timings_s": timings}
    md = report_md(info)
    timings.total()
    with manifest.own({"command": NAME, **asdict(args)}):
        atomic_write(out / "intervene.md", md)
        write_json(out / "intervene.json", manifest.stamp(info, OUTPUTS))
    info["markdown"] = md
    log(f"wrote {', '.join(OUTPUTS)} to {out}")
    return info


# ------------------------------------------------------------------------------------------
# the command line


def register(sub: Any) -> None:
    """Add ``gar intervene`` to the ``gar`` subcommands."""
    p = sub.add_parser(NAME, help="cls accuracy before/after a head intervention vs random heads",
                       description="Zero (ablate), mean-replace (mean), scale, or label-guided scale (label: gold "
                                   "Yes -> True heads x UP, False heads x DOWN; reversed for No) chosen heads, and "
                                   "report GAR cls accuracy (lm-eval acc) and the mean logit(gold)-logit(other) "
                                   "before and after, per task and overall, against --random-draws controls of "
                                   "as many random heads disjoint from the targets. Writes intervene.json and "
                                   "intervene.md to --out and prints the table.")
    options.add_model_options(p, remote=True)
    p.add_argument("--mode", required=True, metavar="MODE", help="ablate | mean | scale | label")
    p.add_argument("--heads", metavar="SPEC|DIR",
                   help="heads as layer:head (e.g. '14:0;15:3'), or a `gar heads` output folder / heads.json")
    options.add_out(p)
    options.add_selection(p, options.DEFAULT_CLS_TASKS, 64, "records per task, label-balanced",
                          "record choice; random draw i uses seed S+i", "which GAR tasks (cls slices are used)")
    options.add_run_options(p, 16, "prompts")
    options.add_knob(p, "--factor", "mode scale: multiply the heads by F", metavar="F")
    options.add_knob(p, "--up", "mode label: strengthen factor", "factor", default=2.0, metavar="F")
    options.add_knob(p, "--down", "mode label: silence factor", "factor", default=0.0, metavar="F")
    p.add_argument("--true-heads", metavar="SPEC", help="mode label: True heads (instead of --heads DIR)")
    p.add_argument("--false-heads", metavar="SPEC", help="mode label: False heads (instead of --heads DIR)")
    p.add_argument("--which", metavar="SET", help="with --heads DIR, modes ablate/mean/scale: true | false | both "
                                                  "(default both)")
    options.add_knob(p, "--random-draws", "random-head controls", "random_draws_intervene", default=5, metavar="R")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    ia = InterveneArgs(model=args.model, mode=args.mode, out=args.out, heads=args.heads, tasks=args.tasks,
                       config=args.config, n=args.n, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                       factor=args.factor, up=args.up, down=args.down, true_heads=args.true_heads,
                       false_heads=args.false_heads, which=args.which, random_draws=args.random_draws,
                       seed=args.seed, threads=args.threads, remote=args.remote)
    info = run_intervene(ia, log=options.stderr_log(args))
    print(info["markdown"], end="")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


__all__ = ["InterveneArgs", "NAME", "WHICH", "check_args", "choose", "looks_like_path", "main", "register",
           "resolve_plan", "run_intervene"]
