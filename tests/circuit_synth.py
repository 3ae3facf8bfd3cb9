"""Synthetic role-level edge scores with a planted circuit (L=4, H=4, G=2), for the graph tests.

The planted circuit is the paper's classification loop (CIRCUITS.md section 3, True head):

    0.1 K->V (Loc)   reads k, v at K and q at V from the embedding
    0.2 K->Q (Rel)   reads k, v at K and q at Q from the embedding
    1.0 V->A (Rel)   reads k, v at V from 0.1's output at V; q at A from the embedding
    2.3 Q->A (Rel.2) reads k at Q from 0.2's output at Q; q at A from 1.0's output at A
    3.0 A->END       reads v at A from 2.3's output at A; q at END from the embedding
    3.0@END -> logits

Every other existing edge gets small noise; edges that do not exist are NaN (the contract's
pattern, attention edges only from an earlier-or-same role to a later-or-same role).
"""

from __future__ import annotations

import numpy as np

from interp.circuit.graph import Circuit, EdgeScores, ModelShape, resid_structure

ROLES = ["pre", "K", "V", "K'", "V'", "Q", "A", "END"]
SHAPE = ModelShape(4, 4, 2)


def attn_structure(n_roles: int, shape: ModelShape = SHAPE) -> np.ndarray:
    """Attention edges exist from role s to role t when s <= t (roles in prompt order)."""
    ok = np.triu(np.ones((n_roles, n_roles), bool))
    return np.broadcast_to(ok[None, None, :, :, None], (shape.n_layers, shape.n_heads, n_roles, n_roles, 3)).copy()


def blank_scores(seed: int = 0, noise: float = 0.01, roles: list[str] = ROLES,
                 shape: ModelShape = SHAPE) -> EdgeScores:
    rng = np.random.default_rng(seed)
    rs = resid_structure(shape, roles)
    ast = attn_structure(len(roles), shape)
    resid = np.where(rs, rng.normal(0, noise, rs.shape), np.nan).astype(np.float32)
    attn = np.where(ast, rng.normal(0, noise, ast.shape), np.nan).astype(np.float32)
    return EdgeScores(resid, attn, roles, shape)


# (kind, indices, score): resid = (sender, port, role), attn = (l, h, src, dst, comp)
def planted_edges(shape: ModelShape = SHAPE, roles: list[str] = ROLES) -> list[tuple[str, tuple, float]]:
    r = {n: i for i, n in enumerate(roles)}
    emb = shape.sender("emb")
    head, port = shape.sender, shape.port
    g = shape.group
    Q, K, V = 0, 1, 2
    return [
        # 0.1 K->V
        ("resid", (emb, port("k", 0, g(1)), r["K"]), 1.1),
        ("resid", (emb, port("v", 0, g(1)), r["K"]), 1.2),
        ("resid", (emb, port("q", 0, 1), r["V"]), 0.9),
        ("attn", (0, 1, r["K"], r["V"], Q), 0.55),
        ("attn", (0, 1, r["K"], r["V"], K), 1.0),
        ("attn", (0, 1, r["K"], r["V"], V), 1.3),
        # 0.2 K->Q (another KV group than 0.1)
        ("resid", (emb, port("k", 0, g(2)), r["K"]), 1.05),
        ("resid", (emb, port("v", 0, g(2)), r["K"]), 1.15),
        ("resid", (emb, port("q", 0, 2), r["Q"]), 0.8),
        ("attn", (0, 2, r["K"], r["Q"], Q), 0.5),
        ("attn", (0, 2, r["K"], r["Q"], K), -1.4),
        ("attn", (0, 2, r["K"], r["Q"], V), 0.95),
        # 1.0 V->A
        ("resid", (head("head", 0, 1), port("k", 1, g(0)), r["V"]), 1.5),
        ("resid", (head("head", 0, 1), port("v", 1, g(0)), r["V"]), 1.6),
        ("resid", (emb, port("q", 1, 0), r["A"]), 0.85),
        ("attn", (1, 0, r["V"], r["A"], Q), 0.45),
        ("attn", (1, 0, r["V"], r["A"], K), 1.25),
        ("attn", (1, 0, r["V"], r["A"], V), 1.35),
        # 2.3 Q->A, the closing head
        ("resid", (head("head", 0, 2), port("k", 2, g(3)), r["Q"]), 1.7),
        ("resid", (head("head", 1, 0), port("q", 2, 3), r["A"]), -1.8),
        ("attn", (2, 3, r["Q"], r["A"], K), 2.0),
        ("attn", (2, 3, r["Q"], r["A"], Q), 1.9),
        ("resid", (emb, port("v", 2, g(3)), r["Q"]), 0.7),
        ("attn", (2, 3, r["Q"], r["A"], V), 0.75),
        # 3.0 A->END
        ("resid", (head("head", 2, 3), port("v", 3, g(0)), r["A"]), 2.1),
        ("resid", (emb, port("q", 3, 0), r["END"]), 0.6),
        ("attn", (3, 0, r["A"], r["END"], V), 2.2),
        ("attn", (3, 0, r["A"], r["END"], Q), 0.65),
        ("resid", (head("head", 3, 0), port("logits"), r["END"]), 2.5),
    ]


def planted_scores(seed: int = 0, noise: float = 0.01) -> tuple[EdgeScores, Circuit]:
    """Scores with the planted loop circuit, and that circuit."""
    scores = blank_scores(seed, noise)
    circuit = Circuit.empty_like(scores)
    for kind, idx, value in planted_edges():
        arr, mask = (scores.resid, circuit.resid_mask) if kind == "resid" else (scores.attn, circuit.attn_mask)
        assert not np.isnan(arr[idx]), (kind, idx)
        arr[idx] = value
        mask[idx] = True
    return scores, circuit


def linear_evaluate(scores: EdgeScores, m_empty: float = 0.5):
    """A hand-computable stand-in for the exact patcher: m(C) = m_empty + sum of the scores of
    the circuit's edges (NaN-free)."""

    def evaluate(resid_mask: np.ndarray, attn_mask: np.ndarray) -> float:
        return float(m_empty + np.nansum(scores.resid[resid_mask]) + np.nansum(scores.attn[attn_mask]))

    return evaluate
