"""Graph types, files and extraction on synthetic scores with a planted circuit (no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from circuit_synth import ROLES, SHAPE, blank_scores, planted_scores
from interp.circuit.extract import (edge_counts, greedy, n_for_percent, prune_dangling, topn,
                                    topn_percent)
from interp.circuit.graph import (Circuit, EdgeScores, ModelShape, circuit_from_json, circuit_to_json,
                                  edge_type_arrays, load_graph_json, node_graph, resid_structure,
                                  save_graph_json, to_dot)

pytestmark = pytest.mark.unit


def test_index_helpers_follow_the_contract_order():
    s = ModelShape(3, 4, 2)
    assert s.n_senders == 1 + 3 * 5 and s.n_ports == 3 * (4 + 4 + 1) + 1
    layer, kind, head = s.sender_arrays()
    assert kind[0] == "emb" and layer[0] == -1
    assert s.sender("head", 1, 2) == 1 + 5 + 2 and kind[s.sender("head", 1, 2)] == "head"
    assert s.sender("mlp", 2) == s.n_senders - 1 and kind[-1] == "mlp"
    p_layer, p_kind, p_index = s.port_arrays()
    assert [s.port("q", 1, 3), s.port("k", 1, 1), s.port("v", 1, 0), s.port("mlp", 1)] == [12, 14, 15, 17]
    assert (p_kind[12], p_index[12], p_kind[14], p_index[14], p_kind[15], p_kind[17]) == ("q", 3, "k", 1, "v", "mlp")
    assert p_kind[s.port("logits")] == "logits" and s.port("logits") == s.n_ports - 1
    assert [s.group(h) for h in range(4)] == [0, 0, 1, 1]
    assert s.sender_name(s.sender("head", 1, 2)) == "1.2" and s.port_name(14) == "1.g1.k"
    with pytest.raises(ValueError):
        ModelShape(2, 4, 3)


def test_resid_structure_matches_the_contract():
    s = ModelShape(2, 2, 1)
    roles = ["K", "END"]
    m = resid_structure(s, roles)
    h0, mlp0, emb = s.sender("head", 0, 0), s.sender("mlp", 0), s.sender("emb")
    assert not m[h0, s.port("q", 0, 1)].any() and m[h0, s.port("q", 1, 1)].all()
    assert m[h0, s.port("mlp", 0)].all() and not m[mlp0, s.port("mlp", 0)].any()
    assert m[mlp0, s.port("k", 1, 0)].all() and m[emb].any(1).all()
    lg = s.port("logits")
    assert m[:, lg, 1].all() and not m[:, lg, 0].any()


def test_parallel_residual_layout_feeds_mlp_ports_like_attention_and_travels_in_files(tmp_path):
    """Under a parallel residual (GPT-NeoX) no head feeds its own layer's MLP; scores.npz and
    graph.json keep the flag (files without it read as sequential)."""
    s, seq = ModelShape(2, 2, 1, parallel=True), ModelShape(2, 2, 1)
    m = resid_structure(s, ["K", "END"])
    h0, mlp0 = s.sender("head", 0, 0), s.port("mlp", 0)
    assert not m[h0, mlp0].any() and m[h0, s.port("mlp", 1)].all()
    assert (resid_structure(seq, ["K", "END"]) != m).sum() == 2 * 2 * 2  # heads of each layer -> its mlp, 2 roles
    R = 2
    scores = EdgeScores(np.where(m, 1.0, np.nan), np.ones((2, 2, R, R, 3)), ["K", "END"], s, {})
    assert EdgeScores.load(scores.save(tmp_path / "scores.npz")).shape == s
    circuit = Circuit.empty_like(scores)
    circuit.resid_mask[0, s.port("logits"), 1] = True
    data = json.loads(json.dumps(circuit_to_json(circuit, scores)))
    assert data["model"]["parallel"] is True and circuit_from_json(data)[1] == s
    data["model"].pop("parallel")
    assert circuit_from_json(data)[1] == seq


def test_the_engine_shape_is_the_graph_layout():
    """One shape type: the engine's CircuitShape is a ModelShape, its layout is what files carry
    (a GPT-NeoX config's parallel residual included)."""
    from transformers import GPTNeoXConfig

    from interp.circuit.ports import CircuitShape, circuit_shape

    shape = circuit_shape(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, use_parallel_residual=True))
    assert isinstance(shape, CircuitShape) and isinstance(shape, ModelShape)
    assert shape.layout == ModelShape(2, 4, 4, parallel=True) and type(shape.layout) is ModelShape
    assert (shape.edge_exists() == shape.layout.edge_exists()).all()


