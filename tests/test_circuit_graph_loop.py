"""The relational loop detector on planted loops, and its absence when one piece is missing."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_synth import ROLES, SHAPE, blank_scores, linear_evaluate, planted_scores
from interp.circuit.graph import Circuit
from interp.circuit.loop import (closing_head_check, find_loops, load_templates, loop_faithfulness,
                                 loop_share, loop_subcircuit, templates_for)

pytestmark = pytest.mark.unit

r = ROLES.index
Q, K, V = 0, 1, 2


def test_planted_classification_loop_is_found():
    scores, planted = planted_scores()
    res = find_loops(planted, scores, templates_for("cls"))
    assert res.found
    lp = res.shortest
    assert lp.template == "cls_true" and lp.closed and lp.closing == ("Q", "A")
    assert lp.closing_heads == [(2, 3)]
    assert lp.key_chain == ["K", "Q"] and lp.query_chain == ["K", "V", "A"]
    assert [(e["src"], e["dst"], e["heads"]) for e in lp.edges] == [
        ("K", "Q", [(0, 2)]), ("K", "V", [(0, 1)]), ("V", "A", [(1, 0)]), ("Q", "A", [(2, 3)])]
    assert lp.length == 4 and lp.roles == ["A", "K", "Q", "V"]
    # weights: sums of |attention scores| of the witness heads' in-circuit edges
    assert lp.edges[2]["weight"] == pytest.approx(0.45 + 1.25 + 1.35)
    assert lp.weakest_edge()["weight"] == pytest.approx(min(e["weight"] for e in lp.edges))
    assert {x.template for x in res.loops} == {"cls_true", "loop"}  # cls_false needs K', V'
    assert res.to_json()["shortest"]["text"].startswith("closed loop [cls_true]")


@pytest.mark.parametrize("drop", ["key_head", "composition", "query_head"])
def test_no_loop_when_one_piece_is_missing(drop):
    scores, planted = planted_scores()
    c = planted.copy()
    if drop == "key_head":  # head 0.2 K->Q gone: nothing feeds the closing head's key at Q
        c.attn_mask[0, 2] = False
    elif drop == "composition":  # 1.0's output at A no longer feeds 2.3's query at A
        c.resid_mask[SHAPE.sender("head", 1, 0), SHAPE.port("q", 2, 3), r("A")] = False
    else:  # head 0.1 K->V gone: the query chain cannot start at K
        c.attn_mask[0, 1] = False
    assert not find_loops(c, scores).found


def _affirmative_gen_loop_resid() -> list[tuple]:
    """Residual edges of a generation loop: V's key/value into 0.0 (attending V -> Q), 0.0's output
    at Q read by 1.1 (Q -> END), 1.1 feeding 2.2's query at END, which reads V and writes the logits."""
    s = SHAPE
    return [(s.sender("emb"), s.port("k", 0, 0), r("V")), (s.sender("emb"), s.port("v", 0, 0), r("V")),
            (s.sender("emb"), s.port("q", 0, 0), r("Q")),
            (s.sender("head", 0, 0), s.port("k", 1, 0), r("Q")), (s.sender("head", 0, 0), s.port("v", 1, 0), r("Q")),
            (s.sender("emb"), s.port("q", 1, 1), r("END")),
            (s.sender("head", 1, 1), s.port("q", 2, 2), r("END")), (s.sender("emb"), s.port("v", 2, 1), r("V")),
            (s.sender("head", 2, 2), s.port("logits"), r("END"))]


def test_generation_loop_closes_with_an_empty_key_chain():
    scores = blank_scores()
    c = Circuit.empty_like(scores)
    edges_r = _affirmative_gen_loop_resid()
    edges_a = [(0, 0, r("V"), r("Q"), c_) for c_ in (Q, K, V)] + \
              [(1, 1, r("Q"), r("END"), c_) for c_ in (Q, K, V)] + [(2, 2, r("V"), r("END"), Q), (2, 2, r("V"), r("END"), V)]
    for i in edges_r:
        c.resid_mask[i] = True
        scores.resid[i] = 1.0
    for i in edges_a:
        c.attn_mask[i] = True
        scores.attn[i] = 1.0
    res = find_loops(c, scores, templates_for("gen"))
    assert res.found and res.shortest.template == "gen_affirmative"
    lp = res.shortest
    assert lp.key_chain == ["V"] and lp.query_chain == ["V", "Q", "END"] and lp.closing_heads == [(2, 2)]
    assert lp.closed and lp.length == 3
    assert "loop" not in {x.template for x in res.loops}  # the generic template wants K or K'
    # without V's value the Pred head reads nothing at V: no loop
    c2 = c.copy()
    c2.attn_mask[2, 2, r("V"), r("END"), V] = False
    assert not find_loops(c2, scores, templates_for("gen")).found


