"""``gar circuit`` and ``gar circuit-overlap`` end to end on a tiny random Llama folder.

Every output is written; a rerun resumes from the per-batch EAP checkpoint and the saved exact
evaluations (identical scores, nothing recomputed); ``--restart`` recomputes; bad input exits 2
with one line and writes nothing; the overlap command reads two runs (transfer with ``--model``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import interp.circuit.counterfactual as counterfactual
import interp.circuit.eap as eap
from cli_helpers import assert_error, offline_one_thread, run  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.integration

TASK = "gar_gen_nr0_gender_city"
FILES = ["circuit.dot", "circuit.json", "circuit.png", "faithfulness.json", "faithfulness.png", "graph.json",
         "loop.json", "loop.png", "scores.npz", "scores_half1.npz", "scores_half2.npz", "spot.json", "summary.md"]


def outputs(d):
    """The folder's files but its manifest (``.gar_manifest.json``)."""
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.name != ".gar_manifest.json") if d.exists() else []


def circuit(capsys, tiny_dir, out, *extra):
    return run(capsys, "circuit", "--model", tiny_dir, "--tasks", TASK, "--n", 6, "--batch-size", 2, "--random", 2,
               "--spot", 2, "-q", *extra, "--out", out)


def count_eap(monkeypatch):
    calls = {"n": 0}
    real = eap.attribution_batch

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(eap, "attribution_batch", counting)
    return calls


def test_outputs_resume_restart(tmp_path, tiny_dir, capsys, monkeypatch):
    out = tmp_path / "run"
    calls = count_eap(monkeypatch)
    rc, o, e = circuit(capsys, tiny_dir, out, "--curve", "1", "10", "100")
    assert rc == 0, e
    assert calls["n"] == 3  # 6 rows in batches of 2
    assert outputs(out) == FILES
    info = json.loads((out / "circuit.json").read_text())
    assert info["rows"] == 6 and info["batches"] == {"eap_batches": 3, "eap_batches_loaded": 0}
    assert sorted(info["written_by"]["files"]) == FILES
    listed = json.loads((out / ".gar_manifest.json").read_text())
    assert listed["command"] == "circuit" and listed["args"]["tasks"] == TASK
    assert sorted(f for f in listed["files"] if "/" not in f) == FILES
    assert sorted(f for f in listed["files"] if "/" in f) == sorted(
        f"checkpoint/{p.name}" for p in (out / "checkpoint").iterdir())
    assert info["meta"]["first_differing_role"] == "Q" and "K" in info["meta"]["unreachable_roles"]
    faith = json.loads((out / "faithfulness.json").read_text())
    assert faith["percentages"] == [1.0, 10.0, 100.0] and len(faith["random_f"][0]) == 2
    assert faith["f"][-1] == pytest.approx(1.0, abs=1e-6)  # every edge kept: the clean metric
    assert info["m_full"] != info["m_empty"]
    spot = json.loads((out / "spot.json").read_text())
    assert len(spot["exact"]) == 4 and np.isfinite(spot["stats"]["all"]["pearson"])
    assert "unreachable_roles" in (out / "summary.md").read_text()
    # the query swap keeps affirmative rows only: the loop verdict is for that polarity
    assert json.loads((out / "loop.json").read_text())["polarity"] == "affirmative"
    z = np.load(out / "scores.npz")
    resid, attn = z["resid"], z["attn"]
    h1, h2 = np.load(out / "scores_half1.npz"), np.load(out / "scores_half2.npz")
    # the halves' rows (2 batches of 2 and 1 of 2) average to the whole run's scores
    np.testing.assert_allclose(np.nan_to_num((2 * h1["resid"] + h2["resid"]) / 3), np.nan_to_num(resid),
                               rtol=1e-4, atol=1e-6)
    n_evals = info["evaluations"]["computed"]
    assert n_evals >= 2 + 3 * 3

    # rerun: every batch and evaluation loaded, identical scores
    calls["n"] = 0
    rc, o, e = circuit(capsys, tiny_dir, out, "--curve", "1", "10", "100")
    assert rc == 0, e
    info2 = json.loads((out / "circuit.json").read_text())
    assert calls["n"] == 0 and info2["resumed"]
    assert info2["batches"] == {"eap_batches": 0, "eap_batches_loaded": 3}
    assert info2["evaluations"] == {"computed": 0, "loaded": n_evals}
    z2 = np.load(out / "scores.npz")
    np.testing.assert_array_equal(z2["resid"], resid)
    np.testing.assert_array_equal(z2["attn"], attn)
    assert json.loads((out / "faithfulness.json").read_text())["f"] == faith["f"]

    # an interrupted run: one batch file gone -> only that batch is recomputed
    (out / "checkpoint" / "eap_pair_00001.npz").unlink()
    rc, o, e = circuit(capsys, tiny_dir, out, "--curve", "1", "10", "100")
    assert rc == 0 and calls["n"] == 1
    np.testing.assert_allclose(np.load(out / "scores.npz")["resid"], resid, rtol=1e-6)

    # a damaged evaluation memo: the library says what is wrong, the command how to discard it
    from interp.circuit.run import Evaluator, StaleCheckpoint

    (out / "checkpoint" / "evals.json").write_text("[1, 2")
    with pytest.raises(StaleCheckpoint, match="cannot read the checkpoint file") as err:
        Evaluator(None, out / "checkpoint" / "evals.json")
    assert "--" not in str(err.value)
    assert_error(*circuit(capsys, tiny_dir, out, "--curve", "1", "10", "100"), "evals.json", "--restart")

    # other arguments: refused without --restart, recomputed with it
    assert_error(*circuit(capsys, tiny_dir, out, "--ig-steps", "2"), "checkpoint")
    calls["n"] = 0
    rc, o, e = circuit(capsys, tiny_dir, out, "--restart", "--size", "20")
    assert rc == 0, e
    info3 = json.loads((out / "circuit.json").read_text())
    assert calls["n"] == 3 and not info3["resumed"] and info3["evaluations"]["loaded"] == 0
    assert info3["circuit"]["n_edges"] <= 20


