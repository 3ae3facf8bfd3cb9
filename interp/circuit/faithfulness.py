"""Faithfulness of circuits (MIB), random controls, and the EAP-vs-exact spot-check statistics.

``evaluate(resid_mask, attn_mask) -> float`` is any callable with the exact patcher's signature
(the contract): the mean metric with in-circuit edges clean and the rest ablated. With ``m_full``
= evaluate(all edges) and ``m_empty`` = evaluate(no edge), a circuit's faithfulness is
``f(C) = (m(C) - m(empty)) / (m(full) - m(empty))``.

CPR and CMD follow MIB's circuit track (Mueller et al. 2025), ``evaluate_area_under_curve`` in
``MIB_circuit_track/evaluation.py`` of hannamw/MIB-circuit-track (read through its fork
aryamanarora/MIB-circuit-track, the stored upstream snapshot lacks the file): circuit sizes are
fractions of the edge count (n = int(pct * N)); CPR is the trapezoidal area under f over x = the
*fraction* of edges (linear x by default, ``log_scale`` integrates over ln x as MIB's option
does), CMD the same area of |1 - f|. With MIB's sizes 0.1 %..100 % the x range is [0.001, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from .extract import greedy, n_for_percent, topn
from .graph import Circuit, EdgeScores

EvaluateFn = Callable[[np.ndarray, np.ndarray], float]
MIB_PERCENTAGES: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    """(m(C) - m(empty)) / (m(full) - m(empty)); NaN when full and empty agree."""
    den = m_full - m_empty
    return float((m_circuit - m_empty) / den) if den != 0 else float("nan")


def area_under_curve(percentages: Sequence[float], f: Sequence[float],
                     log_scale: bool = False) -> tuple[float, float]:
    """``(CPR, CMD)``: trapezoidal areas under f and under |1 - f| over x = percentages / 100."""
    x = [p / 100.0 for p in percentages]
    if log_scale:
        x = [math.log(v) for v in x]
    cpr = cmd = 0.0
    for i in range(len(x) - 1):
        dx = x[i + 1] - x[i]
        cpr += dx * (f[i] + f[i + 1]) / 2
        cmd += dx * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2
    return float(cpr), float(cmd)


def random_circuit(scores: EdgeScores, n: int, rng: np.random.Generator, kind: str = "connected",
                   pool: Circuit | None = None) -> Circuit:
    """A random circuit of ``n`` edges. ``uniform``: n edges drawn uniformly from the existing
    edges (or from ``pool``); ``connected``: greedy extraction under random scores, so every edge
    reaches the logits, like a real circuit of that size (``pool`` restricts the draw)."""
    exists = scores.exists() if pool is None else (pool & scores.exists())
    avail = exists.edge_indices()
    n = min(int(n), avail.size)
    if kind == "uniform":
        mask = np.zeros(exists.flat().size, bool)
        mask[rng.choice(avail, size=n, replace=False)] = True
        return Circuit.from_flat(mask, scores)
    if kind == "connected":
        values = np.full(exists.flat().size, np.nan)
        values[avail] = rng.random(avail.size)
        return greedy(scores, n, absolute=False, prune=False, values=values)
    raise ValueError(f"unknown random circuit kind {kind!r} (uniform, connected)")


@dataclass
class FaithfulnessCurve:
    """f at each circuit size, CPR/CMD, and the same for seeded random circuits of equal size."""

    percentages: list[float]
    n_requested: list[int]
    n_edges: list[int]
    m: list[float]
    f: list[float]
    cpr: float
    cmd: float
    m_full: float
    m_empty: float
    method: str
    random_kind: str
    random_f: list[list[float]] = field(default_factory=list)  # [size][seed]
    random_mean: list[float] = field(default_factory=list)
    random_std: list[float] = field(default_factory=list)
    random_cpr: list[float] = field(default_factory=list)  # per seed
    random_cmd: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return _json_safe(asdict(self))

    @classmethod
    def from_json(cls, data: dict) -> "FaithfulnessCurve":
        """Back from ``to_json`` (JSON null -> NaN), e.g. to redraw a saved ``faithfulness.json``."""
        def num(x):
            if isinstance(x, list):
                return [num(v) for v in x]
            return float("nan") if x is None else x
        return cls(**{k: (num(v) if k not in ("method", "random_kind") else v) for k, v in data.items()})


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def faithfulness_curve(scores: EdgeScores, evaluate: EvaluateFn, m_full: float, m_empty: float,
                       percentages: Iterable[float] = MIB_PERCENTAGES, method: str = "topn",
                       absolute: bool = True, prune: bool = True, n_random: int = 5, seed: int = 0,
                       random_kind: str = "connected", log_scale: bool = False,
                       progress: Callable[[str], None] | None = None) -> FaithfulnessCurve:
    """Extract a circuit at every size (``topn`` or ``greedy``; n = int(pct/100 * edges)), evaluate
    it, and evaluate ``n_random`` seeded random circuits with the same number of edges as the
    (pruned) circuit. Random seeds are ``seed + i`` for control i, the same at every size."""
    pcts = [float(p) for p in percentages]
    total = scores.n_edges()
    extractor = {"topn": topn, "greedy": greedy}.get(method)
    if extractor is None:
        raise ValueError(f"unknown extraction method {method!r} (topn, greedy)")
    n_req, n_got, ms, fs, rand = [], [], [], [], []
    for pct in pcts:
        n = n_for_percent(pct, total)
        c = extractor(scores, n, absolute=absolute, prune=prune)
        m = float(evaluate(*c.masks()))
        n_req.append(n), n_got.append(c.n_edges), ms.append(m), fs.append(faithfulness(m, m_full, m_empty))
        row = []
        for i in range(n_random):
            rc = random_circuit(scores, c.n_edges, np.random.default_rng(seed + i), random_kind)
            row.append(faithfulness(float(evaluate(*rc.masks())), m_full, m_empty))
        rand.append(row)
        if progress is not None:
            progress(f"{pct:g}% ({c.n_edges} edges): f={fs[-1]:.3f}")
    cpr, cmd = area_under_curve(pcts, fs, log_scale)
    r_arr = np.array(rand, dtype=float).reshape(len(pcts), n_random)
    per_seed = [area_under_curve(pcts, list(r_arr[:, i]), log_scale) for i in range(n_random)]
    return FaithfulnessCurve(
        percentages=pcts, n_requested=n_req, n_edges=n_got, m=ms, f=fs, cpr=cpr, cmd=cmd,
        m_full=float(m_full), m_empty=float(m_empty), method=method, random_kind=random_kind,
        random_f=r_arr.tolist(), random_mean=(r_arr.mean(1) if n_random else np.full(len(pcts), np.nan)).tolist(),
        random_std=(r_arr.std(1) if n_random else np.full(len(pcts), np.nan)).tolist(),
        random_cpr=[a for a, _ in per_seed], random_cmd=[b for _, b in per_seed])


def compare_to_random(scores: EdgeScores, evaluate: EvaluateFn, circuit: Circuit, m_full: float,
                      m_empty: float, pool: Circuit | None = None, n_random: int = 5, seed: int = 0,
                      kind: str = "uniform") -> dict:
    """f of ``circuit`` against ``n_random`` seeded random circuits of its size drawn from
    ``pool`` (e.g. a loop sub-circuit against random sub-circuits of the full circuit, or the
    core circuit against random circuits of the whole graph). ``z`` = (f - mean) / std."""
    f = faithfulness(float(evaluate(*circuit.masks())), m_full, m_empty)
    rf = [faithfulness(float(evaluate(*random_circuit(scores, circuit.n_edges, np.random.default_rng(seed + i),
                                                      kind, pool).masks())), m_full, m_empty)
          for i in range(n_random)]
    mean = float(np.mean(rf)) if rf else float("nan")
    std = float(np.std(rf)) if rf else float("nan")
    z = (f - mean) / std if rf and std > 0 else float("nan")
    return _json_safe({"n_edges": circuit.n_edges, "f": f, "random_f": rf, "random_mean": mean,
                       "random_std": std, "z": z, "beats_all_random": bool(rf) and f > max(rf)})


# --- spot checks: EAP vs exact single-edge patching -------------------------------------------
def spot_check_edges(scores: EdgeScores, k: int = 20, n_random: int = 20, seed: int = 0) -> np.ndarray:
    """Flat indices of the top-``k`` |score| edges plus ``n_random`` other existing edges drawn
    with a seeded generator: the edges to patch exactly one at a time."""
    flat = scores.flat()
    key = np.where(np.isnan(flat), -np.inf, np.abs(flat))
    top = np.argsort(-key, kind="stable")[:k]
    top = top[np.isfinite(key[top])]
    rest = np.setdiff1d(np.flatnonzero(np.isfinite(key)), top)
    rnd = np.random.default_rng(seed).choice(rest, size=min(n_random, rest.size), replace=False)
    return np.concatenate([top, np.sort(rnd)]).astype(np.int64)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, float)
    ranks[order] = np.arange(x.size, dtype=float)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(_ranks(np.asarray(a, float)), _ranks(np.asarray(b, float)))


def _stats(eap: np.ndarray, exact: np.ndarray, k: int) -> dict:
    n = eap.size
    kk = min(k, n)
    top_e = set(np.argsort(-np.abs(eap), kind="stable")[:kk].tolist())
    top_x = set(np.argsort(-np.abs(exact), kind="stable")[:kk].tolist())
    return {"n": int(n), "pearson": pearson(eap, exact), "spearman": spearman(eap, exact),
            "sign_agreement": float(np.mean(np.sign(eap) == np.sign(exact))) if n else float("nan"),
            "topk": kk, "topk_overlap": len(top_e & top_x) / kk if kk else float("nan")}


def spot_check_stats(eap: Sequence[float], exact: Sequence[float], types: Sequence[str] | None = None,
                     k: int = 20) -> dict:
    """Agreement of EAP scores with exact single-edge patch effects on the same edges: Pearson,
    Spearman, sign agreement, top-k overlap (|top-k by |EAP| & top-k by |exact|| / k), overall
    and per edge type (q/k/v/mlp/logits; ``graph.edge_type_arrays()[indices]``)."""
    e, x = np.asarray(eap, float), np.asarray(exact, float)
    if e.shape != x.shape:
        raise ValueError(f"EAP and exact arrays differ in shape: {e.shape} vs {x.shape}")
    ok = np.isfinite(e) & np.isfinite(x)
    out = {"all": _stats(e[ok], x[ok], k)}
    if types is not None:
        t = np.asarray(types)[ok]
        out["by_type"] = {str(tp): _stats(e[ok][t == tp], x[ok][t == tp], k) for tp in sorted(set(t.tolist()))}
    return _json_safe(out)


__all__ = ["EvaluateFn", "FaithfulnessCurve", "MIB_PERCENTAGES", "area_under_curve", "compare_to_random",
           "faithfulness", "faithfulness_curve", "pearson", "random_circuit", "spearman",
           "spot_check_edges", "spot_check_stats"]