def test_loop_subcircuit_and_faithfulness():
    scores, planted = planted_scores(noise=0.0)
    lp = find_loops(planted, scores).shortest
    sub = loop_subcircuit(planted, scores, lp)
    assert not (sub - planted).n_edges
    # the Pred head's query side is not on a path through a loop edge
    assert not sub.attn_mask[3, 0, r("A"), r("END"), Q] and sub.attn_mask[3, 0, r("A"), r("END"), V]
    assert sub.n_edges == planted.n_edges - 2
    ev = linear_evaluate(scores)
    m_full, m_empty = ev(*scores.exists().masks()), ev(*Circuit.empty_like(scores).masks())
    res = loop_faithfulness(scores, ev, planted, lp, m_full, m_empty, n_random=3)
    assert res["n_edges"] == sub.n_edges and len(res["random_f"]) == 3
    assert res["f"] == pytest.approx(1 - (0.6 + 0.65) / float(np.nansum(scores.flat())))


def test_share_and_true_false_heads():
    scores, planted = planted_scores()
    found = find_loops(planted, scores)
    c = planted.copy()
    c.attn_mask[0, 2] = False
    none = find_loops(c, scores)
    assert loop_share({"a": found, "b": none, "c": found, "d": none}) == 0.5
    chk = closing_head_check(found, true_heads=[(2, 3), (1, 0)], false_heads=[[3, 0]])
    assert chk["true_close"] == 1 and chk["false_close"] == 0
    assert chk["true"][0] == {"head": [2, 3], "closes_loop": True}
    assert chk["loop_closing_heads"] == [[2, 3]]


def test_templates_are_data():
    table = load_templates()
    assert set(templates_for("any")) == set(table["templates"])
    with pytest.raises(ValueError, match="unknown loop templates"):
        find_loops(*reversed(planted_scores()), templates=["nope"])
    with pytest.raises(ValueError, match="unknown task kind"):
        templates_for("nope")
    # a user table: demand R (absent) and the loop disappears
    custom = {"templates": {"needs_r": {"closing": None, "required": [["R"]], "closed": True}}, "task_kinds": {}}
    scores, planted = planted_scores()
    assert not find_loops(planted, scores, table=custom).found


def _gen_loops_of_both_polarities():
    """A circuit with an affirmative generation loop (V; V->Q->END; closed by 2.2 V->END) whose
    V->Q edge is weak, and a negated open one (K'->V'; Q->END; closed by 2.3 V'->END) with strong
    edges, of the same length: by length and weakest edge alone the negated one is reported."""
    scores = blank_scores()
    s = SHAPE
    c = Circuit.empty_like(scores)
    edges_r = _affirmative_gen_loop_resid() + [
               # the negated loop: 0.1 K'->V' from the embedding, its output at V' read by 2.3's value
               (s.sender("emb"), s.port("k", 0, 0), r("K'")), (s.sender("emb"), s.port("v", 0, 0), r("K'")),
               (s.sender("emb"), s.port("q", 0, 1), r("V'")),
               (s.sender("head", 0, 1), s.port("v", 2, 1), r("V'")),
               (s.sender("head", 1, 1), s.port("q", 2, 3), r("END")),
               (s.sender("head", 2, 3), s.port("logits"), r("END"))]
    weak, strong = 0.1, 5.0
    edges_a = ([((0, 0, r("V"), r("Q"), c_), weak) for c_ in (Q, K, V)]
               + [((1, 1, r("Q"), r("END"), c_), 2 * strong) for c_ in (Q, K, V)]
               + [((2, 2, r("V"), r("END"), c_), strong) for c_ in (Q, V)]
               + [((0, 1, r("K'"), r("V'"), c_), strong) for c_ in (Q, K, V)]
               + [((2, 3, r("V'"), r("END"), c_), strong) for c_ in (Q, V)])
    for i in edges_r:
        c.resid_mask[i] = True
        scores.resid[i] = 1.0
    for i, w in edges_a:
        c.attn_mask[i] = True
        scores.attn[i] = w
    return c, scores


def test_reported_loop_follows_the_rows_polarity():
    c, scores = _gen_loops_of_both_polarities()
    plain = find_loops(c, scores, templates_for("gen"))
    assert {lp.template for lp in plain.loops} == {"gen_affirmative", "gen_negated"}
    a, n = (next(lp for lp in plain.loops if lp.template == t) for t in ("gen_affirmative", "gen_negated"))
    assert a.length == n.length == 3 and a.weakest_edge()["weight"] < n.weakest_edge()["weight"]
    assert plain.shortest.template == "gen_negated"  # polarity unknown: by length, then weakest edge
    # affirmative rows (the gen query swap keeps only those): the affirmative template is reported
    aff = find_loops(c, scores, templates_for("gen"), polarity="affirmative")
    assert aff.shortest.template == "gen_affirmative" and aff.loops[0].template == "gen_affirmative"
    assert aff.to_json()["polarity"] == "affirmative"
    assert aff.to_json()["shortest"]["polarity"] == "affirmative"
    assert find_loops(c, scores, templates_for("gen"), polarity="negated").shortest.template == "gen_negated"
    # with no template of the rows' polarity, a polarity-neutral one beats the other polarity
    table = load_templates()
    custom = {"templates": {"either": {**table["templates"]["gen_affirmative"], "polarity": None},
                            "gen_negated": table["templates"]["gen_negated"]}, "task_kinds": {}}
    assert find_loops(c, scores, table=custom).shortest.template == "gen_negated"
    assert find_loops(c, scores, table=custom, polarity="affirmative").shortest.template == "either"
    with pytest.raises(ValueError, match="unknown polarity"):
        find_loops(c, scores, polarity="maybe")