def test_mean_ablation_and_overlap(tmp_path, tiny_dir, capsys):
    pair, mean = tmp_path / "pair", tmp_path / "mean"
    assert circuit(capsys, tiny_dir, pair, "--spot", "0")[0] == 0
    rc, o, e = circuit(capsys, tiny_dir, mean, "--counterfactual", "mean", "--spot", "0")
    assert rc == 0, e
    info = json.loads((mean / "circuit.json").read_text())
    assert "role-mean" in info["meta"]["corruption"] and "first_differing_role" not in info["meta"]
    assert set(outputs(mean)) == set(FILES) - {"spot.json"}
    # ablating every role: senders before the query now score too
    z = np.load(mean / "scores.npz")
    k = list(z["roles"]).index("K")
    assert np.nanmax(np.abs(z["resid"][:, :, k])) > 0

    ov = tmp_path / "ov"
    rc, o, e = run(capsys, "circuit-overlap", pair, mean, "-q", "--out", ov)
    assert rc == 0, e
    assert outputs(ov) == ["core_graph.json", "overlap.json", "overlap_edges.png", "overlap_heads.png",
                           "overlap_nodes.png"]
    rep = json.loads((ov / "overlap.json").read_text())
    assert rep["tasks"] == ["pair", "mean"] and "transfer_skipped" in rep and set(rep["split_half"]) == {"pair", "mean"}
    j = np.array(rep["overlap"]["edges"]["jaccard"])
    assert j.shape == (2, 2) and np.allclose(np.diag(j), 1)

    ov2 = tmp_path / "ov2"
    rc, o, e = run(capsys, "circuit-overlap", pair, mean, "--model", tiny_dir, "-q", "--out", ov2)
    assert rc == 0, e
    rep2 = json.loads((ov2 / "overlap.json").read_text())
    assert "transfer.png" in outputs(ov2) and "transfer_skipped" not in rep2
    f = np.array(rep2["transfer"]["f"])
    own = [json.loads((d / "faithfulness.json").read_text())["f"][0] for d in (pair, mean)]
    np.testing.assert_allclose(np.diag(f), own, atol=1e-6)  # each circuit on its own task: its own f


