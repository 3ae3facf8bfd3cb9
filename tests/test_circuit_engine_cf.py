"""Counterfactuals of the circuit engine (interp.circuit.counterfactual) on GAR records.

The pair kinds reproduce ``gar patch``'s pairs (cls twins, gen query swaps); the context
counterfactual swaps two context values (every differing token is a value token); role means are
leave-one-out means over the task; roles before the first difference are reported unreachable
and every edge out of them scores exactly 0 under pair patching.
"""

from __future__ import annotations

import numpy as np
import pytest

from circuit_tiny import model
from gar_tasks.errors import GARConfigError
from interp.circuit.counterfactual import RoleMeans, make_counterfactuals
from interp.circuit.eap import attribution_batch
from interp.circuit.patch import EdgePatcher, empty_masks, full_masks
from interp.circuit.roles import load_schema
from interp.core.model import as_nnsight
from tiny_models import one_thread_module  # noqa: F401 (autouse fixture)
from tiny_tokenizers import bpe_tokenizer, gar_records

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def records():
    return gar_records("paper")[:400]


@pytest.fixture(scope="module")
def schema():
    return load_schema("default")


def _accounted(cf):
    assert cf.counts["candidates"] == cf.counts["kept"] + sum(cf.rejected.values())
    assert cf.counts["kept"] == len(cf)


def test_pair_kind_matches_twins_and_query_swaps(records, schema):
    tok = bpe_tokenizer()
    cf = make_counterfactuals(records, tok, schema, "pair")
    _accounted(cf)
    by_id = {r.id: r for r in records}
    fams = {it.family for it in cf.items}
    assert fams == {"cls", "gen"}
    yes, no = tok(" Yes", add_special_tokens=False)["input_ids"][0], tok(" No", add_special_tokens=False)["input_ids"][0]
    for it in cf.items:
        r = by_id[it.record_id]
        assert list(it.clean_ids) == tok(r.prompt)["input_ids"] and len(it.corrupt_ids) == it.length
        assert it.clean_target != it.corrupt_target
        if it.family == "cls":
            twin = next(x for x in records if x.pair_id == r.pair_id and x.label == "No")
            assert r.label == "Yes" and list(it.corrupt_ids) == tok(twin.prompt)["input_ids"]
            assert (it.clean_target, it.corrupt_target) == (yes, no)
        else:
            assert not r.negate
            k = it.first_difference
            assert cf.roles[it.role_ids[k]] == "Q"  # the query swap changes nothing before Q


def test_context_kind_swaps_two_values(records, schema):
    tok = bpe_tokenizer()
    cf = make_counterfactuals(records, tok, schema, "context")
    _accounted(cf)
    assert cf.counts["negated"] > 0 and cf.counts["kept"] > 20
    by_id = {r.id: r for r in records}
    for it in cf.items:
        r = by_id[it.record_id]
        assert not r.negate and (r.family == "gen" or r.label == "Yes")
        diff = [i for i, (a, b) in enumerate(zip(it.clean_ids, it.corrupt_ids)) if a != b]
        assert diff and {cf.roles[it.role_ids[i]] for i in diff} <= {"V", "V'"}
        clean, corrupt = tok.decode(list(it.clean_ids)), tok.decode(list(it.corrupt_ids))
        row = r.rows[-1]
        assert sorted(clean.split()) == sorted(corrupt.split())  # the same words, two of them swapped
        assert clean != corrupt
        if r.family == "gen":
            true_first = tok(r.prompt + " " + r.answer)["input_ids"][it.length]
            assert it.clean_target == true_first
            assert any(tok(r.prompt + " " + a)["input_ids"][it.length] == it.corrupt_target
                       for a in row.answers if a != row.true_answer)
    reach = cf.reachability()
    assert set(reach["first_difference"]) <= {"V", "V'"}
    assert {"Q^", "A^"} <= set(reach["unreachable"]) and "END" not in reach["unreachable"]


