"""Head classes by role pattern on planted circuits."""

from __future__ import annotations

from circuit_synth import ROLES, SHAPE, blank_scores, planted_scores
from interp.circuit.classes import class_counts, class_groups, classify_heads, load_class_table
from interp.circuit.graph import Circuit
import pytest

pytestmark = pytest.mark.unit

r = ROLES.index


def test_classification_circuit_reads_like_the_figure():
    scores, planted = planted_scores()
    labels = {lb.node: lb for lb in classify_heads(planted, scores)}
    assert labels["0.1 K->V"].label == "Loc" and labels["0.2 K->Q"].label == "Rel"
    assert labels["1.0 V->A"].label == "Rel" and labels["1.0 V->A"].order == 1  # fed by a Loc head only
    assert labels["2.3 Q->A"].label == "Rel2" and labels["2.3 Q->A"].order == 2  # the True-head motif
    assert labels["3.0 A->END"].label == "Pred"  # writes to the logits directly
    groups = class_groups(list(labels.values()))
    assert groups[0]["text"] == "Rel.² / Q->A / 2.3"
    assert class_counts(list(labels.values())) == {"Loc": 1, "Pred": 1, "Rel": 2, "Rel2": 1}


def _gen_circuit(with_ppred: bool):
    s = SHAPE
    scores = blank_scores()
    c = Circuit.empty_like(scores)
    res = [(s.sender("emb"), s.port("k", 0, 0), r("V")), (s.sender("emb"), s.port("q", 0, 0), r("Q")),
           (s.sender("head", 0, 0), s.port("k", 1, 0), r("Q")), (s.sender("emb"), s.port("q", 1, 1), r("END")),
           (s.sender("head", 1, 1), s.port("q", 3, 2), r("END")), (s.sender("emb"), s.port("v", 3, 1), r("V")),
           (s.sender("head", 3, 2), s.port("logits"), r("END"))]
    att = [(0, 0, r("V"), r("Q"), 1), (0, 0, r("V"), r("Q"), 0), (1, 1, r("Q"), r("END"), 1),
           (1, 1, r("Q"), r("END"), 0), (3, 2, r("V"), r("END"), 0), (3, 2, r("V"), r("END"), 2)]
    if with_ppred:  # 2.0 V->END feeds the Pred head's query at END through the MLP of layer 2 at END
        res += [(s.sender("emb"), s.port("v", 2, 0), r("V")), (s.sender("emb"), s.port("q", 2, 0), r("END")),
                (s.sender("head", 2, 0), s.port("mlp", 2), r("END")),
                (s.sender("mlp", 2), s.port("q", 3, 2), r("END"))]
        att += [(2, 0, r("V"), r("END"), 2), (2, 0, r("V"), r("END"), 0)]
    for i in res:
        c.resid_mask[i] = True
        scores.resid[i] = 1.0
    for i in att:
        c.attn_mask[i] = True
        scores.attn[i] = 1.0
    return scores, c


def test_generation_classes_induction_higher_order_and_prepredicting():
    scores, c = _gen_circuit(with_ppred=True)
    labels = {lb.node: lb.label for lb in classify_heads(c, scores)}
    assert labels == {"0.0 V->Q": "Ind", "1.1 Q->END": "Loc2", "2.0 V->END": "PPred", "3.2 V->END": "Pred"}


def test_user_table_replaces_the_patterns():
    scores, planted = planted_scores()
    table = load_class_table()
    table["patterns"] = [{"src": "K", "dst": "V", "class": "Custom"}]
    labels = {lb.node: lb.label for lb in classify_heads(planted, scores, table)}
    assert labels["0.1 K->V"] == "Custom"
    assert labels["1.0 V->A"] == "Rel"  # fallback: V and A are in different item groups
    assert labels["2.3 Q->A"] == "Loc2"  # Q and A: one item group; fed by the Rel head 1.0
    assert labels["3.0 A->END"] == "Rel2"  # no predicting pattern left; fed by a higher-order head
