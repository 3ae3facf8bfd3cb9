"""The graph side's output folders (what `gar circuit` / `gar circuit-overlap` write), on planted scores."""

from __future__ import annotations

import json

import pytest

from circuit_synth import linear_evaluate, planted_scores
from interp.circuit.graph import Circuit, EdgeScores, load_graph_json
from interp.circuit.outputs import circuit_size, write_circuit_outputs, write_overlap_outputs

pytestmark = pytest.mark.unit


def _baselines(scores):
    ev = linear_evaluate(scores)
    return ev, ev(*scores.exists().masks()), ev(*Circuit.empty_like(scores).masks())


def test_circuit_folder(tmp_path):
    scores, planted = planted_scores()
    ev, full, empty = _baselines(scores)
    res = write_circuit_outputs(tmp_path / "run", scores, n=planted.n_edges, evaluate=ev, m_full=full, m_empty=empty,
                                percentages=[1, 10, 100], n_random=2, task_kind="cls", true_heads=[(2, 3)],
                                false_heads=[(1, 0)], title="cls planted")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"scores.npz", "graph.json", "circuit.dot", "loop.json", "faithfulness.json", "summary.md",
                     "circuit.png", "loop.png", "faithfulness.png"}
    assert res["n_edges"] == planted.n_edges and res["loop_found"] and res["classes"]["Rel2"] == 1
    circuit, _, _ = load_graph_json(tmp_path / "run" / "graph.json")
    assert circuit == planted
    loop = json.loads((tmp_path / "run" / "loop.json").read_text())
    assert loop["found"] and loop["true_false_heads"]["true_close"] == 1
    assert loop["loop_faithfulness"]["n_edges"] > 0
    faith = json.loads((tmp_path / "run" / "faithfulness.json").read_text())
    assert faith["percentages"] == [1, 10, 100] and faith["cpr"] == pytest.approx(res["cpr"])
    assert EdgeScores.load(tmp_path / "run" / "scores.npz").roles == scores.roles
    assert "closed loop [cls_true]" in (tmp_path / "run" / "summary.md").read_text()


def test_circuit_folder_without_evaluate_and_bad_sizes(tmp_path):
    scores, planted = planted_scores()
    res = write_circuit_outputs(tmp_path / "bare", scores, percent=1)
    assert res["cpr"] is None and not (tmp_path / "bare" / "faithfulness.json").exists()
    assert circuit_size(scores) == circuit_size(scores, percent=1) == int(0.01 * scores.n_edges())
    with pytest.raises(ValueError, match="not both"):
        circuit_size(scores, n=3, percent=1)
    with pytest.raises(ValueError, match="m\\(full\\)"):
        write_circuit_outputs(tmp_path / "x", scores, n=5, evaluate=linear_evaluate(scores))
    assert not (tmp_path / "x").exists()  # nothing written on bad input


def test_overlap_folder(tmp_path):
    tasks = {f"t{i}": planted_scores(seed=i)[0] for i in range(3)}
    n = planted_scores()[1].n_edges
    evaluators = {k: _baselines(s) for k, s in tasks.items()}
    res = write_overlap_outputs(tmp_path / "ov", tasks, n=n, halves={"t0": (planted_scores(seed=7)[0],
                                                                             planted_scores(seed=8)[0])},
                                evaluators=evaluators, task_kind="cls", n_random=2)
    names = {p.name for p in (tmp_path / "ov").iterdir()}
    assert names == {"overlap.json", "core_graph.json", "transfer.png", "overlap_edges.png", "overlap_nodes.png",
                     "overlap_heads.png"}
    rep = json.loads((tmp_path / "ov" / "overlap.json").read_text())
    assert rep["overlap"]["edges"]["jaccard"][0][1] == 1.0  # the same planted circuit in every task
    assert rep["loop_share"] == 1.0 and rep["core"]["n_edges"] == n and rep["core"]["loop"]
    assert rep["split_half"]["t0"]["edges"]["jaccard"] == 1.0
    assert rep["random_floor"]["edges"]["mean"] < 0.5
    assert rep["transfer"]["f"][0][1] == pytest.approx(rep["transfer"]["f"][1][1], rel=1e-3)
    assert all(v["beats_all_random"] for v in rep["core"]["vs_random"].values())
    with pytest.raises(ValueError, match="at least two"):
        write_overlap_outputs(tmp_path / "one", {"t0": tasks["t0"]}, n=n)
