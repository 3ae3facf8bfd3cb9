"""Compiled GAR models with a known circuit (``interp.circuit.groundtruth``) and ``gar circuit --truth``.

The fixtures (sharp and soft attention; gqa: sharp with one key/value group shared by both heads
of a layer; cls: the Yes/No twins of a classification slice, 3 layers; negation: both
polarities of it, the answer an MLP's XOR) solve their rows and their true circuits are exactly
faithful under the package's own patcher; the scoring is right on a ranking made by hand, and
``gar circuit --truth`` writes the scores. The default attribution (the residual edges into
queries, keys and values exact through the attention norm and the head, q and k through its
softmax; the attention q/k edges through the softmax; the logits edges through the final norm)
recovers every fixture's circuit under both counterfactuals: every true edge in the top
2 |truth|, the top-|truth| circuit faithful, no zero-effect edge above a true one; plain
first-order EAP does not (it scores the query path into saturated retrieval heads ~0, and an
edge whose only effect is through a norm linearised at a one-hot stream above true ones), which
keeps the fixtures able to tell them apart.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from circuit_synth import blank_scores, linear_evaluate
from cli_helpers import assert_error, offline_one_thread, run  # noqa: F401 (autouse fixture)
from interp.circuit import groundtruth as gt
from interp.circuit.faithfulness import faithfulness
from interp.circuit.graph import EdgeScores, ModelShape

SPEC = gt.SPECS["sharp"]


@pytest.fixture(scope="module")
def built():
    """fixture name -> (model float64, tokenizer, the rows it solves, every record of its slice).

    gen fixtures: the slice's affirmative records but those with an item shared with the
    demonstration row (see ``collides``); cls: every affirmative record (its retrieval matches
    both items of a pair, so a shared item is only a half match); negation: every record, both
    polarities."""
    slices, cache = {}, {}

    def get(name):
        if name not in cache:
            spec = gt.SPECS[name]
            records = slices.setdefault((spec.config, spec.tasks), gt.slice_records(spec))
            model, tok = gt.build_model(spec, records)
            rows = [r for r in records if spec.family == "neg"
                    or not r.negate and (spec.family == "cls" or not collides(r))]
            cache[name] = (model, tok, rows, records)
        return cache[name]

    return get


def collides(record) -> bool:
    """An item of the test row also stands in a demonstration row: when the clean or swapped query
    is that item, the retrieval heads cannot tell the two rows apart (they split their attention)."""
    test = set(record.rows[-1].keys + record.rows[-1].values)
    return any(test & set(row.keys + row.values) for row in record.rows[:-1])


def graph_of(name: str, roles) -> EdgeScores:
    """Zero scores over the fixture's circuit graph (its layers, heads, k/v groups) with ``roles``."""
    spec = gt.SPECS[name]
    shape = ModelShape(spec.n_layers, spec.n_heads, spec.n_kv_heads)
    R = len(roles)
    return EdgeScores(np.zeros((shape.n_senders, shape.n_ports, R)), np.zeros((spec.n_layers, spec.n_heads, R, R, 3)),
                      list(roles), shape)


@pytest.mark.integration
@pytest.mark.parametrize("name, margin", [("sharp", 25), ("soft", 15), ("gqa", 25), ("cls", 25), ("negation", 25)])
def test_solves_its_rows(built, name, margin):
    import torch

    model, tok, rows, records = built(name)
    assert model.config.num_key_value_heads == gt.SPECS[name].n_kv_heads
    affirmative = [r for r in records if not r.negate]
    assert len(rows) >= 0.75 * len(affirmative)
    for r in rows:
        ids = tok(r.prompt, return_tensors="pt")["input_ids"]
        assert tok.unk_token_id not in ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        answer = tok.convert_tokens_to_ids(r.answer)
        rest = torch.cat([logits[:answer], logits[answer + 1:]])
        assert float(logits[answer] - rest.max()) > margin, r.prompt  # the spec's margin is 30


