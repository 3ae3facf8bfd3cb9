"""Compositionality sub-questions (gar_tasks.subq): layout, links, counts and answers."""

from __future__ import annotations

import collections
from dataclasses import fields

import pytest

from gar_tasks.configs import CONFIGS
from gar_tasks.errors import GARDataError
from gar_tasks.profiles import load_profile
from gar_tasks.records import DELIMITER, ROLES, TERMINATOR, GARRecord
from gar_tasks.render import ROW_SEPARATOR
from gar_tasks.schemas import SymSchema, TreeSchema
from gar_tasks.subq import KINDS, fact_templates, sub_question, sub_records

pytestmark = pytest.mark.unit

SUB_CONFIG = {"paper": "sub", "v1": "v1_sub"}
SAME = [f.name for f in fields(GARRecord)
        if f.name not in ("id", "pair_id", "family", "prompt", "answer", "label", "choices", "text", "spans")]


@pytest.fixture(scope="module", params=["paper", "v1"])
def built(request):
    parents = CONFIGS[request.param].splits["test"]()
    subs = CONFIGS[SUB_CONFIG[request.param]].splits["test"]()
    return request.param, {p.id: p for p in parents}, subs


def _cut(text, span):
    return text[span[0]:span[1]]


def test_registered_configs_are_the_sub_records_of_their_parents(built):
    name, parents, subs = built
    assert subs == sub_records(parents.values())  # deterministic, and what the registry serves
    assert list(CONFIGS[SUB_CONFIG[name]].splits) == ["test"]


def test_counts_per_kind(built):
    _, parents, subs = built
    gen = [p for p in parents.values() if p.family == "gen"]
    counts = collections.Counter(s.family for s in subs)
    assert counts == {
        "sub_assoc": len(gen),
        "sub_hop0": sum(p.rel0.removeprefix("neg_") != "equal" for p in gen),
        "sub_hop1": sum(p.rel1 != "equal" for p in gen),
    }
    assert counts == {"sub_assoc": 1536, "sub_hop0": 992, "sub_hop1": 992}  # the published grid


def test_links_layout_and_metadata(built):
    _, parents, subs = built
    assert len({s.id for s in subs}) == len(subs)
    for s in subs:
        p = parents[s.pair_id]
        assert p.family == "gen" and s.family in KINDS
        assert s.id == f"{p.id}/{s.family}"
        assert all(getattr(s, f) == getattr(p, f) for f in SAME), s.id
        assert s.rows == p.rows and s.label is None
        assert s.text == s.prompt + DELIMITER + s.answer + TERMINATOR
        assert s.answer in s.choices and len(set(s.choices)) == len(s.choices)
        assert len(s.spans) == len(s.rows)
        rows = [_cut(s.text, sp["row"][0]) for sp in s.spans]
        assert s.text == ROW_SEPARATOR.join(rows) + TERMINATOR
        for sp in s.spans:
            assert set(sp) == set(ROLES)
            assert all(len(sp[r]) == 1 for r in ("row", "A", "END", "Q"))
            (r0, r1), (a0, a1), (e0, e1) = sp["row"][0], sp["A"][0], sp["END"][0]
            assert r0 <= e0 < e1 == a0 - 1 and a1 == r1 and s.text[e1] == " "
            assert sp["R"] == ()
            if s.family != "sub_assoc":
                assert all(sp[r] == () for r in ("K", "V", "K'", "V'"))
        last = s.spans[-1]
        assert _cut(s.text, last["A"][0]) == s.answer
        assert last["A"][0][0] == len(s.prompt) + len(DELIMITER)