def test_unreachable_roles_score_exactly_zero(records, schema):
    import torch

    tok = bpe_tokenizer()
    cf = make_counterfactuals(records, tok, schema, "context")
    idx = cf.batch_indices(4)[0]
    sub = type(cf)(cf.kind, [cf.items[i] for i in idx], cf.roles, cf.end_role, cf.pad_token_id, cf.counts)
    unreachable = [cf.roles.index(r) for r in sub.reachability()["unreachable"]]
    assert unreachable
    hf = model("llama", "float32")
    batch = sub.batch(range(len(sub)))
    resid, attn = attribution_batch(as_nnsight(hf, tok), batch)
    present = batch.role_onehot(torch.float64).sum((0, 1)).numpy() > 0
    assert all(present[r] for r in unreachable)
    assert np.all(resid[:, :, unreachable] == 0)
    assert np.all(attn[:, :, unreachable, :, 1:] == 0)  # key/value edges out of unreachable roles
    assert np.abs(resid).max() > 0


def test_role_means_are_leave_one_out_task_means(records, schema):
    import torch

    tok = bpe_tokenizer()
    cf = make_counterfactuals(records, tok, schema, "pair")
    task = max({it.task_id for it in cf.items}, key=lambda t: sum(it.task_id == t for it in cf.items))
    idx = [i for i, it in enumerate(cf.items) if it.task_id == task][:4]
    sub = type(cf)(cf.kind, [cf.items[i] for i in idx], cf.roles, cf.end_role, cf.pad_token_id, cf.counts)
    hf = model("llama")
    means = RoleMeans.fit(hf, sub, batch_size=3)
    batch = sub.batch([0, 1], means=means, model=hf)
    # the reference: the patcher's own sender outputs (a different code path), one row at a time
    senders, roles = [], []
    for i in range(len(sub)):
        one = sub.batch([i])
        p = EdgePatcher(hf, one)
        with torch.no_grad():
            senders.append(p.unrolled.forward(p.clean_embeds, one, capture=True)[1][0])
        roles.append(one.role_ids[0])
    for b in (0, 1):
        others = [k for k in range(len(sub)) if k != b]
        for r in range(len(cf.roles)):
            toks = [senders[k][roles[k] == r] for k in others]
            n = sum(len(t) for t in toks)
            want = torch.cat(toks).sum(0) / n if n else torch.zeros_like(senders[0][0])
            # 1e-5: transformers' softmax runs in float32 even in a float64 model
            torch.testing.assert_close(batch.role_means[b, :, r], want, rtol=1e-5, atol=1e-9)
    # the patcher runs on them: nothing kept = the summed means at END
    p = EdgePatcher(hf, batch)
    s = p.shape
    end = cf.end_role
    logits = hf.lm_head(hf.model.norm(batch.role_means[:, :, end].sum(1))).detach()
    want = (logits.gather(1, batch.clean_target[:, None]) - logits.gather(1, batch.corrupt_target[:, None]))[:, 0]
    np.testing.assert_allclose(p.metrics(*empty_masks(s, len(cf.roles))), want.numpy(), rtol=1e-9)
    assert p.metrics(*full_masks(s, len(cf.roles))) == pytest.approx(
        EdgePatcher(hf, sub.batch([0, 1])).metrics(*full_masks(s, len(cf.roles))), rel=1e-9)


def test_bad_counterfactual_requests(records, schema):
    tok = bpe_tokenizer()
    with pytest.raises(GARConfigError, match="unknown counterfactual"):
        make_counterfactuals(records, tok, schema, "resample")
    negated_gen = [r for r in records if r.family == "gen" and r.negate][:5]
    with pytest.raises(GARConfigError, match="leaves no pair.*negated"):
        make_counterfactuals(negated_gen, tok, schema, "context")
    no_end = load_schema({**schema.to_dict(), "roles": [r for r in schema.roles if r != "END"],
                          "test": {k: v for k, v in schema.test.items() if k != "END"}})
    with pytest.raises(GARConfigError, match="no END role"):
        make_counterfactuals(records, tok, no_end, "pair")