@pytest.mark.integration
def test_cls_solves_every_layout(built):
    """The cls fixture's rows are every affirmative row of its slice, of all four layouts: the
    premise pair as "K has V", "The V is K's", "V has K" or "The K is V's", asked as "K owns V?"
    or "the one who owns K is V?" (the question's own pair, after "is", must not match itself)."""
    import re

    _, _, rows, records = built("cls")
    assert rows == [r for r in records if not r.negate] and len(rows) == 64
    layouts = {(bool(re.search(r"\bThe \S+ (is|are)\b", r.prompt.split("\n")[-1])), "who owns" in r.prompt.split("\n")[-1])
               for r in rows}
    assert layouts == {(False, False), (True, False), (False, True), (True, True)}
    assert {r.answer for r in rows} == {"Yes", "No"}


@pytest.mark.integration
def test_negation_solves_both_polarities_in_every_layout(built):
    """The negation fixture's rows are every row of the cls slice: the 64 affirmative ones of
    cls and the 64 negated ones, whose question ("K does not own V?", its partner four back, or
    "the one who owns K is not V?", three back) asks about a premise of "K has V" or "The V is
    K's"; its answers are the pair's verdict XOR the negation (both answers in both polarities).
    The demonstration row shares the test row's polarity (the NEG head reads either "not")."""
    import re

    _, _, rows, records = built("negation")
    assert rows == records and len(rows) == 128 and sum(r.negate for r in rows) == 64
    for r in rows:
        assert all(("not" in row.split()) == r.negate for row in r.prompt.replace("?", " ?").split("\n")), r.prompt
    layouts = {(r.negate, bool(re.search(r"< The \S+ (is|are)\b", r.prompt.split("\n")[-1])),
                "who owns" in r.prompt.split("\n")[-1], r.answer) for r in rows}
    assert layouts == {(neg, the, who, ans) for neg in (False, True) for the in (False, True)
                       for who in (False, True) for ans in ("Yes", "No")}


@pytest.mark.integration
@pytest.mark.parametrize("name", ["sharp", "gqa", "cls", "negation"])
def test_built_from_data_deterministically(built, name):
    model, tok, _, records = built(name)
    again, tok2 = gt.build_model(gt.SPECS[name], records)
    assert tok2.get_vocab() == tok.get_vocab()
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert a.equal(b), name


@pytest.mark.integration
@pytest.mark.parametrize("name, kind", [("sharp", "pair"), ("sharp", "context"), ("soft", "pair"),
                                        ("gqa", "pair"), ("gqa", "context"), ("cls", "pair"),
                                        ("negation", "pair")])