def test_spans_slice_to_the_right_strings_and_answers_follow_the_vocabulary(built):
    name, parents, subs = built
    profile = load_profile(name)
    for s in subs:
        p = parents[s.pair_id]
        for i, (row, sp) in enumerate(zip(s.rows, s.spans)):
            t = row.true_index
            key, value = row.keys[t], row.values[t]
            q, a = _cut(s.text, sp["Q"][0]), _cut(s.text, sp["A"][0])
            if s.family == "sub_assoc":
                pspans = p.spans[i]
                for role in ("K", "V", "K'", "V'"):  # the context is the parent's
                    assert [_cut(s.text, x) for x in sp[role]] == [_cut(p.text, x) for x in pspans[role]]
                assert a == value
                assert q == key or key.lower().endswith(q.lower())  # 'the goggles' for 'goggles'
                assert _cut(s.text, sp["row"][0]).startswith(_cut(p.text, pspans["row"][0]).split(" >. ")[0])
                continue
            hop0 = s.family == "sub_hop0"
            subject = key if hop0 else value
            assert q[:1].lower() + q[1:] == subject[:1].lower() + subject[1:]
            schema = profile.vocab[p.query_schema if hop0 else p.answer_schema]
            if isinstance(schema, TreeSchema):
                assert a == schema.category_of[subject]
            else:
                assert isinstance(schema, SymSchema)
                synonyms = [w for w in schema.group_of[subject] if w != subject]
                assert a in synonyms
                if hop0 and p.negate:
                    assert a == synonyms[0]
            if hop0:  # the positive fact: the query itself, or (negated) what the key really is
                assert (a == row.query) != p.negate
            else:
                assert a == row.true_answer
            tpl = fact_templates()[schema.id]
            head = tpl.replace("{x}", q)
            if profile.fix_grammar and subject in profile.plural_things:
                head = head.replace(" is", " are", 1)
            assert _cut(s.text, sp["row"][0]) == head + DELIMITER + a


def test_examples():
    subs = {s.id: s for s in CONFIGS["sub"].splits["test"]()}
    s = subs["paper/test/r0.01.---.gen/000/sub_assoc"]
    assert s.text.startswith("< David likes London. Sharon likes Saint Petersburg. Barbara likes Milan. >. "
                             "So Barbara likes Milan\n < ")
    assert (s.prompt.endswith(">. So John likes"), s.answer) == (True, "Bangkok")
    assert subs["paper/test/r0.01.---.gen/000/sub_hop1"].text == \
        "Milan is a city of Italy\n Bangkok is a city of Thailand\n"
    assert "paper/test/r0.01.---.gen/000/sub_hop0" not in subs  # hop 0 is 'equal'
    swapped = subs["paper/test/r0.00.S--.gen/000/sub_assoc"]
    assert swapped.prompt.endswith(">. So Kyoto attracts") and swapped.answer == "Elizabeth"
    assert subs["paper/test/r0.10.---.gen/000/sub_hop0"].text == "James is the boy\n Richard is the boy\n"
    neg = subs["paper/test/r0.10.-N-.gen/000/sub_hop0"]  # 'The boys do not ...': the key's own gender
    assert neg.text == "Mary is the girl\n Maria is the girl\n"
    assert subs["paper/test/r2.00.S--.gen/000/sub_assoc"].prompt.endswith(">. So the pig is")
    v1 = {s.id: s for s in CONFIGS["v1_sub"].splits["test"]()}
    assert v1["v1/test/r2.01.S--.gen/000/sub_assoc"].prompt.endswith("So the blackberries are")
    assert v1["v1/test/r2.01.S--.gen/000/sub_hop0"].text.endswith(" Blackberries are a kind of fruit\n")


def test_only_generation_records_have_sub_questions():
    recs = CONFIGS["paper"].splits["test"]()
    cls = next(r for r in recs if r.family == "cls")
    assert sub_records([cls]) == []
    with pytest.raises(GARDataError, match="generation records only"):
        sub_question(cls, "sub_assoc")
    gen = next(r for r in recs if r.family == "gen" and r.rel0 == "equal")
    with pytest.raises(GARDataError, match="no sub_hop0 sub-question"):
        sub_question(gen, "sub_hop0")