def test_scores_npz_round_trip(tmp_path):
    scores, _ = planted_scores()
    scores.meta = {"task": "cls", "counterfactual": "pair"}
    path = scores.save(tmp_path / "scores.npz")
    back = EdgeScores.load(path)
    assert back.roles == ROLES and back.shape == SHAPE and back.meta == scores.meta
    np.testing.assert_array_equal(back.resid, scores.resid)
    np.testing.assert_array_equal(back.attn, scores.attn)
    with np.load(path) as z:
        assert {"resid", "attn", "roles", "sender_layer", "sender_kind", "sender_head", "port_layer",
                "port_kind", "port_index", "model_shape"} <= set(z.files)


def test_scores_reject_wrong_shapes():
    scores = blank_scores()
    with pytest.raises(ValueError, match="do not match"):
        EdgeScores(scores.resid[:, :, :-1], scores.attn, ROLES, SHAPE)


def test_topn_and_greedy_recover_the_planted_circuit():
    scores, planted = planted_scores()
    n = planted.n_edges
    assert topn(scores, n) == planted
    assert greedy(scores, n) == planted
    assert topn(scores, n, prune=True) == planted
    assert prune_dangling(planted, SHAPE) == planted


def test_greedy_skips_a_strong_edge_that_cannot_reach_the_logits():
    scores, planted = planted_scores()
    r = ROLES.index
    scores.attn[1, 1, r("K"), r("A"), 2] = 10.0  # head 1.1 A: nothing reads its output
    n = planted.n_edges
    top = topn(scores, n)
    assert top.attn_mask[1, 1, r("K"), r("A"), 2] and top != planted
    assert greedy(scores, n) == planted
    assert topn(scores, n, prune=True).n_edges < n


def test_signed_ranking_prefers_positive_scores():
    scores, _ = planted_scores()
    r = ROLES.index
    c = topn(scores, 5, absolute=False)
    assert not c.attn_mask[0, 2, r("K"), r("Q"), 1]  # -1.4 is large but negative
    assert topn(scores, 40).attn_mask[0, 2, r("K"), r("Q"), 1]


def test_prune_removes_exactly_the_dangling_edges():
    scores, planted = planted_scores()
    r = ROLES.index
    s = SHAPE
    c = planted.copy()
    keep_extra = [(s.sender("emb"), s.port("logits"), r("END"))]  # a direct path: kept
    dangling_resid = [
        (s.sender("emb"), s.port("k", 2, 0), r("K")),  # a port nobody in the circuit reads
        (s.sender("head", 1, 2), s.port("mlp", 3), r("Q")),  # a sender with no input
        (s.sender("emb"), s.port("v", 1, 1), r("pre")),  # cascade: feeds 1.3 pre->Q, whose output ...
        (s.sender("head", 1, 3), s.port("q", 2, 3), r("Q")),  # ... goes to a q port read by no edge
    ]
    dangling_attn = [(1, 1, r("K"), r("A"), 2),  # no input at 1.g0.v@K and no output
                     (1, 3, r("pre"), r("Q"), 2)]
    for idx in keep_extra + dangling_resid:
        c.resid_mask[idx] = True
    for idx in dangling_attn:
        c.attn_mask[idx] = True
    pruned = prune_dangling(c, s)
    expected = planted.copy()
    expected.resid_mask[keep_extra[0]] = True
    assert pruned == expected
    assert (c - pruned).n_edges == len(dangling_resid) + len(dangling_attn)


def test_percent_sizes_and_counts():
    scores, planted = planted_scores()
    total = scores.n_edges()
    assert n_for_percent(100, total) == total and n_for_percent(0.1, 1000) == 1
    assert n_for_percent(0.2, 999) == 1 and n_for_percent(50, 7) == 3
    assert topn_percent(scores, 100).n_edges == total
    counts = edge_counts(scores)
    assert counts["total"] == total == counts["resid"] + counts["attn"]
    assert sum(counts["resid_by_port"].values()) == counts["resid"]
    assert counts["position_agnostic"]["attn"] == SHAPE.n_layers * SHAPE.n_heads * 3
    pc = edge_counts(scores, planted)
    assert pc["total"] == planted.n_edges and pc["resid_by_port"]["logits"] == 1
    types = edge_type_arrays(scores)
    assert types.shape == scores.flat().shape and set(np.unique(types)) == {"q", "k", "v", "mlp", "logits"}