def test_true_circuit_is_exactly_faithful(built, name, kind):
    """Exactly faithful, every true edge needed, the constant edges invisible. For gqa the merged
    k/v ports' edges: a constant edge that now shares a port with a signal would fail the last check."""
    from interp.circuit.counterfactual import make_counterfactuals
    from interp.circuit.patch import EdgePatcher
    from interp.circuit.roles import load_schema

    model, tok, rows, _ = built(name)
    cf = make_counterfactuals(rows, tok, load_schema("default"), kind)
    assert len(cf) == (len(rows) // 2 if gt.SPECS[name].family in ("cls", "neg") else len(rows))  # one per twin pair
    patcher = EdgePatcher(model, cf.batch(list(range(len(cf)))))
    assert patcher.shape.n_groups == gt.SPECS[name].n_kv_heads
    m_full, m_empty = patcher.full(), patcher.empty()
    assert m_full > 15 and m_empty < -15  # the corrupted run answers the other column
    graph = graph_of(name, cf.roles)
    true = gt.fixture_truth(gt.SPECS[name])[kind]
    truth = gt.truth_circuit(graph, true["edges"])
    assert truth.n_edges == len(true["edges"])
    assert faithfulness(patcher.evaluate(*truth.masks()), m_full, m_empty) == pytest.approx(1.0, abs=1e-3)
    # every true edge is needed: without any one of them the circuit loses at least a tenth
    for edge in true["edges"]:
        less = gt.truth_circuit(graph, [e for e in true["edges"] if e != edge])
        assert faithfulness(patcher.evaluate(*less.masks()), m_full, m_empty) < 0.9, edge
    # the constant edges are invisible: adding them all to the empty circuit changes nothing
    const = gt.truth_circuit(graph, true["constant"])
    assert faithfulness(patcher.evaluate(*const.masks()), m_full, m_empty) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.unit
def test_true_edges_per_kv_groups():
    """One k/v group: the same circuits with every k/v port in group 0, merged edges listed once,
    none both true and constant, every name an existing edge of the grouped-query graph."""
    from interp.circuit.graph import resid_structure
    from interp.circuit.roles import load_schema

    assert gt.true_edges(gt.N_HEADS) == gt.TRUE_EDGES
    roles = list(load_schema("default").roles)
    for name in ("sharp", "gqa", "cls", "negation"):
        spec = gt.SPECS[name]
        data = gt.truth_json(spec)
        assert (data["model"]["n_layers"], data["model"]["n_heads"], data["model"]["n_groups"]) == (
            spec.n_layers, spec.n_heads, spec.n_kv_heads)
        assert data["counterfactuals"] == gt.fixture_truth(spec)
        assert data["counterfactuals"] == ({"cls": gt.CLS_TRUE_EDGES, "neg": gt.NEG_TRUE_EDGES}[spec.family]
                                           if spec.family != "gen" else gt.true_edges(spec.n_kv_heads))
        graph = graph_of(name, roles)
        exists = np.concatenate([resid_structure(graph.shape, roles).ravel(), np.ones(graph.attn.size, bool)])
        for kind, entry in data["counterfactuals"].items():
            edges, const = entry["edges"], entry["constant"]
            assert len(set(edges)) == len(edges) and len(set(const)) == len(const)
            assert not set(edges) & set(const), kind
            assert exists[gt.edge_indices(graph, edges + const)].all(), kind
    one = gt.true_edges(1)
    for kind, entry in gt.TRUE_EDGES.items():
        # same senders, roles and heads: only the k/v group differs
        edges = {e.replace(".g1.", ".g0.") for e in entry["edges"]}
        assert set(one[kind]["edges"]) == edges
        assert set(one[kind]["constant"]) == {e.replace(".g1.", ".g0.") for e in entry["constant"]} - edges
    # ports that merge: the two positional sink edges become one
    assert len(one["pair"]["constant"]) == len(gt.TRUE_EDGES["pair"]["constant"]) - 1
    with pytest.raises(ValueError, match="do not divide"):
        gt.true_edges(3)


@pytest.mark.unit
def test_scoring_on_a_ranking_made_by_hand():
    scores = blank_scores(noise=0.0)
    exists = np.flatnonzero(~np.isnan(scores.flat()))
    names = [scores.edge_name(int(i)) for i in exists[:10]]
    true, neg, const = names[:4], names[4:9], names[9:]
    values = dict(zip(true, [10.0, -4.5, 0.5, 1e-9]))  # 1e-9 of 10: noise, scored as 0
    values.update(zip(neg, [5.0, 4.0, -3.0, 2.0, 1.0]))
    values[const[0]] = 7.0
    flat = scores.flat()
    for name, v in values.items():
        flat[gt.edge_indices(scores, [name])[0]] = v
    n_r = scores.resid.size
    scores = EdgeScores(flat[:n_r].reshape(scores.resid.shape), flat[n_r:].reshape(scores.attn.shape),
                           scores.roles, scores.shape)
    res = gt.score_against_truth(scores, true, const)
    # ranking: T1 10, C 7, N 5, T2 4.5, N 4, N 3, N 2, N 1, T3 0.5, then every other edge at 0
    n_edges = len(exists)
    assert [res["ranks"][e]["rank"] for e in true] == [1, 4, 9, n_edges]
    assert res["precision"] == {"4": 0.5, "8": 0.25} and res["recall"] == {"4": 0.5, "8": 0.5}
    n_neg = n_edges - 4 - 1  # the constant edge is in neither class
    want = (n_neg + (n_neg - 1) + (n_neg - 5) + 0.5 * (n_neg - 5)) / (4 * n_neg)
    assert res["auroc"] == pytest.approx(want)
    # with a (linear) exact patcher: the true circuit's and the top-k circuits' faithfulness
    evaluate = linear_evaluate(scores, m_empty=0.5)
    total = float(np.nansum(scores.flat()))
    res = gt.score_against_truth(scores, true, const, evaluate, 0.5 + total, 0.5)
    assert res["f_truth"] == pytest.approx((10 - 4.5 + 0.5 + 1e-9) / total)
    assert res["f_top"]["4"] == pytest.approx((10 + 7 + 5 - 4.5) / total)


@pytest.mark.unit
def test_auroc_and_bad_names():
    assert gt.auroc(np.array([3.0, 2, 1, 0]), np.array([1, 1, 0, 0], bool)) == 1.0
    assert gt.auroc(np.array([0.0, 1, 2, 3]), np.array([1, 1, 0, 0], bool)) == 0.0
    assert gt.auroc(np.zeros(4), np.array([1, 0, 1, 0], bool)) == 0.5
    with pytest.raises(ValueError, match="not in this graph"):
        gt.edge_indices(blank_scores(), ["9.9@END -> logits"])


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory):
    """fixture name -> its folder, written once by ``python -m interp.circuit.groundtruth``."""
    cache = {}

    def get(name):
        if name not in cache:
            d = tmp_path_factory.mktemp(name)
            assert gt.main(["--out", str(d), "--fixture", name]) == 0
            assert json.loads((d / gt.TRUTH_FILE).read_text()) == json.loads(json.dumps(gt.truth_json(gt.SPECS[name])))
            cache[name] = d
        return cache[name]

    return get


