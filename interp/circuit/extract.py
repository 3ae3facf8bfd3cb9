"""Circuits from edge scores: top-n and greedy extraction, pruning of dangling edges, edge counts.

The role-level edge graph is a DAG over *nodes at a role*: sender nodes ``(sender, r)`` and port
nodes ``(port, r)``.

* a residual edge ``sender@r -> port@r`` links sender node ``(sender, r)`` to port node ``(port, r)``;
* an attention edge ``(l, h, s, t, c)`` links the port node it reads -- ``(q (l,h), t)`` for c=q,
  ``(k (l,g), s)`` / ``(v (l,g), s)`` for c=k / v, g the head's KV group -- to the head's sender
  node ``(head (l,h), t)``;
* an MLP links its input port node ``(mlp_in l, r)`` to its sender node ``(mlp l, r)`` (always, no
  edge of its own);
* sources: the embedding's sender nodes ``(emb, r)``; sink: the logits port node (at END).

**Pruning rule** (the EAP-IG rule, stated on edges): an in-circuit edge is kept iff it lies on an
in-circuit path from a source to the sink, i.e. its tail node is reachable from the embedding
through in-circuit edges *and* the logits are reachable from its head node through in-circuit
edges. So a head node ``L.H s->t`` stays only if some of its inputs are fed from the embedding and
its output at t reaches the logits; an edge into a port whose node has no in-circuit output path
(e.g. a k port feeding no in-circuit attention edge) goes, and so does an attention edge whose port
has no in-circuit input (its input would be ablated anyway). One forward and one backward sweep,
layer by layer, vectorised: no per-edge Python loop.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from .graph import COMPONENTS, Circuit, EdgeScores, ModelShape


def n_for_percent(percent: float, n_total: int) -> int:
    """Edges in a circuit of ``percent`` % of ``n_total`` edges (MIB: ``int(pct * n)``)."""
    return int(math.floor(percent / 100.0 * n_total + 1e-9))


def _key(values: np.ndarray, absolute: bool) -> np.ndarray:
    key = np.abs(values) if absolute else values.astype(np.float64, copy=True)
    return np.where(np.isnan(key), -np.inf, key)


def topn(scores: EdgeScores, n: int, absolute: bool = True, prune: bool = False) -> Circuit:
    """The ``n`` existing edges with the highest |score| (signed score if not ``absolute``), over
    residual and attention edges together; ties in flat edge order. Optionally pruned (then the
    circuit may have fewer than ``n`` edges)."""
    flat = scores.flat()
    n = max(0, min(int(n), int(np.count_nonzero(~np.isnan(flat)))))
    order = np.argsort(-_key(flat, absolute), kind="stable")[:n]
    mask = np.zeros(flat.size, bool)
    mask[order] = True
    circuit = Circuit.from_flat(mask, scores)
    return prune_dangling(circuit, scores.shape) if prune else circuit


def topn_percent(scores: EdgeScores, percent: float, absolute: bool = True, prune: bool = False) -> Circuit:
    """``topn`` with n given as a percentage of the existing edges."""
    return topn(scores, n_for_percent(percent, scores.n_edges()), absolute, prune)


# --- reachability ----------------------------------------------------------------------------
@dataclass
class _Idx:
    """Index vectors of one layer's senders and ports."""

    heads: np.ndarray
    mlp: int
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mlp_in: int


def _layer_index(shape: ModelShape, l: int) -> _Idx:
    H, G = shape.n_heads, shape.n_groups
    return _Idx(heads=np.array([shape.sender("head", l, h) for h in range(H)]), mlp=shape.sender("mlp", l),
                q=np.array([shape.port("q", l, h) for h in range(H)]),
                k=np.array([shape.port("k", l, g) for g in range(G)]),
                v=np.array([shape.port("v", l, g) for g in range(G)]), mlp_in=shape.port("mlp", l))


def _head_groups(shape: ModelShape) -> np.ndarray:
    return np.array([shape.group(h) for h in range(shape.n_heads)])


