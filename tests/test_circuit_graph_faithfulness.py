"""Faithfulness, CPR/CMD, random controls and spot-check statistics on hand-computable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from circuit_synth import SHAPE, linear_evaluate, planted_scores
from interp.circuit.extract import backward_reach, edges_between
from interp.circuit.faithfulness import (MIB_PERCENTAGES, area_under_curve, compare_to_random, faithfulness,
                                         faithfulness_curve, random_circuit, spearman, spot_check_edges,
                                         spot_check_stats)
from interp.circuit.graph import Circuit

pytestmark = pytest.mark.unit


def test_faithfulness_formula():
    assert faithfulness(3.0, 5.0, 1.0) == 0.5
    assert faithfulness(5.0, 5.0, 1.0) == 1.0 and faithfulness(1.0, 5.0, 1.0) == 0.0
    assert faithfulness(0.0, 5.0, 1.0) == -0.25
    assert math.isnan(faithfulness(1.0, 2.0, 2.0))


def test_cpr_cmd_for_known_curves():
    p = MIB_PERCENTAGES
    cpr, cmd = area_under_curve(p, [1.0] * len(p))
    assert cpr == pytest.approx(0.999) and cmd == 0.0
    cpr, cmd = area_under_curve(p, [0.0] * len(p))
    assert cpr == 0.0 and cmd == pytest.approx(0.999)
    # f = x (fraction of edges): the trapezoid rule is exact for a line
    cpr, cmd = area_under_curve(p, [x / 100 for x in p])
    assert cpr == pytest.approx((1 - 0.001 ** 2) / 2) and cmd == pytest.approx(0.999 - cpr)
    # overshoot counts in CMD: f = 2 everywhere is as far from 1 as f = 0
    assert area_under_curve(p, [2.0] * len(p))[1] == pytest.approx(0.999)
    cpr, _ = area_under_curve(p, [1.0] * len(p), log_scale=True)
    assert cpr == pytest.approx(math.log(1000))
    assert area_under_curve([50, 100], [0.2, 0.6]) == pytest.approx((0.2, 0.5 * 0.6))


def test_curve_on_a_linear_metric_is_hand_computable():
    scores, planted = planted_scores(noise=0.0)  # only planted edges carry score
    ev = linear_evaluate(scores, m_empty=0.5)
    total = float(np.nansum(scores.flat()))
    m_full, m_empty = ev(*scores.exists().masks()), ev(*Circuit.empty_like(scores).masks())
    assert m_full == pytest.approx(0.5 + total) and m_empty == 0.5
    assert faithfulness(ev(*planted.masks()), m_full, m_empty) == pytest.approx(1.0)
    curve = faithfulness_curve(scores, ev, m_full, m_empty, percentages=[0.1, 1, 100], prune=False,
                               n_random=3, seed=1, random_kind="uniform")
    total_edges = scores.n_edges()
    assert curve.n_requested == [int(0.001 * total_edges), int(0.01 * total_edges), total_edges]
    # 0.1 % of 4300-odd edges = the 4 strongest |scores|: 2.5, 2.2, 2.1, 2.0
    assert curve.f[0] == pytest.approx((2.5 + 2.2 + 2.1 + 2.0) / total, rel=1e-5)
    assert curve.f[-1] == pytest.approx(1.0)
    assert len(curve.random_f) == 3 and all(len(r) == 3 for r in curve.random_f)
    assert curve.random_mean[-1] == pytest.approx(1.0)  # a random circuit of every edge is the model
    assert curve.random_mean[0] < curve.f[0]
    assert (curve.cpr, curve.cmd) == pytest.approx(area_under_curve([0.1, 1, 100], curve.f))
    again = faithfulness_curve(scores, ev, m_full, m_empty, percentages=[0.1, 1, 100], prune=False,
                               n_random=3, seed=1, random_kind="uniform")
    assert again.random_f == curve.random_f  # seeded
    assert curve.to_json()["method"] == "topn"


def test_random_circuits_have_the_size_and_connected_ones_reach_the_logits():
    scores, _ = planted_scores()
    rng = np.random.default_rng(0)
    u = random_circuit(scores, 50, rng, "uniform")
    assert u.n_edges == 50 and not (u - scores.exists()).n_edges
    c = random_circuit(scores, 50, np.random.default_rng(0), "connected")
    assert c.n_edges == 50
    all_true = (np.ones((SHAPE.n_senders, len(scores.roles)), bool), np.ones((SHAPE.n_ports, len(scores.roles)), bool))
    assert edges_between(c, SHAPE, all_true, backward_reach(c, SHAPE)) == c
    assert random_circuit(scores, 50, np.random.default_rng(0), "connected") == c
    with pytest.raises(ValueError):
        random_circuit(scores, 5, rng, "bogus")


def test_compare_to_random_within_a_pool():
    scores, planted = planted_scores(noise=0.0)
    ev = linear_evaluate(scores)
    m_full, m_empty = ev(*scores.exists().masks()), ev(*Circuit.empty_like(scores).masks())
    sub = Circuit.empty_like(scores)
    sub.resid_mask[planted.resid_mask] = True  # the residual half of the planted circuit
    res = compare_to_random(scores, ev, sub, m_full, m_empty, pool=scores.exists(), n_random=4)
    assert res["n_edges"] == sub.n_edges and len(res["random_f"]) == 4 and res["beats_all_random"]
    inside = compare_to_random(scores, ev, sub, m_full, m_empty, pool=planted, n_random=4)
    assert all(0 < f < 1 for f in inside["random_f"])  # every random draw is inside the planted edges


def test_spot_check_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    types = np.array(["q", "k"] * 20)
    same = spot_check_stats(x, x, types, k=5)
    assert same["all"]["pearson"] == pytest.approx(1) and same["all"]["spearman"] == pytest.approx(1)
    assert same["all"]["sign_agreement"] == 1 and same["all"]["topk_overlap"] == 1
    assert set(same["by_type"]) == {"q", "k"} and same["by_type"]["q"]["n"] == 20
    neg = spot_check_stats(x, -x, k=5)["all"]
    assert neg["sign_agreement"] == 0 and neg["pearson"] == pytest.approx(-1) and neg["topk_overlap"] == 1
    mono = spot_check_stats(x, x ** 3)["all"]
    assert mono["spearman"] == pytest.approx(1) and mono["pearson"] < 0.99
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 2, 3])) == pytest.approx(1)
    with_nan = spot_check_stats(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]))["all"]
    assert with_nan["n"] == 2


def test_spot_check_edges_are_top_plus_seeded_random():
    scores, planted = planted_scores()
    idx = spot_check_edges(scores, k=5, n_random=7, seed=3)
    assert idx.size == 12 and len(set(idx.tolist())) == 12
    assert set(idx[:5].tolist()) <= set(planted.edge_indices().tolist())
    assert np.array_equal(idx, spot_check_edges(scores, k=5, n_random=7, seed=3))


def test_curve_json_round_trip():
    import json

    from interp.circuit.faithfulness import FaithfulnessCurve

    scores, _ = planted_scores()
    ev = linear_evaluate(scores)
    curve = faithfulness_curve(scores, ev, 2.0, 2.0, percentages=[1, 100], n_random=1)  # f undefined: NaN
    data = json.loads(json.dumps(curve.to_json()))
    assert data["f"] == [None, None]
    back = FaithfulnessCurve.from_json(data)
    assert math.isnan(back.f[0]) and back.n_edges == curve.n_edges and back.method == "topn"
