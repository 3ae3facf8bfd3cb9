"""interp.heads (``gar heads``): per-record effects against a plain-torch reference, the fused AtP
against interp.patching, the scoring on hand-made effects, record choice, and the CLI (tiny random
Llama folder for outputs and every bad-input path, one short run on the embedded SmolLM2).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gar_tasks.errors import GARConfigError
from interp.core.encode import encode_cls
from interp.core.select import choose_twins, select_slices
from interp.heads import OUTPUTS, head_effects, load_heads, score_heads, top_labelled
from interp.core.model import as_nnsight
from interp.pairs import make_pairs
from interp.patching import attribution_scores
from cli_helpers import assert_error, offline_one_thread, run  # noqa: F401 (autouse fixture)
from tiny_models import tiny_model
from tiny_tokenizers import bpe_tokenizer, gar_records
from torch_reference import reference_effects


@pytest.fixture(scope="module")
def record_set():
    """Twin pairs from three cls slices (2 pairs each), of several token lengths; some twins differ
    in length (no AtP pair), so batches are padded and the AtP skip is exercised."""
    sel = choose_twins(gar_records("paper"), select_slices("gender_city"), 4, 0)
    chosen, ti, tasks = sel.records, sel.task_index, sel.tasks
    rs = encode_cls(chosen, bpe_tokenizer(), ti, tasks)
    assert len(rs) == 12 and len(tasks) == 3
    assert 0 < rs.n_atp_pairs < 6 and len({len(x) for x in rs.ids}) > 3
    return chosen, rs


# ------------------------------------------------------------------------------------------
# the pass against a plain-torch reference


def _close(ours, ref, rtol=1e-3):
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=1e-4 * scale)


@pytest.mark.unit
def test_effects_match_plain_torch_reference(record_set):
    _, rs = record_set
    model = tiny_model("llama", scale=3.0)  # not near-linear: the gradient itself must be right
    ref_e, ref_mean, ref_m, ref_last = reference_effects(model, rs)
    eff = head_effects(as_nnsight(model, bpe_tokenizer()), rs, batch_size=5)  # padded batches of 2 pairs
    assert eff.effects.shape == (12, 2, 4)
    _close(eff.mean, ref_mean)
    _close(eff.metric, ref_m)
    _close(eff.effects, ref_e)
    labels = np.array(rs.labels)
    _close(eff.direction, ref_last[labels].mean(0) - ref_last[~labels].mean(0))
    assert np.abs(eff.effects).max() > 1e-3  # a real signal, not zeros matching zeros


@pytest.mark.unit
def test_fused_atp_matches_attribution_scores(record_set):
    records, rs = record_set
    tok = bpe_tokenizer()
    model = as_nnsight(tiny_model("llama", scale=3.0), tok)
    pairs = make_pairs(records, tok, families=("cls",))
    assert len(pairs) == rs.n_atp_pairs and pairs.counts.get("unequal_length", 0) == 6 - rs.n_atp_pairs
    eff = head_effects(model, rs, batch_size=4)
    _close(eff.atp, attribution_scores(model, pairs, batch_size=3))
    # the AtP terms sit on the Yes twins of equal-length pairs only
    has_term = np.abs(eff.atp_terms).sum((1, 2)) > 0
    assert has_term.sum() == rs.n_atp_pairs
    assert all(rs.labels[i] and rs.twin[i] is not None for i in np.flatnonzero(has_term))


@pytest.mark.unit
def test_batches_keep_twins_together(record_set):
    _, rs = record_set
    for size in (1, 3, 4, 100):
        batches = rs.twin_batches(size)
        assert sorted(i for b in batches for i in b) == list(range(len(rs)))
        for b in batches:
            assert len(b) <= max(size, 2)
            assert all(rs.pair_ids.count(rs.pair_ids[i]) == sum(rs.pair_ids[j] == rs.pair_ids[i] for j in b)
                       for i in b)
    with pytest.raises(GARConfigError, match="at least 1"):
        rs.twin_batches(0)


# ------------------------------------------------------------------------------------------
# scoring on hand-made effects


def _synthetic():
    """3 tasks x 4 records (2 Yes, 2 No), 2 layers x 3 heads, each head built to be one case."""
    n_tasks, per = 3, 4
    labels = np.array([True, True, False, False] * n_tasks)
    task = np.repeat(np.arange(n_tasks), per)
    e = np.zeros((len(labels), 2, 3))
    e[labels, 0, 0] = 1.0                      # True head: pushes Yes on true, nothing on false
    e[~labels, 0, 1] = -1.0                    # False head: pushes No on false
    e[:, 0, 2] = 1.0                           # plain Yes bias: the same push on both labels
    e[labels & (task < 2), 1, 0] = 0.5         # True in 2 of 3 tasks only
    e[labels & (task == 2), 1, 0] = -0.1
    e[labels, 1, 1], e[~labels, 1, 1] = 2.0, -1.0  # tracks truth both ways, stronger on Yes
    e[:, 1, 2] = np.linspace(-1, 1, len(labels)) * 1e-3 * np.where(labels, 1, -1)  # tiny noise
    return e, labels, task


@pytest.mark.unit
def test_score_heads_finds_planted_heads():
    e, labels, task = _synthetic()
    s = score_heads(e, labels, task, 3, min_consistency=0.75)
    assert s["kind"].tolist() == [["true", "false", "none"], ["none", "true", "none"]]
    np.testing.assert_allclose(s["consistency_true"][1, 0], 2 / 3)
    np.testing.assert_allclose(s["score_true"][0, 0], 1.0)
    np.testing.assert_allclose(s["score_false"][0, 1], 1.0)
    np.testing.assert_allclose(s["score_true"][0, 2], 0.0)  # a Yes bias has no label-specific score
    np.testing.assert_allclose(s["opposite_true"][0, 2], 1.0)
    np.testing.assert_allclose([s["consistency_true"][0, 2], s["specific_true"][0, 2]], [1.0, 0.0])
    np.testing.assert_allclose(s["specific_true"][1, 0], 2 / 3)
    np.testing.assert_allclose([s["score_true"][1, 1], s["score_false"][1, 1]], [2.0, 1.0])
    assert not s["is_false"][1, 1] and s["is_true"][1, 1]  # one kind only
    assert not (s["is_true"] & s["is_false"]).any()
    assert np.isnan(s["d_true"][0, 0])  # zero spread: no standardized effect
    assert top_labelled(s, "true", 10) == [(1, 1), (0, 0)] and top_labelled(s, "true", 1) == [(1, 1)]
    assert top_labelled(s, "false", 10) == [(0, 1)]
    # a laxer threshold admits the head that holds in 2 of 3 tasks; labels as strings work too
    lax = score_heads(e, np.where(labels, "Yes", "No"), task, 3, min_consistency=0.6)
    assert lax["kind"][1, 0] == "true"


@pytest.mark.unit
def test_score_heads_task_without_a_label_and_bad_input():
    e, labels, task = _synthetic()
    keep = ~((task == 2) & ~labels)  # task 2 has no gold-No records
    s = score_heads(e[keep], labels[keep], task[keep], 3)
    assert np.isnan(s["F"][2]).all() and not np.isnan(s["Y"][2]).any()
    np.testing.assert_allclose(s["consistency_false"][0, 1], 1.0)  # over the 2 tasks that have No records
    with pytest.raises(GARConfigError, match="records, layers, heads"):
        score_heads(e[:, 0], labels, task)
    with pytest.raises(GARConfigError, match="labels"):
        score_heads(e, labels[:-1], task)
    with pytest.raises(GARConfigError, match="min_consistency"):
        score_heads(e, labels, task, min_consistency=1.5)


@pytest.mark.unit
def test_choose_records_balanced_and_seeded():
    recs = gar_records("paper")
    slices = select_slices("gender_city,gender_kind,gender_usage")
    sel = choose_twins(recs, slices, 6, 0)
    chosen, ti, tasks = sel.records, sel.task_index, sel.tasks
    assert len(tasks) == 8 and all(t.startswith("cls_nr") for t in tasks)  # gender_usage has no nr0 slice
    assert len(chosen) == 6 * 8 and all(r.family == "cls" for r in chosen)
    for k in range(len(tasks)):
        labs = [str(r.label) for r, t in zip(chosen, ti) if t == k]
        assert labs.count("Yes") == labs.count("No") == 3
    assert [r.id for r in choose_twins(recs, slices, 6, 0).records] == [r.id for r in chosen]
    assert [r.id for r in choose_twins(recs, slices, 6, 1).records] != [r.id for r in chosen]
    odd = choose_twins(recs, select_slices("gar_cls_nr1_gender_city"), 5, 0).records
    assert len(odd) == 5 and sum(str(r.label) == "Yes" for r in odd) == 3
    with pytest.raises(GARConfigError, match="--n"):
        choose_twins(recs, slices, 0, 0)


# ------------------------------------------------------------------------------------------
# the command


def files(d):
    """The folder's files but its manifest (``.gar_manifest.json``)."""
    return sorted(p.name for p in d.iterdir() if p.name != ".gar_manifest.json") if d.exists() else []


