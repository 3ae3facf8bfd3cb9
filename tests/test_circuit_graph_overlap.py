"""Circuit overlap across tasks on hand-built sets and planted circuits."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_synth import linear_evaluate, planted_scores
from interp.circuit.graph import Circuit
from interp.circuit.overlap import (circuit_items, core_circuit, core_vs_random, jaccard, overlap_matrices,
                                    random_floor, split_half, transfer_matrix, weighted_jaccard)

pytestmark = pytest.mark.unit


def test_jaccard_on_hand_built_sets():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard({1}, {2}) == 0.0 and jaccard(set(), set()) == 1.0
    assert weighted_jaccard({"a": 1.0, "b": 2.0}, {"b": -1.0, "c": 1.0}) == pytest.approx(1 / 4)
    assert weighted_jaccard({"a": 2.0}, {"a": 2.0}) == 1.0 and weighted_jaccard({}, {}) == 1.0


def _drop_heads(c: Circuit, heads) -> Circuit:
    out = c.copy()
    for l, h in heads:
        out.attn_mask[l, h] = False
    return out


def test_overlap_matrices_levels():
    scores, planted = planted_scores()
    other = _drop_heads(planted, [(0, 2)])  # same circuit without head 0.2's three edges
    m = overlap_matrices({"a": (planted, scores), "b": (other, scores)})
    assert m["tasks"] == ["a", "b"]
    assert m["edges"]["jaccard"][0][0] == 1.0
    assert m["edges"]["jaccard"][0][1] == pytest.approx((planted.n_edges - 3) / planted.n_edges)
    assert m["heads"]["jaccard"][0][1] == pytest.approx(4 / 5)
    assert m["nodes"]["jaccard"][1][0] == pytest.approx(4 / 5)
    items = circuit_items(planted, scores)
    assert items["heads"][(0, 2)] == pytest.approx(0.5 + 1.4 + 0.95)
    w = m["heads"]["weighted"][0][1]
    assert w == pytest.approx(1 - items["heads"][(0, 2)] / sum(items["heads"].values()))


def test_transfer_matrix():
    scores, planted = planted_scores(noise=0.0)
    ev = linear_evaluate(scores)
    full, empty = ev(*scores.exists().masks()), ev(*Circuit.empty_like(scores).masks())
    half = _drop_heads(planted, [(0, 1), (0, 2), (1, 0)])
    t = transfer_matrix({"a": planted, "b": half}, {"a": ev, "b": ev}, {"a": (full, empty), "b": (full, empty)})
    assert t["f"][0][0] == pytest.approx(1.0) and t["f"][0][1] == pytest.approx(1.0)
    kept = float(np.nansum(scores.flat()[half.edge_indices()]))
    assert t["f"][1][0] == pytest.approx(kept / (full - empty))


def test_split_half_ceiling_and_random_floor():
    a, planted = planted_scores(seed=1)
    b, _ = planted_scores(seed=2)  # same planted circuit, independent noise
    sh = split_half(a, b, planted.n_edges)
    assert sh["edges"]["jaccard"] == 1.0 and sh["heads"]["jaccard"] == 1.0
    assert -0.2 < sh["spearman"] < 0.5  # noise dominates the edge ranking outside the circuit
    floor = random_floor(a, planted.n_edges, n_random=4)
    assert floor["edges"]["mean"] < 0.2 and set(floor) == {"edges", "nodes", "heads"}


def test_core_circuit():
    scores, planted = planted_scores()
    c1 = planted
    c2 = _drop_heads(planted, [(0, 2)])
    c3 = _drop_heads(planted, [(0, 2), (0, 1)])
    assert core_circuit([c1, c2, c3], 1.0) == c3
    assert core_circuit([c1, c2, c3], 0.5) == c2
    assert core_circuit([c1, c2, c3], 0.0) == c1
    with pytest.raises(ValueError):
        core_circuit([])
    ev = linear_evaluate(scores)
    full, empty = ev(*scores.exists().masks()), ev(*Circuit.empty_like(scores).masks())
    res = core_vs_random(c2, {"t": (scores, ev, full, empty)}, n_random=3)
    assert res["t"]["n_edges"] == c2.n_edges and res["t"]["beats_all_random"]
