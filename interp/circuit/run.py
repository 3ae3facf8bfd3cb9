"""One circuit run's library side: its counterfactual items and batches (:class:`Task`), the EAP
scores summed batch by batch through a checkpoint (:func:`eap_scores`), the exact faithfulness
callable (:class:`Evaluator`) and the exact single-edge spot checks (:func:`spot_checks`).

``gar circuit`` (:mod:`interp.commands.circuit`) parses, composes these with the interp core
(model, records, checkpoint, manifest) and writes; ``gar circuit-overlap`` rebuilds a
:class:`Task` and its :class:`Evaluator` per run for the transfer matrix.

A checkpoint this run cannot resume from raises :class:`StaleCheckpoint` (a ``GARConfigError``):
the caller says how to discard the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from gar_tasks.errors import GARConfigError
from gar_tasks.records import GARRecord

from ..core.outputs import Checkpoint, atomic_write
from ..core.select import sample_indices

if TYPE_CHECKING:  # pragma: no cover
    from .roles import RoleSchema

# "mean": role-mean ablation, on the items of the pair kind (whose targets give the metric)
COUNTERFACTUALS = ("pair", "context", "mean")
# keep every batch's corrupted patcher state in memory up to this many bytes (else rebuild per evaluation)
PATCHER_CACHE_BYTES = 2 * 1024 ** 3
Progress = Callable[[str, int, int], Any]
Log = Callable[[str], Any]


class StaleCheckpoint(GARConfigError):
    """A checkpoint (or a run's recorded items) that this run cannot resume from."""


class Task:
    """One run's counterfactual items (``n`` sampled with ``seed``, or the ``record_ids`` of a
    resumed run, in their order), their batches and, for role-mean ablation, the task means."""

    def __init__(self, m: Any, records: Sequence[GARRecord], schema: "RoleSchema | str" = "default", counterfactual: str = "pair",
                 *, n: int = 24, seed: int = 0, batch_size: int = 8, record_ids: Sequence[str] | None = None):
        import numpy as np

        from .counterfactual import RoleMeans, make_counterfactuals
        from .roles import RoleSchema, load_schema

        if counterfactual not in COUNTERFACTUALS:
            raise GARConfigError(f"unknown counterfactual {counterfactual!r}; choose from {', '.join(COUNTERFACTUALS)}")
        self.m, self.counterfactual = m, counterfactual
        self.schema = schema if isinstance(schema, RoleSchema) else load_schema(schema)
        records = list(records)
        kind = "pair" if counterfactual == "mean" else counterfactual
        full = make_counterfactuals(records, m.tokenizer, self.schema, kind)
        self.counts, self.rejected = dict(full.counts), dict(full.rejected)
        if record_ids is not None:
            order = {rid: i for i, rid in enumerate(record_ids)}
            idx = sorted((i for i, it in enumerate(full.items) if it.record_id in order),
                         key=lambda i: order[full.items[i].record_id])
            if len(idx) != len(record_ids):
                raise StaleCheckpoint("the run's items are no longer all in the selection")
        else:
            idx = sorted(sample_indices(np.random.default_rng(seed), len(full), n))
        self.cf = dataclasses.replace(full, items=[full.items[i] for i in idx])
        self.record_ids = [it.record_id for it in self.cf.items]
        negated = {r.id: r.negate for r in records}
        flags = {negated[rid] for rid in self.record_ids}
        # the rows' polarity picks the reported loop template (None: mixed)
        self.polarity = None if len(flags) != 1 else "negated" if flags.pop() else "affirmative"
        self.batches = self.cf.batch_indices(batch_size)
        self.means = None
        if counterfactual == "mean":  # means over every item of the chosen rows' tasks (leave-one-out later)
            chosen_tasks = {it.task_id for it in self.cf.items}
            pool = dataclasses.replace(full, items=[it for it in full.items if it.task_id in chosen_tasks])
            self.means = RoleMeans.fit(m.hf, pool, batch_size)

    def batch(self, i: int) -> Any:
        """Batch ``i`` as a :class:`~interp.circuit.batch.CircuitBatch`."""
        if self.means is not None:
            return self.cf.batch(self.batches[i], means=self.means, model=self.m.hf)
        return self.cf.batch(self.batches[i])

    def reach(self) -> dict[str, Any]:
        """The scores.meta lines on what the corruption can show."""
        if self.counterfactual == "mean":
            return {"corruption": "role-mean ablation (leave-one-out means over the task's other records)"}
        r = self.cf.reachability()
        first = max(r["first_difference"].items(), key=lambda kv: kv[1])[0] if r["first_difference"] else None
        return {"first_differing_role": first, "first_differing_roles": dict(r["first_difference"]),
                "unreachable_roles": ", ".join(r["unreachable"]) or "none"}


def masks_key(resid_mask: Any, attn_mask: Any) -> str:
    """A circuit's key in the evaluation memo (a hash of both masks and their shapes)."""
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
                raise StaleCheckpoint(f"cannot read the checkpoint file {store} ({e})") from None
        self.loaded = len(self.cache)
        self.computed = 0
        self._patchers: dict[int, Any] = {}
        self._keep: bool | None = None
        self._shared: tuple[Any, Any] | None = None  # (UnrolledModel, Workspace) of every batch

    def _patcher(self, i: int) -> Any:
        from .patch import EdgePatcher, UnrolledModel, Workspace

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

    @property
    def shape(self) -> Any:
        """The patchers' :class:`~interp.circuit.ports.CircuitShape` (the masks' layout)."""
        return self._patcher(0).shape

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
        """m(full) and m(empty): every edge clean, every edge corrupted."""
        from .patch import empty_masks, full_masks

        R = len(self.task.cf.roles)
        return self(*full_masks(self.shape, R)), self(*empty_masks(self.shape, R))


def eap_scores(task: Task, ckpt: Checkpoint, *, ig_steps: int = 1, exact_softmax: bool = False, remote: bool = False,
               meta: dict[str, Any] | None = None, progress: Progress | None = None) -> tuple[Any, ...]:
    """EAP sums per batch through the checkpoint (files ``eap_<counterfactual>_<batch>.npz``);
    returns (scores, half1, half2) as EdgeScores (halves: even / odd batches, None with a single
    batch). ``meta``: run labels for the scores' meta, after the counterfactual."""
    import numpy as np

    from .eap import attribution_batch, role_presence, scores_from_sums
    from .graph import EdgeScores, ModelShape
    from .ports import circuit_shape

    m = task.m
    shape = circuit_shape(m.model)
    R = len(task.cf.roles)

    def compute(i: int) -> dict[str, Any]:
        batch = task.batch(i)
        r, a = attribution_batch(m.model, batch, ig_steps=ig_steps, exact_softmax=exact_softmax, remote=remote)
        present, pairs = role_presence(batch)
        return {"resid": r, "attn": a, "present": present, "pairs": pairs, "rows": np.array(batch.size)}

    parts = [{"resid": np.zeros((shape.n_senders, shape.n_ports, R)),
              "attn": np.zeros((shape.n_layers, shape.n_heads, R, R, 3)),
              "present": np.zeros(R, bool), "pairs": np.zeros((R, R), bool), "rows": 0} for _ in range(2)]
    for i, d in enumerate(ckpt.batches("eap", task.counterfactual, len(task.batches), compute, progress,
                                       f"edge attribution ({task.counterfactual})")):
        p = parts[i % 2]
        p["resid"] += d["resid"]
        p["attn"] += d["attn"]
        p["present"] |= d["present"].astype(bool)
        p["pairs"] |= d["pairs"].astype(bool)
        p["rows"] += int(d["rows"])
    mshape = shape.layout
    meta = {"counterfactual": task.counterfactual, **(meta or {}), "rows": sum(p["rows"] for p in parts),
            "ig_steps": ig_steps, "exact_softmax": exact_softmax, **task.reach()}

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

    from .faithfulness import spot_check_edges, spot_check_stats
    from .graph import Circuit, edge_type_arrays
    from .patch import full_masks

    idx = spot_check_edges(scores, k=k, n_random=k, seed=seed)
    full_r, full_a = full_masks(evaluate.shape, len(scores.roles))
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


__all__ = ["COUNTERFACTUALS", "Evaluator", "PATCHER_CACHE_BYTES", "StaleCheckpoint", "Task", "eap_scores",
           "masks_key", "spot_checks"]