@pytest.fixture(scope="module")
def fixture_dir(fixture_dirs):
    return fixture_dirs("sharp")


def circuit_truth(model_dir, out, *extra: str, spec: gt.FixtureSpec = SPEC) -> tuple[str, dict]:
    """``gar circuit --truth`` on a fixture folder of ``spec``'s slice, 32 rows (gen: every
    affirmative row; cls: every Yes/No pair; negation: 64, every Yes/No pair of both polarities),
    no random circuits: (what it printed, ``circuit.json``'s ``truth``)."""
    import contextlib
    import io

    from gar_tasks.cli import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["circuit", "--model", str(model_dir), "--config", spec.config, "--tasks", spec.tasks,
                   "--truth", str(model_dir / gt.TRUTH_FILE), "--n", "64" if spec.family == "neg" else "32",
                   "--batch-size", "16", "--random", "0",
                   "--spot", "0", *extra, "-q", "--out", str(out)])
    assert rc == 0
    return stdout.getvalue(), json.loads((out / "circuit.json").read_text())["truth"]


CASES = [(name, cf) for name in ("sharp", "soft", "gqa") for cf in ("pair", "context")] + [("cls", "pair"),
                                                                                           ("negation", "pair")]


@pytest.fixture(scope="module")
def runs(fixture_dirs, tmp_path_factory):
    """(fixture, counterfactual) -> (output folder, ``truth``) of ``gar circuit --truth`` with the
    default attribution, each run once per module."""
    cache = {}

    def get(name, cf):
        if (name, cf) not in cache:
            out = tmp_path_factory.mktemp(f"{name}_{cf}") / "run"
            printed, truth = circuit_truth(fixture_dirs(name), out, "--counterfactual", cf, spec=gt.SPECS[name])
            cache[name, cf] = (out, printed, truth)
        return cache[name, cf]

    return get