def _check_outputs(out, n_layers, n_heads, head_dim, n_records):
    assert files(out) == sorted(OUTPUTS)
    info = json.loads((out / "heads.json").read_text())  # strict JSON: no NaN
    json.loads((out / "heads.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert info["counts"]["records"] == n_records
    assert len(info["heads"]) == n_layers * n_heads and [d["rank"] for d in info["heads"]][:3] == [1, 2, 3]
    true_heads, false_heads, dirs = load_heads(out)
    assert true_heads == [tuple(h) for h in info["true_heads"]] and false_heads == [tuple(h) for h in info["false_heads"]]
    assert true_heads or false_heads
    assert not set(true_heads) & set(false_heads)
    assert load_heads(out / "heads.json")[0] == true_heads
    assert dirs["direction"].shape == dirs["mean"].shape == (n_layers, n_heads, head_dim)
    assert dirs["effects"].shape == (n_records, n_layers, n_heads)
    assert dirs["labels"].shape == dirs["task_index"].shape == (n_records,)
    for k in ("direction", "mean", "effects", "atp"):
        assert np.isfinite(dirs[k]).all(), k
    kinds = {d["kind"] for d in info["heads"]}
    assert kinds <= {"true", "false", "none"}
    for d in info["heads"]:
        if d["kind"] != "none":
            assert d[f"consistency_{d['kind']}"] >= info["settings"]["min_consistency"]
            assert d[f"score_{d['kind']}"] > 0
    md = (out / "summary.md").read_text()
    assert info["command"] in md and "## Top True heads" in md and "Spearman" in md
    assert (out / "heads.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return info


@pytest.mark.integration
def test_cli_tiny(tmp_path, tiny_dir, capsys):
    out = tmp_path / "heads"
    argv = ["heads", "--model", tiny_dir, "--tasks", "gender_city", "--n", 4, "--batch-size", 4,
            "--min-consistency", 0.5, "--top", 3, "-q", "--out", out]
    rc, o, e = run(capsys, *argv)
    assert rc == 0, e
    info = _check_outputs(out, 2, 4, 8, 12)
    assert info["tasks"] == ["cls_nr0_gender_city", "cls_nr1_gender_city", "cls_nr2_gender_city"]
    assert len(info["true_heads"]) <= 3 and len(info["heads"][0]["effects_true_per_task"]) == 3
    assert "True heads:" in o and "AtP top-3 overlap" in o
    # a previous output folder may be overwritten; the same arguments give the same numbers
    rc, _, e = run(capsys, *argv)
    assert rc == 0, e
    again = json.loads((out / "heads.json").read_text())
    assert again["heads"] == info["heads"]


@pytest.mark.integration
@pytest.mark.parametrize("argv,needles", [
    (["--tasks", "cls_nr9"], ["unknown task selector 'cls_nr9'"]),
    (["--tasks", "gen"], ["selects no cls task"]),
    (["--n", "0"], ["--n must be at least 1"]),
    (["--min-consistency", "1.5"], ["--min-consistency must be between 0 and 1"]),
    (["--top", "0"], ["--top must be at least 1"]),
])
def test_bad_input(tmp_path, tiny_dir, capsys, argv, needles):
    out = tmp_path / "out"
    assert_error(*run(capsys, "heads", "--model", tiny_dir, *argv, "--out", out), *needles)
    assert not out.exists()


@pytest.mark.integration
def test_bad_out_dtype_and_model(tmp_path, tiny_dir, capsys):
    from transformers import BertConfig

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert_error(*run(capsys, "heads", "--model", tiny_dir, "--out", busy), "not a previous gar heads output",
                 "notes.txt")
    assert files(busy) == ["notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_error(*run(capsys, "heads", "--model", tiny_dir, "--out", afile), "is not a folder")
    out = tmp_path / "out"
    rc, _, err = run(capsys, "heads", "--model", tiny_dir, "--dtype", "float8", "--out", out)
    assert rc == 2 and "invalid choice" in err and not out.exists()
    assert_error(*run(capsys, "heads", "--model", tiny_dir, "--device", "gpu0", "--out", out), "device must be")
    bert = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(bert)
    assert_error(*run(capsys, "heads", "--model", bert, "--out", out), "unsupported architecture 'bert'")
    assert_error(*run(capsys, "heads", "--model", "no/such-model-here", "--out", out), "cannot load the config")
    assert_error(*run(capsys, "heads", "--model", tmp_path / "missing", "--out", out), "neither a local model folder")
    assert not out.exists()
    with pytest.raises(GARConfigError, match="no gar heads output"):
        load_heads(tmp_path / "nothing")


@pytest.mark.e2e
def test_smollm2_cli(tmp_path, capsys):
    """The embedded SmolLM2 on two cls tasks, 4 records each, bf16: every output, finite numbers."""
    out = tmp_path / "smol"
    rc, _, e = run(capsys, "heads", "--model", "smollm2", "--tasks", "gar_cls_nr1_gender_city,gar_cls_nr2_gender_kind",
                   "--n", 4, "--dtype", "bfloat16", "-q", "--out", out)
    assert rc == 0, e
    info = _check_outputs(out, 30, 9, 64, 8)
    assert info["counts"]["tasks"] == 2 and info["counts"]["yes"] == info["counts"]["no"] == 4
    assert all(math.isfinite(p["mean_metric_yes"]) for p in info["counts"]["per_task"])
    assert info["versions"]["torch"] and info["settings"]["dtype"] == "bfloat16"