def forward_reach(circuit: Circuit, shape: ModelShape, sender_seed: np.ndarray | None = None,
                  port_seed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes reachable through in-circuit edges from the seeds (default: the embedding at every
    role): ``(senders [S, R], ports [P, R])`` bool, seeds included."""
    rm, am = circuit.resid_mask, circuit.attn_mask
    S, P, R = rm.shape
    sf = np.zeros((S, R), bool) if sender_seed is None else sender_seed.copy()
    pf = np.zeros((P, R), bool) if port_seed is None else port_seed.copy()
    if sender_seed is None and port_seed is None:
        sf[0] = True
    grp = _head_groups(shape)
    for l in range(shape.n_layers):
        ix = _layer_index(shape, l)
        qkv = np.concatenate([ix.q, ix.k, ix.v])
        pf[qkv] |= (rm[:, qkv, :] & sf[:, None, :]).any(0)
        # attention edges: inputs q at t, k / v at s -> head output at t
        q_in = pf[ix.q][:, None, :]  # [H, 1(s), R(t)]
        k_in = pf[ix.k][grp][:, :, None]  # [H, R(s), 1]
        v_in = pf[ix.v][grp][:, :, None]
        a = am[l]
        fed = (a[..., 0] & q_in) | (a[..., 1] & k_in) | (a[..., 2] & v_in)  # [H, s, t]
        sf[ix.heads] |= fed.any(1)
        pf[ix.mlp_in] |= (rm[:, ix.mlp_in, :] & sf).any(0)
        sf[ix.mlp] |= pf[ix.mlp_in]
    lg = shape.port("logits")
    pf[lg] |= (rm[:, lg, :] & sf).any(0)
    return sf, pf


def backward_reach(circuit: Circuit, shape: ModelShape, sender_seed: np.ndarray | None = None,
                   port_seed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes from which the seeds (default: the logits port) are reachable through in-circuit
    edges: ``(senders [S, R], ports [P, R])`` bool, seeds included."""
    rm, am = circuit.resid_mask, circuit.attn_mask
    S, P, R = rm.shape
    sb = np.zeros((S, R), bool) if sender_seed is None else sender_seed.copy()
    pb = np.zeros((P, R), bool) if port_seed is None else port_seed.copy()
    if sender_seed is None and port_seed is None:
        pb[shape.port("logits")] = True
    grp = _head_groups(shape)
    for l in reversed(range(shape.n_layers)):
        ix = _layer_index(shape, l)
        sb[ix.mlp] |= (rm[ix.mlp] & pb).any(0)
        pb[ix.mlp_in] |= sb[ix.mlp]
        sb[ix.heads] |= (rm[ix.heads] & pb[None]).any(1)
        out = sb[ix.heads]  # [H, R(t)]
        a = am[l]
        pb[ix.q] |= (a[..., 0] & out[:, None, :]).any(1)
        k_used = (a[..., 1] & out[:, None, :]).any(2)  # [H, R(s)]
        v_used = (a[..., 2] & out[:, None, :]).any(2)
        for g in range(shape.n_groups):
            pb[ix.k[g]] |= k_used[grp == g].any(0)
            pb[ix.v[g]] |= v_used[grp == g].any(0)
    sb[0] |= (rm[0] & pb).any(0)
    return sb, pb


def edges_between(circuit: Circuit, shape: ModelShape, tails: tuple[np.ndarray, np.ndarray],
                  heads: tuple[np.ndarray, np.ndarray]) -> Circuit:
    """In-circuit edges whose tail node is in ``tails`` and head node in ``heads`` (each a
    ``(senders [S,R], ports [P,R])`` pair of bool arrays)."""
    rm, am = circuit.resid_mask, circuit.attn_mask
    t_s, t_p = tails
    h_s, h_p = heads
    keep_r = rm & t_s[:, None, :] & h_p[None, :, :]
    keep_a = np.zeros_like(am)
    grp = _head_groups(shape)
    for l in range(shape.n_layers):
        ix = _layer_index(shape, l)
        out = h_s[ix.heads][:, None, :]  # head output at t
        keep_a[l, ..., 0] = am[l, ..., 0] & t_p[ix.q][:, None, :] & out
        keep_a[l, ..., 1] = am[l, ..., 1] & t_p[ix.k][grp][:, :, None] & out
        keep_a[l, ..., 2] = am[l, ..., 2] & t_p[ix.v][grp][:, :, None] & out
    return Circuit(keep_r, keep_a)


def prune_dangling(circuit: Circuit, shape: ModelShape) -> Circuit:
    """Keep exactly the edges on an in-circuit embedding -> logits path (module docstring)."""
    return edges_between(circuit, shape, forward_reach(circuit, shape), backward_reach(circuit, shape))


# --- greedy ----------------------------------------------------------------------------------
def greedy(scores: EdgeScores, n: int, absolute: bool = True, prune: bool = True,
           values: np.ndarray | None = None) -> Circuit:
    """EAP-IG's greedy extraction, on the role-level graph: start with the logits; repeatedly add
    the highest-|score| edge whose head node is already in the circuit's backward closure (so it
    reaches the logits), which brings its tail node in. Stops at ``n`` edges or when no candidate
    is left. ``values`` (flat, same order as ``scores.flat()``) ranks instead of the scores (random
    controls use random values). Pruned of edges not fed from the embedding if ``prune``."""
    shape, R = scores.shape, len(scores.roles)
    S, P = shape.n_senders, shape.n_ports
    flat = scores.flat() if values is None else np.asarray(values, dtype=np.float64)
    key = _key(flat, absolute)
    key[np.isnan(scores.flat())] = -np.inf
    n_res = S * P * R
    s_layer, s_kind, s_head = shape.sender_arrays()
    H = shape.n_heads
    order = np.argsort(-key, kind="stable")  # rank 0 = best; ties in flat order
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    heap: list[int] = []  # ranks: int comparisons keep the heap fast
    in_ports = np.zeros((P, R), bool)
    in_senders = np.zeros((S, R), bool)

    def push(indices: np.ndarray) -> None:
        for item in rank[indices[key[indices] > -np.inf]].tolist():
            heapq.heappush(heap, item)

    def add_port(p: int, r: int) -> None:
        if in_ports[p, r]:
            return
        in_ports[p, r] = True
        push((np.arange(S) * P + p) * R + r)  # residual edges into (p, r)

    def add_sender(s: int, r: int) -> None:
        if in_senders[s, r]:
            return
        in_senders[s, r] = True
        kind = s_kind[s]
        if kind == "mlp":
            add_port(shape.port("mlp", int(s_layer[s])), r)
        elif kind == "head":
            l, h = int(s_layer[s]), int(s_head[s])
            src, comp = np.meshgrid(np.arange(R), np.arange(3), indexing="ij")
            push(n_res + ((((l * H + h) * R + src) * R + r) * 3 + comp).ravel())

    every = (np.ones((S, R), bool), np.ones((P, R), bool))
    closure = edges_between(scores.exists(), shape, every, backward_reach(scores.exists(), shape))
    if n >= closure.n_edges:  # every candidate would be taken: the order does not matter
        return prune_dangling(closure, shape) if prune else closure
    lg = shape.port("logits")
    for r in range(R):
        add_port(lg, r)
    chosen = np.zeros(flat.size, bool)
    count = 0
    while heap and count < n:
        i = int(order[heapq.heappop(heap)])
        if chosen[i]:
            continue
        chosen[i] = True
        count += 1
        if i < n_res:
            add_sender(i // (P * R), i % R)
        else:
            j, c = divmod(i - n_res, 3)
            j, t = divmod(j, R)
            j, s = divmod(j, R)
            l, h = divmod(j, H)
            g = shape.group(h)
            port = shape.port(COMPONENTS[c], l, h if c == 0 else g)
            add_port(port, t if c == 0 else s)
    circuit = Circuit.from_flat(chosen, scores)
    return prune_dangling(circuit, shape) if prune else circuit


def greedy_percent(scores: EdgeScores, percent: float, absolute: bool = True, prune: bool = True) -> Circuit:
    return greedy(scores, n_for_percent(percent, scores.n_edges()), absolute, prune)


def extract(scores: EdgeScores, n: int, method: str = "topn", absolute: bool = True,
            prune: bool = True) -> Circuit:
    """``topn`` or ``greedy`` by name (the commands' ``--method``)."""
    if method == "topn":
        return topn(scores, n, absolute, prune)
    if method == "greedy":
        return greedy(scores, n, absolute, prune)
    raise ValueError(f"unknown extraction method {method!r} (topn, greedy)")


# --- counts ----------------------------------------------------------------------------------
def edge_counts(scores: EdgeScores, circuit: Circuit | None = None) -> dict:
    """Edges at role level (existing edges, or the circuit's) by kind and type, and the
    position-agnostic count (roles collapsed: a residual edge per (sender, port), an attention
    edge per (head, component)) of the same set."""
    c = circuit if circuit is not None else scores.exists()
    rm, am = c.resid_mask, c.attn_mask
    p_kind = scores.shape.port_arrays()[1]
    by_type = {k: int(rm[:, p_kind == k, :].sum()) for k in ("mlp", "logits")}
    qkv_resid = {k: int(rm[:, p_kind == k, :].sum()) for k in COMPONENTS}
    by_attn = {k: int(am[..., i].sum()) for i, k in enumerate(COMPONENTS)}
    return {"resid": int(rm.sum()), "attn": int(am.sum()), "total": int(rm.sum() + am.sum()),
            "resid_by_port": {**qkv_resid, **by_type}, "attn_by_component": by_attn,
            "position_agnostic": {"resid": int(rm.any(2).sum()), "attn": int(am.any((2, 3)).sum()),
                                  "total": int(rm.any(2).sum() + am.any((2, 3)).sum())}}


__all__ = ["backward_reach", "edge_counts", "edges_between", "extract", "forward_reach", "greedy",
           "greedy_percent", "n_for_percent", "prune_dangling", "topn", "topn_percent"]
