"""Role schemas (interp.circuit.roles): every prompt token gets the role its spans say.

Checked against the record's own role strings: a token labelled K decodes to (part of) the test
row's K string, the last token is END, demonstration Q/A become Q^/A^, and tokens before the first
row are 'pre'. Schemas are data: bad ones fail with one clear message.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from gar_tasks.errors import GARConfigError
from interp.circuit.counterfactual import make_counterfactuals
from interp.circuit.roles import PAD_ROLE, batch_token_roles, builtin_schemas, load_schema, schema_from_dict
from tiny_tokenizers import bpe_tokenizer, gar_records, wordlevel_tokenizer

pytestmark = pytest.mark.unit


def _sample():
    groups = defaultdict(list)
    for r in gar_records("paper"):
        groups[(r.family, r.negate)].append(r)
    return [g[i] for g in groups.values() for i in (0, len(g) // 2, -1)]


def _norm(s: str) -> str:
    return "".join(s.split()).casefold()


@pytest.mark.parametrize("tok_name", ["bpe", "wordlevel"])
def test_default_schema_labels_tokens_by_their_spans(tok_name):
    tok = bpe_tokenizer() if tok_name == "bpe" else wordlevel_tokenizer()
    schema = load_schema("default")
    recs = _sample()
    ids = batch_token_roles(recs, tok, schema)
    for r, row_ids in zip(recs, ids):
        enc = tok(r.prompt, return_offsets_mapping=True)
        assert len(row_ids) == len(enc["input_ids"])
        offsets = enc["offset_mapping"]
        names = [schema.roles[i] for i in row_ids]
        assert names[-1] == "END"
        test, demo = r.spans[-1], r.spans[0]
        for role, spans in (("K", test["K"]), ("V", test["V"]), ("Q", test["Q"]), ("Q^", demo["Q"]),
                            ("A^", demo["A"])):
            want = "".join(_norm(r.text[s:e]) for s, e in spans)
            got = "".join(_norm(r.prompt[a:b]) for (a, b), n in zip(offsets, names) if n == role)
            # intersecting tokens may carry a space or a neighbouring character more, never less
            assert want in got or tok_name == "wordlevel" and want.replace(".", "") in got, (r.id, role)
        if r.negate:
            assert "R" in names or "END" in names  # 'not' may be the END word in some templates
        first_row = r.spans[0]["row"][0][0]
        n_pre = sum(1 for a, b in offsets if b <= first_row)  # a BOS (0, 0) or a preamble
        assert names[:n_pre] == ["pre"] * n_pre and "pre" not in names[n_pre:]
        assert (n_pre > 0) == (tok_name == "wordlevel" or first_row > 0)
        # the demonstration row's K/V are 'other' in the default schema, K/V in 'detailed'
        assert "K^" not in names


def test_detailed_and_compact_schemas():
    tok = bpe_tokenizer()
    r = _sample()[0]
    detailed = load_schema("detailed")
    compact = load_schema("compact")
    d_names = [detailed.roles[i] for i in batch_token_roles([r], tok, detailed)[0]]
    c_names = [compact.roles[i] for i in batch_token_roles([r], tok, compact)[0]]
    assert {"K^", "V^", "Q^", "K", "V", "Q", "END"} <= set(d_names)
    assert set(c_names) <= set(compact.roles) and "pre" not in c_names
    # the same tokens are K in every schema (the test row's K)
    assert [n == "K" for n in d_names] == [n == "K" for n in c_names]
    assert set(builtin_schemas()) >= {"default", "compact", "detailed"}


def test_end_wins_over_overlapping_spans():
    """Some negated rows' END word is their 'not' (R): the prediction position must stay END."""
    tok = wordlevel_tokenizer()
    schema = load_schema("default")
    recs = [r for r in gar_records("paper") if any(
        set(map(tuple, row.get("R", ()))) & set(map(tuple, row.get("END", ()))) for row in r.spans)][:3]
    assert recs
    for r, ids in zip(recs, batch_token_roles(recs, tok, schema)):
        assert schema.roles[ids[-1]] == "END"


def test_user_schema_file_and_errors(tmp_path):
    base = load_schema("default").to_dict()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**base, "name": "mine"}))
    assert load_schema(str(path)).name == "mine"
    bad_role = {**base, "test": {**base["test"], "K": "KEY"}}
    with pytest.raises(GARConfigError, match="unknown role 'KEY'"):
        schema_from_dict(bad_role)
    with pytest.raises(GARConfigError, match="unknown span role 'Z'"):
        schema_from_dict({**base, "demo": {"Z": "Q^"}})
    with pytest.raises(GARConfigError, match="'unlabelled' names unknown role"):
        schema_from_dict({**base, "unlabelled": "nothing"})
    with pytest.raises(GARConfigError, match="lists a role twice"):
        schema_from_dict({**base, "roles": base["roles"] + ["K"]})
    with pytest.raises(GARConfigError, match="neither a built-in schema"):
        load_schema(str(tmp_path / "absent.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(GARConfigError, match="invalid JSON"):
        load_schema(str(tmp_path / "broken.json"))


def test_role_rows_are_left_padded_with_the_tokens():
    """A batch's role ids are the items' role ids right-aligned like their tokens, PAD_ROLE exactly
    on the padding (the one left padding of interp.core.encode)."""
    cf = make_counterfactuals(gar_records("paper")[:200], bpe_tokenizer(), load_schema("default"), "pair")
    by_len = {it.length: i for i, it in enumerate(cf.items)}
    assert len(by_len) >= 2
    idx = sorted(by_len.values())[:4]
    b = cf.batch(idx)
    pad = (b.attention_mask == 0).numpy()
    assert pad.any() and ((b.role_ids.numpy() == PAD_ROLE) == pad).all()
    for row, i in enumerate(idx):
        it = cf.items[i]
        np.testing.assert_array_equal(b.role_ids[row, b.width - it.length:].numpy(), it.role_ids)
        np.testing.assert_array_equal(b.input_ids[row, b.width - it.length:].numpy(), it.clean_ids)
        np.testing.assert_array_equal(b.corrupt_ids[row, b.width - it.length:].numpy(), it.corrupt_ids)
        assert (b.corrupt_ids[row, :b.width - it.length] == cf.pad_token_id).all()
