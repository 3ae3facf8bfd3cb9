"""interp.pairs: clean/corrupted pairs from GAR records, stated by what a pair must mean."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gar_tasks.errors import GARConfigError
from interp.pairs import Pairs, make_pairs
from tiny_tokenizers import bpe_tokenizer, gar_records, wordlevel_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def records():
    return gar_records("paper")[:600]


@pytest.fixture(scope="module")
def pairs(records):
    return make_pairs(records, bpe_tokenizer())


def test_counts_add_up_and_lengths_match(pairs):
    c = pairs.counts
    assert c["kept"] == len(pairs) > 50
    assert c["candidates"] == c["kept"] + pairs.n_rejected
    assert c["unequal_length"] > 0  # byte-level BPE: some twins/queries differ in length ...
    for p in pairs:  # ... and none of those is kept
        assert len(p.clean_ids) == len(p.corrupt_ids)
        assert p.clean_target != p.corrupt_target
        assert 0 < p.n_diff_tokens < p.length
    assert {p.family for p in pairs} == {"cls", "gen"}


def test_cls_pairs_are_yes_no_twins(records, pairs):
    tok = bpe_tokenizer()
    by_id = {r.id: r for r in records}
    for p in (q for q in pairs if q.family == "cls"):
        clean = by_id[p.record_id]
        twin = next(r for r in records if r.pair_id == clean.pair_id and r.id != clean.id)
        assert (clean.label, twin.label) == ("Yes", "No")
        assert tok.decode(p.clean_ids) == clean.prompt and tok.decode(p.corrupt_ids) == twin.prompt
        assert (tok.decode([p.clean_target]), tok.decode([p.corrupt_target])) == (" Yes", " No")


def test_gen_pairs_swap_the_query_for_another_columns(records, pairs):
    tok = bpe_tokenizer()
    by_id = {r.id: r for r in records}
    gen = [p for p in pairs if p.family == "gen"]
    assert gen
    for p in gen:
        r = by_id[p.record_id]
        row, j = r.rows[-1], p.corrupt_column
        assert not r.negate and j != row.true_index and row.queries.count(row.queries[j]) == 1
        s, e = r.spans[-1]["Q"][-1]
        corrupted = tok.decode(p.corrupt_ids)
        assert corrupted[:s] == r.prompt[:s] and corrupted[s:].endswith(r.prompt[e:])
        assert corrupted[s:len(corrupted) - len(r.prompt) + e].casefold() == row.queries[j].casefold()
        assert (" " + r.answer).startswith(tok.decode([p.clean_target]))
        assert (" " + row.answers[j]).startswith(tok.decode([p.corrupt_target]))
        # the test row's roles point at the right tokens of the clean prompt
        (qs, qe), = p.roles["Q"]
        assert tok.decode(p.clean_ids[qs:qe]).strip() == r.text[s:e]
        assert p.roles["END"][-1][1] == p.length


def test_negated_gen_is_excluded_and_counted(records):
    gen = [r for r in records if r.family == "gen"]
    got = make_pairs(gen, wordlevel_tokenizer(), families=("gen",))
    assert got.counts["negated_gen"] == sum(r.negate for r in gen) > 0
    assert all(not next(r for r in gen if r.id == p.record_id).negate for p in got)


def test_unequal_lengths_are_rejected_and_counted(records):
    """A No twin made one word longer can no longer pair with its Yes twin."""
    yes = next(r for r in records if r.family == "cls" and r.label == "Yes")
    no = next(r for r in records if r.pair_id == yes.pair_id and r.label == "No")
    longer = dataclasses.replace(no, prompt=no.prompt.replace("Answer:", "Answer now:"),
                                 text=no.text.replace("Answer:", "Answer now:"))
    tok = wordlevel_tokenizer()
    assert len(make_pairs([yes, no], tok)) == 1
    got = make_pairs([yes, longer], tok)
    assert len(got) == 0 and got.counts["unequal_length"] == 1 and got.n_rejected == 1
    lone = make_pairs([yes], tok)
    assert lone.counts["no_twin"] == 1 and lone.rejected == {"no_twin": 1}


def test_batch_left_pads_and_shifts_positions(pairs):
    import torch

    idx = [min(range(len(pairs)), key=lambda i: pairs[i].length),
           max(range(len(pairs)), key=lambda i: pairs[i].length)]
    b = pairs.batch(idx)
    short, long_ = pairs[idx[0]], pairs[idx[1]]
    pad = long_.length - short.length
    assert pad > 0 and b.width == long_.length and b.answer_position == b.width - 1
    assert b.clean_ids[0, :pad].eq(pairs.pad_token_id).all() and b.attention_mask[0, :pad].eq(0).all()
    assert b.clean_ids[0, pad:].tolist() == list(short.clean_ids)
    assert b.position_ids[0, pad:].tolist() == list(range(short.length))
    assert b.position_ids[1].tolist() == list(range(long_.length))
    assert b.roles[0]["END"] == [(s + pad, e + pad) for s, e in short.roles["END"]]
    assert torch.equal(b.clean_target, torch.tensor([short.clean_target, long_.clean_target]))


def test_batches_cover_every_pair_once_and_roundtrip(pairs):
    idx = pairs.batch_indices(7)
    assert sorted(i for b in idx for i in b) == list(range(len(pairs)))
    assert all(len(b) <= 7 for b in idx)
    again = Pairs.from_dict(json.loads(json.dumps(pairs.to_dict())))
    assert again == pairs


def test_bad_arguments(records):
    with pytest.raises(GARConfigError, match="families"):
        make_pairs(records, bpe_tokenizer(), families=("qa",))
    with pytest.raises(GARConfigError, match="batch_size"):
        make_pairs(records[:50], bpe_tokenizer()).batch_indices(0)
    with pytest.raises(GARConfigError, match="fast tokenizer"):
        make_pairs(records, object())