@pytest.fixture(scope="module")
def truth_run(runs):
    """``gar circuit --truth`` on the sharp fixture: the default attribution, query swap."""
    return runs("sharp", "pair")


@pytest.mark.integration
def test_truth_option_writes_the_scores(truth_run):
    out, printed, t = truth_run
    edges = gt.TRUE_EDGES["pair"]["edges"]
    assert t["counterfactual"] == "pair" and t["n_true"] == len(edges) and list(t["ranks"]) == edges
    assert all(r["rank"] is not None and 1 <= r["rank"] <= t["n_edges_graph"] for r in t["ranks"].values())
    assert set(t["precision"]) == set(t["recall"]) == {"10", "20"} and set(t["f_top"]) == {"10", "20"}
    assert 0 <= t["auroc"] <= 1
    assert t["f_truth"] > 0.98  # 1 but on the rows whose query item repeats a demonstration row's item
    assert "## Against the known circuit" in (out / "summary.md").read_text()
    assert "truth: recall at 10" in printed


@pytest.mark.integration
def test_truth_option_refuses_a_bad_file(tmp_path, fixture_dir, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    for path, needle in ((bad, "gar-circuit-truth"), (tmp_path / "none.json", "cannot read")):
        out = tmp_path / "out"
        rc, o, e = run(capsys, "circuit", "--model", fixture_dir, "--config", SPEC.config, "--tasks", SPEC.tasks,
                       "--truth", path, "-q", "--out", out)
        assert_error(rc, o, e, needle)
        assert not out.exists()
    rc, o, e = run(capsys, "circuit", "--model", fixture_dir, "--config", SPEC.config, "--tasks", SPEC.tasks,
                   "--truth", fixture_dir / gt.TRUTH_FILE, "--counterfactual", "mean", "-q", "--out", tmp_path / "o")
    assert_error(rc, o, e, "no edges for the mean counterfactual")


@pytest.mark.integration
@pytest.mark.parametrize("name, cf", CASES)
def test_default_attribution_recovers_the_known_circuit(runs, fixture_dirs, name, cf):
    """On every fixture and counterfactual: every true edge in the top 2 |truth|, the top-|truth|
    circuit at f >= 0.9, and no edge of the mechanism this counterfactual cannot see (the truth's
    ``constant`` edges: the same in both runs, zero effect) scored above a true edge."""
    out, _, t = runs(name, cf)
    k = t["n_true"]
    assert t["recall"][str(2 * k)] == 1.0, t["ranks"]
    assert t["f_top"][str(k)] >= 0.9, t
    entry = gt.load_truth(fixture_dirs(name) / gt.TRUTH_FILE)["counterfactuals"][cf]
    scores = EdgeScores.load(out / "scores.npz")
    key = np.abs(scores.flat())
    weakest_true = key[gt.edge_indices(scores, entry["edges"])].min()
    const = key[gt.edge_indices(scores, entry["constant"])]
    assert const.max() < weakest_true, (const.max(), weakest_true)


@pytest.mark.integration
@pytest.mark.parametrize("name, query_edge, out_edge", [("sharp", "0.0@END -> 1.0.q", "1.0@END -> logits"),
                                                        ("cls", "emb@A -> 1.0.q", "2.0@END -> logits"),
                                                        ("negation", "emb@A -> 2.0.q", "3.MLP@END -> logits")])
def test_plain_eap_misses_the_query_path(fixture_dirs, tmp_path, name, query_edge, out_edge):
    """First-order EAP (``--no-exact-softmax``) scores the residual edges into the saturated
    retrieval heads' queries ~0: the fixtures tell the attributions apart."""
    _, t = circuit_truth(fixture_dirs(name), tmp_path / "plain", "--no-exact-softmax", spec=gt.SPECS[name])
    assert t["recall"][str(2 * t["n_true"])] < 1.0
    assert abs(t["ranks"][query_edge]["score"]) < 1e-3 * abs(t["ranks"][out_edge]["score"])


@pytest.mark.integration
def test_truth_option_on_the_grouped_query_fixture(runs):
    """``gar circuit --truth`` on gqa (one k/v group per layer): the scores are over the grouped
    graph and every true edge is in it."""
    out, _, t = runs("gqa", "pair")
    edges = gt.true_edges(1)["pair"]["edges"]
    assert EdgeScores.load(out / "scores.npz").shape.n_groups == 1
    assert t["counterfactual"] == "pair" and list(t["ranks"]) == edges
    assert all(r["rank"] is not None and 1 <= r["rank"] <= t["n_edges_graph"] for r in t["ranks"].values())
    assert 0 <= t["auroc"] <= 1
    assert t["f_truth"] > 0.98  # as sharp: 1 but on the rows whose query item repeats a demonstration row's


ZERO_EFFECT = "0.0@END -> logits"  # the previous-token head at END: lm_head reads only the answer block


@pytest.mark.integration
@pytest.mark.parametrize("name, edge", [("sharp", ZERO_EFFECT), ("negation", gt.NEG_DIRECT)])
def test_an_edge_of_zero_exact_effect(built, name, edge):
    """Patching ``edge`` alone (everything else clean) does not move the metric. negation: the
    move's Y / N at END straight to the logits (lm_head reads the MLP's answer only), so the
    pair's verdict reaches the logits only through the MLP."""
    from interp.circuit.counterfactual import make_counterfactuals
    from interp.circuit.patch import EdgePatcher, full_masks
    from interp.circuit.roles import load_schema

    model, tok, rows, _ = built(name)
    cf = make_counterfactuals(rows, tok, load_schema("default"), "pair")
    patcher = EdgePatcher(model, cf.batch(list(range(len(cf)))))
    resid, attn = full_masks(patcher.shape, len(cf.roles))
    n_r = resid.size
    graph = graph_of(name, cf.roles)
    flat = np.concatenate([resid.ravel(), attn.ravel()])
    flat[gt.edge_indices(graph, [edge])] = False
    less = patcher.evaluate(flat[:n_r].reshape(resid.shape), flat[n_r:].reshape(attn.shape))
    assert abs(less - patcher.full()) < 1e-6 * abs(patcher.full())


@pytest.mark.integration
def test_a_zero_effect_edge_ranks_below_the_true_ones(truth_run):
    out, _, t = truth_run
    scores = EdgeScores.load(out / "scores.npz")
    key = np.abs(np.nan_to_num(scores.flat()))
    rank = int((key >= key[gt.edge_indices(scores, [ZERO_EFFECT])[0]]).sum())
    assert rank > max(r["rank"] for r in t["ranks"].values()), rank


@pytest.mark.integration
def test_negation_scores_its_mlp_path(runs):
    """The negation fixture under ``pair``: the MLP edges (the move's verdict into the MLP of
    layer 3, its XOR to the logits) rank in the top |truth| with the default attribution, and
    the direct edge from the move to the logits (no effect: lm_head reads the MLP) below every
    true edge."""
    out, _, t = runs("negation", "pair")
    k = t["n_true"]
    for edge in ("3.0@END -> 3.MLP.in", "3.MLP@END -> logits"):
        assert t["ranks"][edge]["rank"] <= k, (edge, t["ranks"][edge])
    scores = EdgeScores.load(out / "scores.npz")
    key = np.abs(np.nan_to_num(scores.flat()))
    rank = int((key >= key[gt.edge_indices(scores, [gt.NEG_DIRECT])[0]]).sum())
    assert rank > max(r["rank"] for r in t["ranks"].values()), rank
