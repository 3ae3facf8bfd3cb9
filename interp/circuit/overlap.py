"""Overlap of circuits across tasks (``gar circuit-overlap``): Jaccard of edges / nodes / heads,
score-weighted Jaccard, the transfer matrix, split-half reliability (ceiling), random circuits
(floor) and the core circuit.

All circuits compared must live on the same graph (same model shape and role list).
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np

from .extract import extract
from .faithfulness import EvaluateFn, compare_to_random, faithfulness, random_circuit, spearman
from .graph import Circuit, EdgeScores

LEVELS = ("edges", "nodes", "heads")


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (1 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def weighted_jaccard(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> float:
    """sum min(|w_a|, |w_b|) / sum max(|w_a|, |w_b|) over the union (missing = 0)."""
    keys = set(a) | set(b)
    lo = sum(min(abs(a.get(k, 0.0)), abs(b.get(k, 0.0))) for k in keys)
    hi = sum(max(abs(a.get(k, 0.0)), abs(b.get(k, 0.0))) for k in keys)
    return lo / hi if hi > 0 else (1.0 if not keys else 0.0)


def circuit_items(circuit: Circuit, scores: EdgeScores) -> dict[str, dict[Hashable, float]]:
    """The circuit's edges (flat index), nodes (``L.H s->t``, ``L.MLP r``) and heads ((L, H)),
    each with a weight: |score| of the edge; the sum of |scores| of the node's in-circuit
    attention edges (head nodes) or of the edges into the MLP at r; the head's attention edges."""
    flat = np.abs(np.nan_to_num(scores.flat()))
    idx = circuit.edge_indices()
    edges = {int(i): float(flat[i]) for i in idx}
    roles = scores.roles
    a = np.abs(np.nan_to_num(scores.attn)) * circuit.attn_mask
    nodes: dict[Hashable, float] = {}
    for l, h, s, t in np.argwhere(circuit.attn_mask.any(-1)):
        nodes[f"{l}.{h} {roles[s]}->{roles[t]}"] = float(a[l, h, s, t].sum())
    shape = scores.shape
    rm = circuit.resid_mask
    res = np.abs(np.nan_to_num(scores.resid)) * rm
    for l in range(shape.n_layers):
        p, s_ = shape.port("mlp", l), shape.sender("mlp", l)
        for r in np.flatnonzero(rm[:, p, :].any(0) | rm[s_].any(0)):
            nodes[f"{l}.MLP {roles[r]}"] = float(res[:, p, r].sum())
    heads = {(int(l), int(h)): float(a[l, h].sum()) for l, h in np.argwhere(circuit.attn_mask.any((2, 3, 4)))}
    return {"edges": edges, "nodes": nodes, "heads": heads}


def _check_same_graph(shapes: Sequence[tuple]) -> None:
    if len(set(shapes)) > 1:
        raise ValueError(f"circuits live on different graphs (mask shapes {sorted(set(shapes))})")


def overlap_matrices(circuits: Mapping[str, tuple[Circuit, EdgeScores]]) -> dict:
    """Pairwise Jaccard and weighted Jaccard matrices per level (edges, nodes, heads)."""
    names = list(circuits)
    _check_same_graph([c.resid_mask.shape + c.attn_mask.shape for c, _ in circuits.values()])
    items = {n: circuit_items(c, s) for n, (c, s) in circuits.items()}
    out: dict = {"tasks": names}
    for level in LEVELS:
        plain = [[jaccard(set(items[a][level]), set(items[b][level])) for b in names] for a in names]
        weighted = [[weighted_jaccard(items[a][level], items[b][level]) for b in names] for a in names]
        out[level] = {"jaccard": plain, "weighted": weighted}
    return out