def test_node_graph_names_and_links():
    scores, planted = planted_scores()
    g = node_graph(planted, scores)
    heads = sorted(n for n, d in g.nodes(data=True) if d["kind"] == "head")
    assert heads == ["0.1 K->V", "0.2 K->Q", "1.0 V->A", "2.3 Q->A", "3.0 A->END"]
    assert "logits END" in g and "emb K" in g
    links = {(a, b, k) for a, b, k in g.edges(keys=True)}
    assert ("0.1 K->V", "1.0 V->A", "k") in links and ("0.1 K->V", "1.0 V->A", "v") in links
    assert ("1.0 V->A", "2.3 Q->A", "q") in links and ("0.2 K->Q", "2.3 Q->A", "k") in links
    assert ("3.0 A->END", "logits END", "logits") in links
    assert g.nodes["2.3 Q->A"]["score"] == pytest.approx(2.0 + 1.9 + 0.75)


def test_graph_json_round_trip(tmp_path):
    scores, planted = planted_scores()
    path = save_graph_json(tmp_path / "graph.json", planted, scores, extra={"task": "cls"})
    data = json.loads(path.read_text())
    assert data["n_edges"] == planted.n_edges and data["task"] == "cls"
    assert {"0.2@Q -> 2.g1.k", "2.3 Q->A q"} <= {e["name"] for e in data["edges"]}
    circuit, shape, roles = load_graph_json(path)
    assert circuit == planted and shape == SHAPE and roles == ROLES
    bad = circuit_to_json(planted, scores)
    bad["edges"][0]["name"] = "emb@K -> 9.9.q"
    with pytest.raises(ValueError, match="does not match"):
        circuit_from_json(bad)


def test_dot_export_colours_by_type():
    scores, planted = planted_scores()
    dot = to_dot(planted, scores)
    assert dot.startswith('digraph "circuit"')
    assert '"1.0 V->A" -> "2.3 Q->A" [color=red' in dot
    assert '"0.2 K->Q" -> "2.3 Q->A" [color=green3' in dot
    assert '"0.1 K->V" -> "1.0 V->A" [color=blue' in dot


def test_circuit_set_operations():
    scores, planted = planted_scores()
    empty = Circuit.empty_like(scores)
    assert (planted | empty) == planted and (planted & empty).n_edges == 0
    assert (planted - planted).n_edges == 0
    assert Circuit.from_flat(planted.flat(), scores) == planted
    assert planted.heads() == {(0, 1), (0, 2), (1, 0), (2, 3), (3, 0)}


def test_bad_inputs_get_clear_errors(tmp_path):
    scores, planted = planted_scores()
    small = Circuit(planted.resid_mask[:, :, :-1], planted.attn_mask)
    with pytest.raises(ValueError, match="do not fit"):
        node_graph(small, scores)
    np.savez(tmp_path / "x.npz", resid=scores.resid)
    with pytest.raises(ValueError, match="not a scores file"):
        EdgeScores.load(tmp_path / "x.npz")


def test_graph_json_carries_node_classes():
    scores, planted = planted_scores()
    data = circuit_to_json(planted, scores, node_classes={"2.3 Q->A": "Rel2"})
    nodes = {n["name"]: n for n in data["nodes"]}
    assert nodes["2.3 Q->A"]["class"] == "Rel2" and "class" not in nodes["0.1 K->V"]
    assert nodes["2.3 Q->A"]["weight"] == pytest.approx(4.65)


def test_scores_written_without_model_shape_load(tmp_path):
    from interp.circuit.graph import infer_shape

    scores, _ = planted_scores()
    np.savez(tmp_path / "s.npz", resid=scores.resid, attn=scores.attn, roles=np.array(ROLES))
    back = EdgeScores.load(tmp_path / "s.npz")
    assert back.shape == SHAPE and back.meta == {}
    assert infer_shape((1 + 30 * 10, 30 * 16 + 1, 12), (30, 9, 12, 12, 3)) == ModelShape(30, 9, 3)
    with pytest.raises(ValueError, match="fit no model shape"):
        infer_shape((5, 7, 3), (2, 2, 3, 3, 3))
