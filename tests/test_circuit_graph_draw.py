"""The circuit pictures are written as non-empty PNG files (content checked by eye, see the report)."""

from __future__ import annotations

from circuit_synth import linear_evaluate, planted_scores
from interp.circuit.classes import classify_heads
from interp.circuit.draw import draw_circuit, draw_faithfulness, draw_overlap, draw_role_loop
from interp.circuit.extract import topn
from interp.circuit.faithfulness import faithfulness_curve
from interp.circuit.graph import Circuit
from interp.circuit.loop import find_loops
import pytest

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 5000


def test_pictures_are_written(tmp_path):
    scores, planted = planted_scores()
    labels = classify_heads(planted, scores)
    assert _is_png(draw_circuit(planted, scores, tmp_path / "circuit.png", "planted", labels=labels))
    big = topn(scores, 400)  # more head nodes than drawn: the strongest are kept
    assert _is_png(draw_circuit(big, scores, tmp_path / "big.png", max_heads=12))
    loop = find_loops(planted, scores).shortest
    assert _is_png(draw_role_loop(planted, scores, loop, tmp_path / "loop.png", "planted"))
    assert _is_png(draw_role_loop(Circuit.empty_like(scores), scores, None, tmp_path / "noloop.png"))
    ev = linear_evaluate(scores)
    curve = faithfulness_curve(scores, ev, ev(*scores.exists().masks()), ev(*Circuit.empty_like(scores).masks()),
                               percentages=[1, 10, 100], n_random=2)
    assert _is_png(draw_faithfulness({"patching": curve, "mean": curve}, tmp_path / "faith.png", "t"))
    assert _is_png(draw_overlap([[1.0, 0.4], [0.4, 1.0]], ["a", "b"], tmp_path / "overlap.png", "edges"))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
