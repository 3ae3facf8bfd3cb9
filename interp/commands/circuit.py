"""``gar circuit`` and ``gar circuit-overlap``: role-level circuits of GAR tasks.

``gar circuit`` parses, composes the interp core (model loading, record selection, checkpoint,
manifest, lock) with the circuit library and writes: counterfactual items -> batches -> EAP sums per
batch (checkpointed) -> :class:`~interp.circuit.graph.EdgeScores` -> exact edge patching batch by
batch as the faithfulness callable (all four in :mod:`interp.circuit.run`) ->
:func:`~interp.circuit.outputs.write_circuit_outputs` (+ exact single-edge spot checks in
``spot.json``; with a truth file, :func:`~interp.circuit.groundtruth.truth_scores`) -> ``circuit.json``.

Checkpoint (``OUT/checkpoint/``): ``args.json`` (the run's identity and model fingerprint),
``items.json`` (the chosen items' record ids), one ``eap_<cf>_<batch>.npz`` per finished batch
(score sums, role presence, rows) and ``evals.json`` (every exact evaluation done so far, keyed by
a hash of the circuit's masks), so a rerun recomputes neither finished batches nor evaluations.

``gar circuit-overlap`` reads several ``gar circuit`` folders (``scores.npz``, and the split-half
``scores_half{1,2}.npz``) and writes :func:`~interp.circuit.outputs.write_overlap_outputs`. The
transfer matrix and the core circuit's faithfulness need every task's exact patcher, i.e. the
model: with ``--model`` they are computed (each run's records are rebuilt from its
``circuit.json``), without it they are skipped and ``overlap.json`` says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from gar_tasks.errors import GARConfigError

from ..core.loader import check_device, check_dtype, check_model_args, load_config, load_model, model_fingerprint
from ..core.outputs import Checkpoint, Manifest, Timings, check_out_dir, check_unlocked, versions, write_json
from ..core.identity import same_model
from ..core.remote import one_line, server_errors
from ..core.select import Slice, filter_records, load_records, select_slices
from ..circuit.run import COUNTERFACTUALS, Evaluator, StaleCheckpoint, Task, eap_scores, spot_checks
from . import options

NAME = "circuit"
OVERLAP_NAME = "circuit-overlap"
CHECKPOINT_VERSION = 3  # 2: exact-softmax exact on q ports and logits; 3: on k and v ports too
MAIN = "circuit.json"
OUTPUTS = ("scores.npz", "graph.json", "circuit.dot", "loop.json", "summary.md", "circuit.png", "loop.png",
           "faithfulness.json", "faithfulness.png", "spot.json", "scores_half1.npz", "scores_half2.npz")
# the checkpoint's files (a user's file of such a name is refused before any work, never replaced)
CHECKPOINT_FILES = ("checkpoint/args.json", "checkpoint/items.json", "checkpoint/evals.json",
                    "checkpoint/eap_*_[0-9][0-9][0-9][0-9][0-9].npz")
OVERLAP_MAIN = "overlap.json"
OVERLAP_OUTPUTS = ("core_graph.json", "overlap_edges.png", "overlap_nodes.png", "overlap_heads.png", "transfer.png")
METHODS = ("topn", "greedy")
Progress = Callable[[str, int, int], Any]
Log = Callable[[str], Any]


def size_arg(text: str) -> str:
    """``--size`` checked while the command line is parsed (argparse ``type``): an edge count within
    ``options.KNOBS['size_edges']`` or a percentage; the text is returned as given."""
    try:
        n, _ = parse_size(text)
    except GARConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n is not None:
        options.KNOBS["size_edges"](str(n))
    return text


def parse_size(size: str) -> tuple[int | None, float | None]:
    """``"1%"`` -> (None, 1.0), ``"200"`` -> (200, None): a circuit size as a count or a percentage."""
    s = str(size).strip()
    try:
        if s.endswith("%"):
            pct = float(s[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return None, pct
        n = int(s)
        if n < 1:
            raise ValueError
        return n, None
    except ValueError:
        raise GARConfigError(f"circuit size {size!r} is neither a positive edge count nor a percentage "
                             "in (0, 100] like 1%") from None


@dataclass(frozen=True)
class CircuitArgs:
    """What ``gar circuit`` was asked (the CLI's flags, one field each)."""

    model: str
    tasks: str
    out: str
    config: str = "paper"
    n: int = 24
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    remote: bool = False
    restart: bool = False
    threads: int = 0
    schema: str = "default"
    counterfactual: str = "pair"
    ig_steps: int = 1
    exact_softmax: bool = True  # the compiled fixtures' evidence: see docs/results.md
    method: str = "topn"
    size: str = "1%"
    curve: tuple[float, ...] | None = None  # None: the circuit's own size only
    random: int = 5
    spot: int = 10
    truth: str | None = None  # a truth file (interp.circuit.groundtruth): score the run against it

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match (the EAP sums depend on these; where and how it runs do not)."""
        d = {k: getattr(self, k) for k in ("model", "tasks", "config", "n", "batch_size", "dtype", "seed", "remote",
                                          "counterfactual", "ig_steps", "exact_softmax")}
        d["schema"] = self.schema_dict()
        d["checkpoint_version"] = CHECKPOINT_VERSION
        return d

    def schema_dict(self) -> dict[str, Any]:
        from ..circuit.roles import load_schema

        return load_schema(self.schema).to_dict()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = list(self.curve) if self.curve is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], **override: Any) -> "CircuitArgs":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in {**d, **override}.items() if k in names}
        if d.get("curve") is not None:
            d["curve"] = tuple(d["curve"])
        return cls(**d)


def check_args(args: CircuitArgs) -> list[Slice]:
    """Every check that needs no weights (the model's config is read: architecture); returns the slices."""
    from ..circuit.ports import circuit_shape
    from ..circuit.roles import load_schema

    for name, v, lo in (("--n", args.n, 1), ("--batch-size", args.batch_size, 1), ("--threads", args.threads, 0),
                        ("--ig-steps", args.ig_steps, 1), ("--random", args.random, 0), ("--spot", args.spot, 0)):
        if v < lo:
            raise GARConfigError(f"{name} must be at least {lo}, got {v}")
    if args.counterfactual not in COUNTERFACTUALS:
        raise GARConfigError(f"unknown counterfactual {args.counterfactual!r}; choose from {', '.join(COUNTERFACTUALS)}")
    if args.method not in METHODS:
        raise GARConfigError(f"unknown extraction method {args.method!r}; choose from {', '.join(METHODS)}")
    parse_size(args.size)
    for p in args.curve or ():
        if not 0 < p <= 100:
            raise GARConfigError(f"curve percentages must lie in (0, 100], got {p:g}")
    check_dtype(args.dtype)
    check_device(args.device)
    schema = load_schema(args.schema)
    if "END" not in schema.roles:
        raise GARConfigError(f"schema {schema.name!r} has no END role (the metric is read there)")
    slices = select_slices(args.tasks, args.config)
    check_model_args(args.model, args.remote)
    if args.remote and args.counterfactual == "mean":
        raise GARConfigError("role-mean ablation runs the model locally (its means come from local forward passes); "
                             "it cannot run remotely")
    circuit_shape(load_config(args.model, args.remote))  # unsupported architecture: before the weights load
    if args.truth is not None:
        from ..circuit.groundtruth import truth_edges

        truth_edges(args.truth, args.counterfactual)
    check_out_dir(args.out)
    return slices


def task_of(args: CircuitArgs, m: Any, slices: list[Slice], record_ids: Sequence[str] | None = None) -> Task:
    """The run's :class:`~interp.circuit.run.Task` (its records from the selection)."""
    return Task(m, filter_records(load_records(args.config), slices), args.schema, args.counterfactual, n=args.n,
                seed=args.seed, batch_size=args.batch_size, record_ids=record_ids)


@contextmanager
def resume_hint() -> Iterator[None]:
    """A checkpoint the run cannot resume from: say how to discard it."""
    try:
        yield
    except StaleCheckpoint as e:
        raise GARConfigError(f"{e}; pass --restart to discard the checkpoint") from None


def run_circuit(args: CircuitArgs, progress: Progress | None = None, log: Log | None = None) -> dict[str, Any]:
    """Run ``gar circuit``; returns the ``circuit.json`` dict. Raises ``GARConfigError`` before writing
    anything when the arguments cannot work."""
    from ..circuit.groundtruth import truth_scores
    from ..circuit.outputs import faithfulness_headline
    from ..circuit.summary import append_truth

    log = log or (lambda msg: None)
    timings = Timings()
    slices = check_args(args)
    out = Path(args.out)
    manifest = Manifest(out, NAME, MAIN, [*OUTPUTS, *CHECKPOINT_FILES], legacy_key="circuit")
    manifest.check()
    fingerprint = model_fingerprint(args.model, args.remote)
    ckpt = Checkpoint(out, {**args.identity(), "model_fingerprint": fingerprint}, manifest,
                      values=("items.json", "evals.json"))
    check_unlocked(out)
    if not args.restart:
        ckpt.check()
    with timings("load"):
        m = load_model(args.model, args.dtype, args.device, remote=args.remote)
    if not args.remote:
        m.hf.requires_grad_(False)
    with options.torch_threads(args.threads):
        resumed_ids = None
        if not args.restart and ckpt.check() and ckpt.path("items.json").exists():
            resumed_ids = json.loads(ckpt.path("items.json").read_text())
        with timings("items"), resume_hint():
            task = task_of(args, m, slices, resumed_ids)  # a counterfactual leaving no pair fails here: nothing written
        with manifest.own({"command": NAME, **args.to_json()}):
            resumed = ckpt.open(restart=args.restart)
            ckpt.value("items.json", lambda: task.record_ids)
            with timings("eap"), server_errors(args.remote):
                scores, half1, half2 = eap_scores(task, ckpt, ig_steps=args.ig_steps, exact_softmax=args.exact_softmax,
                                                  remote=args.remote, meta={"schema": args.schema, "tasks": args.tasks},
                                                  progress=progress)
            n, pct = parse_size(args.size)
            title = f"{Path(args.model).name} on {args.tasks} ({args.counterfactual}, {len(task.cf)} rows)"
            with resume_hint():
                evaluate = None if args.remote else Evaluator(task, ckpt.path("evals.json"), log)
            extra: dict[str, Any] = {}
            spot = None
            with timings("faithfulness"):
                if evaluate is not None:
                    m_full, m_empty = evaluate.full_empty()
                    size_pct = pct if pct is not None else 100.0 * n / max(1, scores.n_edges())
                    extra = dict(evaluate=evaluate, m_full=m_full, m_empty=m_empty, n_random=args.random,
                                 seed=args.seed, percentages=list(args.curve) if args.curve is not None else [size_pct])
                res = write_outputs(out, scores, half1, half2, n, pct, args, title,
                                    {**extra, "polarity": task.polarity}, log)
            if evaluate is not None and args.spot:
                with timings("spot"):
                    spot = spot_checks(scores, evaluate, extra["m_full"], args.spot, args.seed)
                    write_json(out / "spot.json", spot)
            truth = None
            if args.truth is not None:
                truth = truth_scores(args.truth, args.counterfactual, scores, evaluate, extra.get("m_full"),
                                     extra.get("m_empty"))
                append_truth(out / "summary.md", truth)
            files = sorted({Path(p).name for p in res["paths"].values()} | ({"spot.json"} if spot else set())
                           | ({"scores_half1.npz", "scores_half2.npz"} if half1 is not None else set()))
            info = {"model": m.desc, "model_arg": args.model, "model_fingerprint": fingerprint, "server": m.server,
                    "args": args.to_json(), "slices": [asdict(s) for s in slices], "rows": len(task.cf),
                    "counts": task.counts, "rejected": task.rejected, "record_ids": task.record_ids,
                    "meta": scores.meta, "n_edges_graph": scores.n_edges(), "circuit": {k: v for k, v in res.items()
                                                                                      if k != "paths"},
                    "m_full": extra.get("m_full"), "m_empty": extra.get("m_empty"),
                    "faithfulness": faithfulness_headline(out) if evaluate is not None else None,
                    "spot": spot["stats"] if spot else None, "truth": truth,
                    "faithfulness_skipped": "remote run: exact patching needs the model locally" if args.remote else None,
                    "evaluations": {"computed": evaluate.computed, "loaded": evaluate.loaded} if evaluate else None,
                    "resumed": resumed, "batches": dict(ckpt.counts), "versions": versions(), "timings_s": timings}
            timings.total()
            write_json(out / MAIN, manifest.stamp(info, files))
    log(f"wrote {', '.join(files)} and {MAIN} to {out}")
    return info


def write_outputs(out: Path, scores: Any, half1: Any, half2: Any, n: int | None, pct: float | None,
                  args: CircuitArgs, title: str, extra: dict[str, Any], log: Log) -> dict[str, Any]:
    from ..circuit.outputs import write_circuit_outputs

    kinds = {s.family for s in select_slices(args.tasks, args.config)}
    res = write_circuit_outputs(out, scores, n=n, percent=pct, method=args.method, title=title,
                                task_kind=kinds.pop() if len(kinds) == 1 else "any", progress=log, **extra)
    if half1 is not None:
        half1.save(out / "scores_half1.npz")
        half2.save(out / "scores_half2.npz")
    return res


# ------------------------------------------------------------------------------------------
# gar circuit-overlap


@dataclass(frozen=True)
class OverlapArgs:
    dirs: tuple[str, ...]
    out: str
    size: str = "1%"
    method: str = "topn"
    core_fraction: float = 0.5
    model: str | None = None
    device: str = "cpu"
    threads: int = 0
    random: int = 5
    seed: int = 0


def run_overlap(args: OverlapArgs, log: Log | None = None) -> dict[str, Any]:
    """Overlap of several ``gar circuit`` runs (same model graph); transfer with ``--model``."""
    from ..circuit.outputs import write_overlap_outputs

    log = log or (lambda msg: None)
    if len(args.dirs) < 2:
        raise GARConfigError("circuit-overlap needs at least two gar circuit output folders")
    if not 0 < args.core_fraction <= 1:
        raise GARConfigError(f"--core-fraction must lie in (0, 1], got {args.core_fraction}")
    n, pct = parse_size(args.size)
    out = Path(args.out)
    check_out_dir(args.out)
    manifest = Manifest(out, OVERLAP_NAME, OVERLAP_MAIN, OVERLAP_OUTPUTS, legacy_key="core")
    manifest.check()
    check_unlocked(out)
    tasks, halves, runs = read_runs(args.dirs)
    evaluators = None
    if args.model is not None:
        evaluators = overlap_evaluators(args, runs, log)
    kinds = {s.get("family") for r in runs.values() for s in r.get("slices", [])} - {None}
    with manifest.own({"command": OVERLAP_NAME, **dataclasses.asdict(args)}):
        res = write_overlap_outputs(out, tasks, n=n, percent=pct, method=args.method, halves=halves or None,
                                    evaluators=evaluators, core_fraction=args.core_fraction,
                                    task_kind=kinds.pop() if len(kinds) == 1 else "any", n_random=args.random,
                                    seed=args.seed)
        report = json.loads((out / OVERLAP_MAIN).read_text())
        report["runs"] = {k: str(Path(d)) for k, d in zip(tasks, args.dirs)}
        report["models"] = {k: {"model": r.get("model_arg"), "model_fingerprint": r.get("model_fingerprint")}
                            for k, r in runs.items()}
        if evaluators is None:
            report["transfer_skipped"] = ("the transfer matrix and the core circuit's faithfulness need every "
                                          "task's exact patcher: rerun with --model")
        files = sorted(Path(p).name for p in res["paths"].values())
        write_json(out / OVERLAP_MAIN, manifest.stamp(report, files))
    log(f"wrote {', '.join(files)} to {out}")
    return report


def read_runs(dirs: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """Each ``gar circuit`` folder's scores, split-half scores and ``circuit.json``, keyed by a name
    per run; refuses (one line each) a folder given twice, a folder that is not a readable circuit
    output, and runs of two different models (each run records what its model is)."""
    from ..circuit.graph import EdgeScores

    tasks: dict[str, Any] = {}
    halves: dict[str, Any] = {}
    runs: dict[str, dict[str, Any]] = {}
    seen: dict[Path, str] = {}
    for d in map(Path, dirs):
        real = d.resolve()
        if real in seen:
            raise GARConfigError(f"{d} is given twice (as {seen[real]} and {d}): overlap needs different runs")
        seen[real] = str(d)
        name = real.name if real.name not in tasks else str(d)
        f = d / "scores.npz"
        if not f.is_file():
            raise GARConfigError(f"{d} holds no scores.npz: not a gar circuit output folder")
        try:
            tasks[name] = EdgeScores.load(f)
            if (d / "scores_half1.npz").is_file() and (d / "scores_half2.npz").is_file():
                halves[name] = (EdgeScores.load(d / "scores_half1.npz"), EdgeScores.load(d / "scores_half2.npz"))
            runs[name] = json.loads((d / MAIN).read_text()) if (d / MAIN).is_file() else {}
            if not isinstance(runs[name], dict):
                raise ValueError(f"{MAIN} is not a JSON object")
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as e:  # a damaged file
            raise GARConfigError(f"cannot read the gar circuit output {d} ({one_line(e)}): rerun gar circuit "
                                 "there, or leave it out") from None
    named = [(k, r.get("model_arg"), r.get("model_fingerprint")) for k, r in runs.items()]
    for k, model, fp in named[1:]:
        same_model(f"run {named[0][0]}", named[0][1], named[0][2], f"run {k}", model, fp,
                   "circuits of two different models do not overlap")
    shapes = {(s.resid.shape, s.attn.shape) for s in tasks.values()}
    if len(shapes) > 1:
        raise GARConfigError("the runs' graphs differ (other model or role schema): overlap needs one graph")
    return tasks, halves, runs


def overlap_evaluators(args: OverlapArgs, runs: dict[str, dict[str, Any]], log: Log) -> dict[str, Any]:
    """Each run's exact patcher (its records rebuilt from circuit.json) on the model given."""
    out: dict[str, Any] = {}
    loaded: dict[tuple[str, str], Any] = {}
    with options.torch_threads(args.threads):
        for name, info in runs.items():
            if not info.get("args") or not info.get("record_ids"):
                raise GARConfigError(f"run {name} has no circuit.json with its arguments: cannot rebuild its patcher")
            ca = CircuitArgs.from_json(info["args"], model=args.model, device=args.device, remote=False)
            if ca.remote:
                raise GARConfigError(f"run {name} ran remotely: transfer needs the model locally")
            same_model(f"run {name}", info.get("model_arg"), info.get("model_fingerprint"), "--model",
                       args.model, model_fingerprint(args.model), "transfer needs the model the runs used")
            key = (ca.model, ca.dtype)
            if key not in loaded:
                loaded[key] = load_model(ca.model, ca.dtype, ca.device)
                loaded[key].hf.requires_grad_(False)
            task = task_of(ca, loaded[key], select_slices(ca.tasks, ca.config), info["record_ids"])
            ev = Evaluator(task)
            log(f"{name}: exact patcher over {len(task.cf)} rows")
            out[name] = (ev, *ev.full_empty())
    return out


# ------------------------------------------------------------------------------------------
# the command line


def register(sub: Any) -> None:
    """Add ``gar circuit``."""
    from ..circuit.roles import builtin_schemas

    p = sub.add_parser(NAME, help="role-level circuit of GAR tasks: edge attribution, faithfulness, relational loop",
                       description="Edge attribution patching (EAP, nnsight) of every role-level edge (residual "
                                   "sender@role -> port@role, attention Src role -> Dst role inside each head) on "
                                   "GAR counterfactuals, the circuit of the top edges, its exact faithfulness "
                                   "against random circuits, the relational loop and exact single-edge spot "
                                   "checks; writes scores.npz, graph.json, circuit.dot, loop.json, "
                                   "faithfulness.json, spot.json, summary.md, circuit.png, loop.png, "
                                   "faithfulness.png and circuit.json to --out, checkpointing per batch "
                                   f"(rerun the same command to resume). Selectors: {options.SELECTORS}.")
    options.add_model_options(p, remote=True)
    options.add_selection(p, None, 24, "counterfactual items (rows)", "item choice and random circuits")
    options.add_run_options(p, 8, "rows")
    p.add_argument("--schema", default="default", metavar="SCHEMA",
                   help=f"role schema: {' | '.join(builtin_schemas())} | PATH.json (default default)")
    p.add_argument("--counterfactual", default="pair", choices=COUNTERFACTUALS,
                   help="pair: cls Yes/No twins, gen query swap; context: two context values swap places; "
                        "mean: role-mean ablation (default pair)")
    options.add_knob(p, "--ig-steps", "EAP-IG steps over the input embeddings (1: plain EAP)", default=1,
                     metavar="K")
    p.add_argument("--exact-softmax", action=argparse.BooleanOptionalAction, default=True,
                   help="q/k attention edges and residual edges into queries, keys and values exact through "
                        "the head (q and k through its softmax), logits edges exact through the final norm "
                        "(default; --no-exact-softmax: plain first-order EAP, cheaper)")
    p.add_argument("--method", default="topn", choices=METHODS, help="circuit extraction (default topn)")
    p.add_argument("--size", default="1%", metavar="N|P%", type=size_arg,
                   help=f"circuit size: edges ({options.KNOBS['size_edges'].range}), or a percentage of the "
                        "existing edges (default 1%%)")
    options.add_knob(p, "--curve", "faithfulness curve at these percentages of the edges (the flag alone: the "
                                   "MIB sizes 0.1 ... 100); without it only the circuit's own size is evaluated",
                     nargs="*", default=None, metavar="PCT")
    options.add_knob(p, "--random", "random circuits per size", default=5, metavar="N")
    options.add_knob(p, "--spot", "exact single-edge patching of the top K edges and K random ones (0: skip)",
                     default=10, metavar="K")
    p.add_argument("--truth", default=None, metavar="FILE",
                   help="a truth file of a compiled model (python -m interp.circuit.groundtruth --out DIR writes "
                        "one): report the true edges' ranks, precision/recall in the top k, AUROC and the true "
                        "circuit's exact faithfulness in circuit.json and summary.md")
    options.add_restart(p)
    options.add_out(p)
    p.set_defaults(func=main)


def register_overlap(sub: Any) -> None:
    """Add ``gar circuit-overlap``."""
    o = sub.add_parser(OVERLAP_NAME, help="overlap, core circuit and transfer across gar circuit runs",
                       description="Reads several gar circuit output folders (same model and schema) and writes "
                                   "overlap.json (Jaccard of edges, nodes, heads; split-half ceiling; random floor; "
                                   "core circuit and its loop), core_graph.json and overlap heatmaps. With --model, "
                                   "also the transfer matrix (each circuit evaluated on each task) and the core "
                                   "circuit against random circuits, by exact patching (transfer.png).")
    o.add_argument("dirs", nargs="+", metavar="DIR", help="gar circuit output folders")
    o.add_argument("--size", default="1%", metavar="N|P%", type=size_arg,
                   help=f"circuit size per task: edges ({options.KNOBS['size_edges'].range}) or a percentage "
                        "(default 1%%)")
    o.add_argument("--method", default="topn", choices=METHODS, help="circuit extraction (default topn)")
    options.add_knob(o, "--core-fraction", "core circuit: edges in at least this share of the tasks' circuits",
                     default=0.5, metavar="F")
    options.add_model(o, required=False)
    options.add_device(o)
    options.add_threads(o)
    options.add_knob(o, "--random", "random circuits", default=5, metavar="N")
    options.add_knob(o, "--seed", "random circuits' seed", default=0, metavar="S")
    options.add_quiet(o)
    options.add_out(o)
    o.set_defaults(func=main_overlap)


def main(args: argparse.Namespace) -> int:
    from ..circuit.summary import run_lines

    ca = CircuitArgs(model=args.model, tasks=args.tasks, out=args.out, config=args.config, n=args.n,
                     batch_size=args.batch_size, dtype=args.dtype, device=args.device, seed=args.seed,
                     remote=args.remote, restart=args.restart, threads=args.threads, schema=args.schema,
                     counterfactual=args.counterfactual, ig_steps=args.ig_steps, exact_softmax=args.exact_softmax,
                     method=args.method, size=args.size,
                     curve=None if args.curve is None else tuple(args.curve) or tuple(_mib()),
                     random=args.random, spot=args.spot, truth=args.truth)
    log = options.stderr_log(args)
    info = run_circuit(ca, progress=lambda stage, done, total: log(f"{stage}: batch {done}/{total}"), log=log)
    for line in run_lines(info):
        print(line)
    print(f"wrote {args.out}")
    return 0


def main_overlap(args: argparse.Namespace) -> int:
    oa = OverlapArgs(dirs=tuple(args.dirs), out=args.out, size=args.size, method=args.method,
                     core_fraction=args.core_fraction, model=args.model, device=args.device, threads=args.threads,
                     random=args.random, seed=args.seed)
    report = run_overlap(oa, log=options.stderr_log(args))
    print(f"{len(report['tasks'])} runs, core circuit {report['core']['n_edges']} edges, "
          f"loop share {report['loop_share']}")
    print(f"wrote {args.out}")
    return 0


def _mib() -> tuple[float, ...]:
    from ..circuit.faithfulness import MIB_PERCENTAGES

    return MIB_PERCENTAGES


__all__ = ["CircuitArgs", "OverlapArgs", "check_args", "main", "main_overlap", "parse_size", "register",
           "register_overlap", "run_circuit", "run_overlap", "task_of"]
