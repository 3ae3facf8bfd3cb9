"""``gar circuit`` and ``gar circuit-overlap``: role-level circuits of GAR tasks.

``gar circuit`` composes the interp core (model loading, record selection, checkpoint, manifest,
lock) with the circuit library (:mod:`interp.circuit`): counterfactual items -> batches -> EAP sums
per batch (checkpointed) -> :class:`~interp.circuit.graph.EdgeScores` -> exact edge patching batch
by batch as the faithfulness callable -> :func:`~interp.circuit.outputs.write_circuit_outputs`
(+ exact single-edge spot checks in ``spot.json``) -> ``circuit.json``.

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
import hashlib
import json
import sys
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from gar_tasks.errors import GARConfigError

from ..core.loader import check_device, check_dtype, check_model_args, load_config, load_model, model_fingerprint
from ..core.outputs import (Checkpoint, Manifest, Timings, atomic_write, check_out_dir, check_unlocked, versions,
                            write_json)
from ..core.identity import same_model
from ..core.remote import one_line, server_errors
from ..core.select import Slice, filter_records, load_records, sample_indices, select_slices
from . import options

NAME = "circuit"
OVERLAP_NAME = "circuit-overlap"
CHECKPOINT_VERSION = 1
MAIN = "circuit.json"
OUTPUTS = ("scores.npz", "graph.json", "circuit.dot", "loop.json", "summary.md", "circuit.png", "loop.png",
           "faithfulness.json", "faithfulness.png", "spot.json", "scores_half1.npz", "scores_half2.npz")
# the checkpoint's files (a user's file of such a name is refused before any work, never replaced)
CHECKPOINT_FILES = ("checkpoint/args.json", "checkpoint/items.json", "checkpoint/evals.json",
                    "checkpoint/eap_*_[0-9][0-9][0-9][0-9][0-9].npz")
OVERLAP_MAIN = "overlap.json"
OVERLAP_OUTPUTS = ("core_graph.json", "overlap_edges.png", "overlap_nodes.png", "overlap_heads.png", "transfer.png")
COUNTERFACTUALS = ("pair", "context", "mean")
METHODS = ("topn", "greedy")
# keep every batch's corrupted patcher state in memory up to this many bytes (else rebuild per evaluation)
PATCHER_CACHE_BYTES = 2 * 1024 ** 3
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
    exact_softmax: bool = False
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
        truth_edges(args)
    check_out_dir(args.out)
    return slices


def truth_edges(args: CircuitArgs) -> dict[str, Any]:
    """The truth file's entry for the run's counterfactual (``edges``, ``constant``), checked."""
    from ..circuit.groundtruth import load_truth

    try:
        data = load_truth(args.truth)
    except ValueError as e:
        raise GARConfigError(str(e)) from None
    entry = data["counterfactuals"].get(args.counterfactual)
    if entry is None:
        raise GARConfigError(f"the truth file {args.truth} has no edges for the {args.counterfactual} counterfactual "
                             f"(it has {', '.join(sorted(data['counterfactuals'])) or 'none'})")
    return entry


def truth_scores(args: CircuitArgs, scores: Any, evaluate: Any, m_full: Any, m_empty: Any) -> dict[str, Any]:
    """The run's scores against the truth file (and the true circuit's exact faithfulness)."""
    from ..circuit.groundtruth import score_against_truth

    entry = truth_edges(args)
    try:
        res = score_against_truth(scores, entry["edges"], entry.get("constant", []), evaluate, m_full, m_empty)
    except ValueError as e:
        raise GARConfigError(f"the truth file {args.truth} does not fit this model's graph: {e}") from None
    return {"file": str(args.truth), "counterfactual": args.counterfactual, **res}


def truth_summary(t: dict[str, Any]) -> str:
    """summary.md's section on the truth scores."""
    n = t["n_true"]
    lines = ["", "## Against the known circuit", "",
             f"{n} true edges ({t['n_constant']} more invisible to this counterfactual); AUROC {_fmt(t['auroc'])}; "
             f"precision/recall at {n}: {_fmt(t['precision'][str(n)])}/{_fmt(t['recall'][str(n)])}, at {2 * n}: "
             f"{_fmt(t['precision'][str(2 * n)])}/{_fmt(t['recall'][str(2 * n)])}"]
    if "f_truth" in t:
        lines.append(f"exact faithfulness: true circuit {_fmt(t['f_truth'])}, top {n} {_fmt(t['f_top'][str(n)])}, "
                     f"top {2 * n} {_fmt(t['f_top'][str(2 * n)])}")
    lines += ["", "| true edge | rank | score |", "|---|---|---|"]
    lines += [f"| `{e}` | {r['rank']} | {_fmt(r['score'], '.3g')} |" for e, r in t["ranks"].items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# items, batches, evaluation


class Task:
    """One run's counterfactual items, their batches and (role-mean ablation) means."""

    def __init__(self, args: CircuitArgs, m: Any, slices: list[Slice], record_ids: Sequence[str] | None = None):
        import numpy as np

        from ..circuit.counterfactual import RoleMeans, make_counterfactuals
        from ..circuit.roles import load_schema

        self.args, self.m = args, m
        self.schema = load_schema(args.schema)
        records = filter_records(load_records(args.config), slices)
        kind = "pair" if args.counterfactual == "mean" else args.counterfactual
        full = make_counterfactuals(records, m.tokenizer, self.schema, kind)
        self.counts, self.rejected = dict(full.counts), dict(full.rejected)
        if record_ids is not None:
            order = {rid: i for i, rid in enumerate(record_ids)}
            idx = sorted((i for i, it in enumerate(full.items) if it.record_id in order),
                         key=lambda i: order[full.items[i].record_id])
            if len(idx) != len(record_ids):
                raise GARConfigError("the checkpoint's items are no longer in the selection; pass --restart")
        else:
            idx = sorted(sample_indices(np.random.default_rng(args.seed), len(full), args.n))
        self.cf = dataclasses.replace(full, items=[full.items[i] for i in idx])
        self.record_ids = [it.record_id for it in self.cf.items]
        negated = {r.id: r.negate for r in records}
        flags = {negated[rid] for rid in self.record_ids}
        # the rows' polarity picks the reported loop template (None: mixed)
        self.polarity = None if len(flags) != 1 else "negated" if flags.pop() else "affirmative"
        self.batches = self.cf.batch_indices(args.batch_size)
        self.means = None
        if args.counterfactual == "mean":  # means over every item of the chosen rows' tasks (leave-one-out later)
            chosen_tasks = {it.task_id for it in self.cf.items}
            pool = dataclasses.replace(full, items=[it for it in full.items if it.task_id in chosen_tasks])
            self.means = RoleMeans.fit(m.hf, pool, args.batch_size)

    def batch(self, i: int) -> Any:
        if self.means is not None:
            return self.cf.batch(self.batches[i], means=self.means, model=self.m.hf)
        return self.cf.batch(self.batches[i])

    def reach(self) -> dict[str, Any]:
        """The scores.meta lines on what the corruption can show."""
        if self.args.counterfactual == "mean":
            return {"corruption": "role-mean ablation (leave-one-out means over the task's other records)"}
        r = self.cf.reachability()
        first = max(r["first_difference"].items(), key=lambda kv: kv[1])[0] if r["first_difference"] else None
        return {"first_differing_role": first, "first_differing_roles": dict(r["first_difference"]),
                "unreachable_roles": ", ".join(r["unreachable"]) or "none"}


def masks_key(resid_mask: Any, attn_mask: Any) -> str:
    import numpy as np

    h = hashlib.sha1()
    for a in (resid_mask, attn_mask):
        h.update(str(a.shape).encode())
        h.update(np.packbits(np.asarray(a, bool)).tobytes())
    return h.hexdigest()


class Evaluator:
    """The faithfulness callable: exact edge patching batch by batch, mean metric over every row.

    Each batch's :class:`~interp.circuit.patch.EdgePatcher` is kept while their corrupted states
    (``nbytes``) fit :data:`PATCHER_CACHE_BYTES`, else rebuilt per call; the patchers share one
    unrolled model (its per-head weights) and one evaluation workspace. Results are memoised (and, with ``store``,
    written to the checkpoint after each new one, so an interrupted run does not redo them).
    """

    def __init__(self, task: Task, store: Path | None = None, progress: Log | None = None):
        self.task, self.store, self.progress = task, store, progress
        self.cache: dict[str, float] = {}
        if store is not None and store.exists():
            try:
                self.cache = {k: float(v) for k, v in json.loads(store.read_text()).items()}
            except (OSError, ValueError, AttributeError) as e:
                raise GARConfigError(f"cannot read the checkpoint file {store} ({e}); pass --restart") from None
        self.loaded = len(self.cache)
        self.computed = 0
        self._patchers: dict[int, Any] = {}
        self._keep: bool | None = None
        self._shared: tuple[Any, Any] | None = None  # (UnrolledModel, Workspace) of every batch

    def _patcher(self, i: int) -> Any:
        from ..circuit.patch import EdgePatcher, UnrolledModel, Workspace

        if i in self._patchers:
            return self._patchers[i]
        if self._shared is None:
            self._shared = (UnrolledModel(self.task.m.hf), Workspace())
        batch = self.task.batch(i)
        p = EdgePatcher(self._shared[0], batch, self._shared[1])
        if self._keep is None:
            self._keep = p.nbytes * len(self.task.batches) <= PATCHER_CACHE_BYTES
        if self._keep:
            self._patchers[i] = p
        return p

    def metric_sum(self, resid_mask: Any, attn_mask: Any) -> float:
        return float(sum(self._patcher(i).metrics(resid_mask, attn_mask).sum() for i in range(len(self.task.batches))))

    def __call__(self, resid_mask: Any, attn_mask: Any) -> float:
        key = masks_key(resid_mask, attn_mask)
        if key not in self.cache:
            self.cache[key] = self.metric_sum(resid_mask, attn_mask) / len(self.task.cf)
            self.computed += 1
            if self.store is not None:
                atomic_write(self.store, json.dumps(self.cache))
            if self.progress is not None and self.computed % 5 == 0:
                self.progress(f"exact evaluations: {self.computed} computed, {self.loaded} loaded")
        return self.cache[key]

    def full_empty(self) -> tuple[float, float]:
        from ..circuit.patch import empty_masks, full_masks

        shape = self._patcher(0).shape
        R = len(self.task.cf.roles)
        return self(*full_masks(shape, R)), self(*empty_masks(shape, R))


def eap_scores(args: CircuitArgs, task: Task, ckpt: Checkpoint, progress: Progress | None) -> tuple[Any, ...]:
    """EAP sums per batch through the checkpoint; returns (scores, half1, half2) as EdgeScores
    (halves: even / odd batches, None with a single batch)."""
    import numpy as np

    from ..circuit.eap import attribution_batch, role_presence, scores_from_sums
    from ..circuit.graph import EdgeScores, ModelShape
    from ..circuit.ports import circuit_shape

    m = task.m
    shape = circuit_shape(m.model)
    R = len(task.cf.roles)

    def compute(i: int) -> dict[str, Any]:
        batch = task.batch(i)
        r, a = attribution_batch(m.model, batch, ig_steps=args.ig_steps, exact_softmax=args.exact_softmax,
                                 remote=args.remote)
        present, pairs = role_presence(batch)
        return {"resid": r, "attn": a, "present": present, "pairs": pairs, "rows": np.array(batch.size)}

    parts = [{"resid": np.zeros((shape.n_senders, shape.n_ports, R)),
              "attn": np.zeros((shape.n_layers, shape.n_heads, R, R, 3)),
              "present": np.zeros(R, bool), "pairs": np.zeros((R, R), bool), "rows": 0} for _ in range(2)]
    for i, d in enumerate(ckpt.batches("eap", args.counterfactual, len(task.batches), compute, progress,
                                       f"edge attribution ({args.counterfactual})")):
        p = parts[i % 2]
        p["resid"] += d["resid"]
        p["attn"] += d["attn"]
        p["present"] |= d["present"].astype(bool)
        p["pairs"] |= d["pairs"].astype(bool)
        p["rows"] += int(d["rows"])
    mshape = ModelShape(shape.n_layers, shape.n_heads, shape.n_kv)
    meta = {"counterfactual": args.counterfactual, "schema": args.schema, "tasks": args.tasks,
            "rows": sum(p["rows"] for p in parts), "ig_steps": args.ig_steps, "exact_softmax": args.exact_softmax,
            **task.reach()}

    def scores(ps: list[dict[str, Any]], extra: dict[str, Any]) -> Any:
        res = scores_from_sums(shape, list(task.cf.roles), sum(p["resid"] for p in ps), sum(p["attn"] for p in ps),
                               sum(p["rows"] for p in ps), np.logical_or.reduce([p["present"] for p in ps]),
                               np.logical_or.reduce([p["pairs"] for p in ps]), task.cf.end_role)
        return EdgeScores(res.resid, res.attn, res.roles, mshape, {**meta, **extra})

    whole = scores(parts, {})
    if parts[1]["rows"] == 0:
        return whole, None, None
    return whole, scores([parts[0]], {"half": "even batches"}), scores([parts[1]], {"half": "odd batches"})


def spot_checks(scores: Any, evaluate: Evaluator, m_full: float, k: int, seed: int) -> dict[str, Any]:
    """Exact single-edge patching (all edges clean but one) of the top-k and k random edges vs EAP."""
    import numpy as np

    from ..circuit.faithfulness import spot_check_edges, spot_check_stats
    from ..circuit.graph import Circuit, edge_type_arrays
    from ..circuit.patch import full_masks

    idx = spot_check_edges(scores, k=k, n_random=k, seed=seed)
    full_r, full_a = full_masks(evaluate._patcher(0).shape, len(scores.roles))
    flat_full = np.concatenate([full_r.ravel(), full_a.ravel()])
    exact = []
    for i in idx:
        mask = flat_full.copy()
        mask[i] = False
        exact.append(evaluate(*Circuit.from_flat(mask, scores).masks()) - m_full)
    eap = scores.flat()[idx]
    types = edge_type_arrays(scores)[idx]
    return {"k": k, "seed": seed, "edges": [scores.edge_name(int(i)) for i in idx], "types": [str(t) for t in types],
            "eap": [float(x) for x in eap], "exact": [float(x) for x in exact],
            "stats": spot_check_stats(eap, exact, types, k=k)}


def run_circuit(args: CircuitArgs, progress: Progress | None = None, log: Log | None = None) -> dict[str, Any]:
    """Run ``gar circuit``; returns the ``circuit.json`` dict. Raises ``GARConfigError`` before writing
    anything when the arguments cannot work."""
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
        with timings("items"):
            task = Task(args, m, slices, resumed_ids)  # a counterfactual leaving no pair fails here: nothing written
        with manifest.own({"command": NAME, **args.to_json()}):
            resumed = ckpt.open(restart=args.restart)
            ckpt.value("items.json", lambda: task.record_ids)
            with timings("eap"), server_errors(args.remote):
                scores, half1, half2 = eap_scores(args, task, ckpt, progress)
            n, pct = parse_size(args.size)
            title = f"{Path(args.model).name} on {args.tasks} ({args.counterfactual}, {len(task.cf)} rows)"
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
                truth = truth_scores(args, scores, evaluate, extra.get("m_full"), extra.get("m_empty"))
                summary = out / "summary.md"
                atomic_write(summary, (summary.read_text() if summary.exists() else "") + truth_summary(truth))
            files = sorted({Path(p).name for p in res["paths"].values()} | ({"spot.json"} if spot else set())
                           | ({"scores_half1.npz", "scores_half2.npz"} if half1 is not None else set()))
            info = {"model": m.desc, "model_arg": args.model, "model_fingerprint": fingerprint, "server": m.server,
                    "args": args.to_json(), "slices": [asdict(s) for s in slices], "rows": len(task.cf),
                    "counts": task.counts, "rejected": task.rejected, "record_ids": task.record_ids,
                    "meta": scores.meta, "n_edges_graph": scores.n_edges(), "circuit": {k: v for k, v in res.items()
                                                                                      if k != "paths"},
                    "m_full": extra.get("m_full"), "m_empty": extra.get("m_empty"),
                    "faithfulness": _curve(out) if evaluate is not None else None,
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
            task = Task(ca, loaded[key], select_slices(ca.tasks, ca.config), info["record_ids"])
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
    p.add_argument("--exact-softmax", action="store_true", help="q/k attention edges exact through the softmax")
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
    ca = CircuitArgs(model=args.model, tasks=args.tasks, out=args.out, config=args.config, n=args.n,
                     batch_size=args.batch_size, dtype=args.dtype, device=args.device, seed=args.seed,
                     remote=args.remote, restart=args.restart, threads=args.threads, schema=args.schema,
                     counterfactual=args.counterfactual, ig_steps=args.ig_steps, exact_softmax=args.exact_softmax,
                     method=args.method, size=args.size,
                     curve=None if args.curve is None else tuple(args.curve) or tuple(_mib()),
                     random=args.random, spot=args.spot, truth=args.truth)
    log = options.stderr_log(args)
    info = run_circuit(ca, progress=lambda stage, done, total: log(f"{stage}: batch {done}/{total}"), log=log)
    c = info["circuit"]
    fc = info.get("faithfulness") or {}
    curve = ", ".join(f"{p:g}%: f {_fmt(f)} (random {_fmt(r)})" for p, f, r in
                      zip(fc.get("percentages", []), fc.get("f", []), fc.get("random_mean", [])))
    print(f"{info['rows']} rows, circuit of {c['n_edges']} edges (of {info['n_edges_graph']}); {curve or 'no curve'}"
          + (f"; CPR {_fmt(c.get('cpr'))}, CMD {_fmt(c.get('cmd'))}" if len(fc.get("f", [])) > 1 else "")
          + f"; loop {'found' if c['loop_found'] else 'not found'}"
          + (f", spot Spearman {_fmt(info['spot']['all']['spearman'])}" if info.get("spot") else ""))
    t = info.get("truth")
    if t:
        n = t["n_true"]
        print(f"truth: recall at {n} {_fmt(t['recall'][str(n)])}, at {2 * n} {_fmt(t['recall'][str(2 * n)])}, "
              f"AUROC {_fmt(t['auroc'])}" + (f", f true circuit {_fmt(t['f_truth'])} vs top {n} "
                                            f"{_fmt(t['f_top'][str(n)])}" if "f_truth" in t else ""))
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


def _curve(out: Path) -> dict[str, Any] | None:
    """The headline of faithfulness.json (sizes, f, random mean/std), None when not computed."""
    f = out / "faithfulness.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    return {k: d.get(k) for k in ("percentages", "n_edges", "f", "random_mean", "random_std", "cpr", "cmd")}


def _mib() -> tuple[float, ...]:
    from ..circuit.faithfulness import MIB_PERCENTAGES

    return MIB_PERCENTAGES


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


__all__ = ["CircuitArgs", "Evaluator", "OverlapArgs", "Task", "check_args", "main", "main_overlap", "parse_size",
           "register", "register_overlap", "run_circuit", "run_overlap"]