def test_bad_input(tmp_path, tiny_dir, capsys, monkeypatch):
    from transformers import BertConfig

    out = tmp_path / "out"
    bert = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(bert)
    assert_error(*run(capsys, "circuit", "--model", bert, "--tasks", TASK, "--out", out),
                 "unsupported architecture 'bert'")
    bad_schema = tmp_path / "schema.json"
    from interp.circuit.roles import SCHEMA_DIR

    d = json.loads((SCHEMA_DIR / "default.json").read_text())
    d["test"][next(iter(d["test"]))] = "Zeta"  # a span mapped to a role the schema does not list
    bad_schema.write_text(json.dumps(d))
    assert_error(*circuit(capsys, tiny_dir, out, "--schema", bad_schema), "Zeta")
    assert_error(*circuit(capsys, tiny_dir, out, "--size", "0%"), "circuit size")
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    assert_error(*run(capsys, "circuit", "--model", "some-org/some-model", "--tasks", TASK, "--remote",
                      "--out", out), "NDIF_API_KEY")

    real = counterfactual.make_counterfactuals
    monkeypatch.setattr(counterfactual, "make_counterfactuals", lambda records, *a, **k: real([], *a, **k))
    assert_error(*circuit(capsys, tiny_dir, out), "leaves no pair")
    assert not out.exists()
    assert_error(*run(capsys, "circuit-overlap", tmp_path, tmp_path, "--out", out), "no scores.npz")
    assert not out.exists()


def test_context_counterfactual_end_to_end(tmp_path, tiny_dir, capsys):
    """``--counterfactual context`` (the test row's true value swapped with another column's):
    every output written, the rejected candidates counted in circuit.json, the first differing
    role a value (in summary.md too), and edges at the query (after it) scored."""
    out = tmp_path / "context"
    rc, o, e = circuit(capsys, tiny_dir, out, "--counterfactual", "context", "--curve", "1", "100")
    assert rc == 0, e
    assert outputs(out) == FILES
    info = json.loads((out / "circuit.json").read_text())
    counts, rejected = info["counts"], info["rejected"]
    assert counts["kept"] >= info["rows"] == 6
    assert rejected and all(v > 0 for v in rejected.values())
    assert counts["candidates"] == counts["kept"] + sum(rejected.values())
    assert info["args"]["counterfactual"] == "context"
    assert info["meta"]["first_differing_role"] in ("V", "V'")
    unreachable = [r.strip() for r in info["meta"]["unreachable_roles"].split(",")]
    # unlike the query swap (K, V, K', V' unreachable), the value swap reaches the context roles
    assert not {"Q", "K", "V", "K'", "V'"} & set(unreachable)
    z = np.load(out / "scores.npz")
    q = list(z["roles"]).index("Q")
    assert np.nanmax(np.abs(z["resid"][:, :, q])) > 0
    faith = json.loads((out / "faithfulness.json").read_text())
    assert faith["f"][-1] == pytest.approx(1.0, abs=1e-6) and info["m_full"] != info["m_empty"]
    summary = (out / "summary.md").read_text()
    assert f"- first_differing_role: {info['meta']['first_differing_role']}" in summary


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3", "phi3",
                                  "olmo2", "gpt2", "gpt_neox"])
def test_every_architecture_end_to_end(tmp_path, capsys, arch):
    """``gar circuit`` on a tiny random folder of every other type of the architecture table (the
    Llama one is above): every output written, the full circuit exactly faithful, the scores laid
    out for that model's shape with NaN exactly where its architecture has no edge."""
    from tiny_models import tiny_model
    from tiny_tokenizers import bpe_tokenizer

    folder = tmp_path / arch
    tiny_model(arch).save_pretrained(folder)
    bpe_tokenizer().save_pretrained(folder)
    capsys.readouterr()  # transformers' "Writing model shards" progress bar is the test's, not the command's
    out = tmp_path / "out"
    rc, o, e = circuit(capsys, folder, out, "--curve", "1", "100")
    assert rc == 0, e
    assert outputs(out) == FILES
    f = json.loads((out / "faithfulness.json").read_text())
    assert f["percentages"][-1] == 100.0 and f["f"][-1] == pytest.approx(1.0, abs=1e-6)
    from interp.circuit.ports import circuit_shape

    shape = circuit_shape(tiny_model(arch))
    z = np.load(out / "scores.npz")
    assert z["resid"].shape[:2] == (shape.n_senders, shape.n_ports)
    assert z["attn"].shape[:2] == (shape.n_layers, shape.n_heads)
    scored = ~np.isnan(z["resid"]).all(axis=2)
    assert not (scored & ~shape.edge_exists()).any() and scored[:, :-1].sum() > 0.5 * shape.edge_exists().sum()
    spot = json.loads((out / "spot.json").read_text())
    assert len(spot["exact"]) == 4 and np.isfinite(spot["exact"]).all()