def transfer_matrix(circuits: Mapping[str, Circuit], evaluators: Mapping[str, EvaluateFn],
                    baselines: Mapping[str, tuple[float, float]]) -> dict:
    """f of task a's circuit evaluated on task b (rows a, columns b), with task b's
    ``(m_full, m_empty)``. The diagonal is each circuit's own faithfulness."""
    rows, cols = list(circuits), list(evaluators)
    mat = [[faithfulness(float(evaluators[b](*circuits[a].masks())), *baselines[b]) for b in cols] for a in rows]
    return {"circuits": rows, "tasks": cols, "f": mat}


def _pair_overlap(ca: Circuit, sa: EdgeScores, cb: Circuit, sb: EdgeScores) -> dict:
    ia, ib = circuit_items(ca, sa), circuit_items(cb, sb)
    return {level: {"jaccard": jaccard(set(ia[level]), set(ib[level])),
                    "weighted": weighted_jaccard(ia[level], ib[level])} for level in LEVELS}


def split_half(scores_a: EdgeScores, scores_b: EdgeScores, n: int, method: str = "topn",
               absolute: bool = True, prune: bool = True) -> dict:
    """Reliability of one task's circuit: circuits of ``n`` edges extracted from two halves of the
    run, their overlap per level, and the Spearman correlation of the two halves' scores over the
    edges both scored. The ceiling for cross-task overlap."""
    _check_same_graph([scores_a.resid.shape + scores_a.attn.shape, scores_b.resid.shape + scores_b.attn.shape])
    ca = extract(scores_a, n, method, absolute, prune)
    cb = extract(scores_b, n, method, absolute, prune)
    fa, fb = scores_a.flat(), scores_b.flat()
    ok = np.isfinite(fa) & np.isfinite(fb)
    return {"n": int(n), "n_edges": [ca.n_edges, cb.n_edges], **_pair_overlap(ca, scores_a, cb, scores_b),
            "spearman": spearman(fa[ok], fb[ok])}


def random_floor(scores: EdgeScores, n: int, n_random: int = 5, seed: int = 0, kind: str = "connected") -> dict:
    """Overlap of pairs of seeded random circuits of ``n`` edges (the floor): mean and std of
    Jaccard per level over ``n_random`` pairs (seeds seed+2i, seed+2i+1)."""
    vals: dict[str, list[float]] = {lv: [] for lv in LEVELS}
    for i in range(n_random):
        a = random_circuit(scores, n, np.random.default_rng(seed + 2 * i), kind)
        b = random_circuit(scores, n, np.random.default_rng(seed + 2 * i + 1), kind)
        ov = _pair_overlap(a, scores, b, scores)
        for lv in LEVELS:
            vals[lv].append(ov[lv]["jaccard"])
    return {lv: {"mean": float(np.mean(v)) if v else math.nan, "std": float(np.std(v)) if v else math.nan}
            for lv, v in vals.items()}


def core_circuit(circuits: Sequence[Circuit], min_fraction: float = 0.5) -> Circuit:
    """Edges present in at least ``min_fraction`` of the circuits (at least one circuit)."""
    if not circuits:
        raise ValueError("no circuits to intersect")
    _check_same_graph([c.resid_mask.shape + c.attn_mask.shape for c in circuits])
    need = max(1, math.ceil(min_fraction * len(circuits) - 1e-9))
    r = np.sum([c.resid_mask for c in circuits], axis=0) >= need
    a = np.sum([c.attn_mask for c in circuits], axis=0) >= need
    return Circuit(r, a)


def core_vs_random(core: Circuit, tasks: Mapping[str, tuple[EdgeScores, EvaluateFn, float, float]],
                   n_random: int = 5, seed: int = 0, kind: str = "connected") -> dict:
    """The core circuit evaluated on every task ``(scores, evaluate, m_full, m_empty)`` against
    seeded random circuits of its size on that task's graph."""
    return {name: compare_to_random(s, ev, core & s.exists(), mf, me, n_random=n_random, seed=seed, kind=kind)
            for name, (s, ev, mf, me) in tasks.items()}


__all__ = ["LEVELS", "circuit_items", "core_circuit", "core_vs_random", "jaccard", "overlap_matrices",
           "random_floor", "split_half", "transfer_matrix", "weighted_jaccard"]
