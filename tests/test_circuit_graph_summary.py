"""summary.md reads like the figure: classes, loop verdict, faithfulness table."""

from __future__ import annotations

from circuit_synth import linear_evaluate, planted_scores
from interp.circuit.classes import classify_heads
from interp.circuit.faithfulness import faithfulness_curve
from interp.circuit.graph import Circuit
from interp.circuit.loop import closing_head_check, find_loops, loop_faithfulness
from interp.circuit.summary import summary_md, write_summary
import pytest

pytestmark = pytest.mark.unit


def test_summary_of_the_planted_circuit(tmp_path):
    scores, planted = planted_scores()
    scores.meta = {"counterfactual": "pair", "first_diff_role": "A"}
    ev = linear_evaluate(scores)
    full, empty = ev(*scores.exists().masks()), ev(*Circuit.empty_like(scores).masks())
    loops = find_loops(planted, scores)
    faith = faithfulness_curve(scores, ev, full, empty, percentages=[1, 10, 100], n_random=2)
    md = summary_md(scores, planted, classify_heads(planted, scores), loops, faith,
                    loop_faithfulness(scores, ev, planted, loops.shortest, full, empty, n_random=2),
                    closing_head_check(loops, [(2, 3)], [(1, 0)]), title="cls planted")
    assert md.startswith("# cls planted\n")
    assert "- first_diff_role: A" in md
    assert "| 2.3 Q->A | Rel.² | 4.65 | 4.65 |" in md and "| 0.2 K->Q | Rel. | 0.05 | 2.85 |" in md and "- Rel.² / Q->A / 2.3" in md
    assert "closed loop [cls_true]: key K->Q, query K->V->A, closed by Q->A (2.3)" in md
    assert "| Q->A | closing | 2.3 |" in md and "Weakest edge: K->Q" in md
    assert "True heads closing a Q->A loop: 1/1; False heads: 0/1." in md
    assert "| 100 | " in md and f"CPR = {faith.cpr:.3f}" in md
    c = planted.copy()
    c.attn_mask[0, 2] = False
    bare = summary_md(scores, c, loops=find_loops(c, scores))
    assert "No relational loop found" in bare and "Faithfulness not computed." in bare
    assert write_summary(tmp_path / "summary.md", scores, planted).read_text().startswith("# Circuit")
