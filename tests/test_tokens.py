"""Character spans -> token positions (gar_tasks.tokens) with two offline tokenizers.

The checks are stated in terms of what a position means (the tokens decode to the role string,
the range is minimal, the scored position is the prompt's last token), not in terms of the
implementation, and ``test_checker_catches_off_by_one`` shows they fail for a shifted mapping.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import defaultdict

import pytest

from gar_tasks.errors import GARDataError
from gar_tasks.tokens import (batch_token_positions, char_to_token_spans, end_position,
                              record_token_positions)
from tiny_tokenizers import bpe_tokenizer, gar_records, wordlevel_tokenizer

pytestmark = pytest.mark.unit

TOKENIZERS = {
    "bpe-trim": lambda: bpe_tokenizer(trim_offsets=True),
    "bpe-notrim": lambda: bpe_tokenizer(trim_offsets=False),
    "wordlevel": wordlevel_tokenizer,
}
PROFILES = ("paper", "v1")


def _sample(profile: str) -> list:
    """Records of every (family, negate, swap_qa) group (first, middle, last of each), plus a
    few whose role strings hold non-ASCII characters or inner punctuation (``Dr. Gabor Maté``)."""
    recs = gar_records(profile)
    groups = defaultdict(list)
    for r in recs:
        groups[(r.family, r.negate, r.swap_qa)].append(r)
    assert len(groups) == 8
    out = [g[i] for g in groups.values() for i in (0, len(g) // 2, -1)]

    def role_strings(r):
        return [r.text[s:e] for row in r.spans for k, v in row.items() if k != "row" for s, e in v]

    out += [r for r in recs if any(not s.isascii() for s in role_strings(r))][:3]
    out += [r for r in recs if any("." in s or "," in s for s in role_strings(r))][:3]
    return out


@pytest.fixture(params=list(TOKENIZERS), scope="module")
def tok(request):
    return TOKENIZERS[request.param]()


def _norm(s: str) -> str:
    return "".join(s.split()).casefold()


def _intersects(off, s, e) -> bool:
    a, b = off
    return a < b and a < e and b > s


def _problems(record, tok, positions) -> list[str]:
    """Everything wrong with ``positions`` (from the full text) for ``record``; [] if right."""
    enc = tok(record.text, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    bad = []
    if len(positions) != len(record.spans):
        return [f"{len(positions)} rows, expected {len(record.spans)}"]
    prev_row_end = 0
    for i, (row, pos) in enumerate(zip(record.spans, positions)):
        if set(pos) != set(row):
            bad.append(f"row {i}: roles {sorted(pos)} != {sorted(row)}")
            continue
        (ra, rb), = pos["row"]
        if ra < prev_row_end:
            bad.append(f"row {i} overlaps the previous row")
        prev_row_end = rb
        for role, spans in row.items():
            if len(pos[role]) != len(spans):
                bad.append(f"row {i} {role}: {len(pos[role])} ranges for {len(spans)} spans")
                continue
            for (a, b), (s, e) in zip(pos[role], spans):
                want = record.text[s:e]
                where = f"row {i} {role} {want!r} -> [{a}, {b})"
                if not 0 <= a < b <= len(ids):
                    bad.append(f"{where}: out of bounds")
                    continue
                if not (ra <= a and b <= rb):
                    bad.append(f"{where}: outside its row [{ra}, {rb})")
                if _norm(want) not in _norm(tok.decode(ids[a:b])):
                    bad.append(f"{where}: decodes to {tok.decode(ids[a:b])!r}")
                # minimal: the end tokens overlap the span, their neighbours do not, and
                # dropping either end token loses part of the role string
                if not (_intersects(offs[a], s, e) and _intersects(offs[b - 1], s, e)):
                    bad.append(f"{where}: an end token does not overlap the span")
                if (a > 0 and _intersects(offs[a - 1], s, e)) or (b < len(ids) and _intersects(offs[b], s, e)):
                    bad.append(f"{where}: a neighbouring token overlaps the span")
                for shorter in (ids[a + 1:b], ids[a:b - 1]):
                    if _norm(want) in _norm(tok.decode(shorter)):
                        bad.append(f"{where}: not minimal")
                if min(o[0] for o in offs[a:b]) > s or max(o[1] for o in offs[a:b]) < e:
                    bad.append(f"{where}: tokens do not cover the span")
    return bad


@pytest.mark.parametrize("profile", PROFILES)
def test_roles_decode_to_their_strings_minimally(tok, profile):
    sample = _sample(profile)
    families = {(r.family, r.negate, r.swap_qa) for r in sample}
    assert len(families) == 8 and any(r.spans[-1]["R"] for r in sample)
    for r in sample:
        bad = _problems(r, tok, record_token_positions(r, tok))
        assert not bad, f"{r.id}: {bad[:5]}"


def test_checker_catches_off_by_one(tok):
    """The checks above are real: shifting every range by one token either way fails them."""
    for r in _sample("paper")[:8]:
        pos = record_token_positions(r, tok)
        for d in (-1, 1):
            shifted = [{k: [(a + d, b + d) for a, b in v] for k, v in row.items()} for row in pos]
            assert _problems(r, tok, shifted), (r.id, d)
        grown = [{k: [(a, b + 1) for a, b in v] for k, v in row.items()} for row in pos]
        assert _problems(r, tok, grown), r.id


@pytest.mark.parametrize("profile", PROFILES)
def test_end_is_last_prompt_token_and_prompt_drops_only_the_answer(tok, profile):
    for r in _sample(profile):
        n = len(r.prompt)
        full = record_token_positions(r, tok)
        prompt = record_token_positions(r, tok, text=r.prompt)
        end = end_position(r, tok)
        ids_prompt = tok(r.prompt)["input_ids"]
        ids_full = tok(r.text)["input_ids"]
        # the scored position: last prompt token, END of the test row, same in the full text
        assert end == len(ids_prompt) - 1, r.id
        assert prompt[-1]["END"][-1][1] - 1 == end, r.id
        assert full[-1]["END"][-1][1] - 1 == end, r.id
        assert ids_full[:end + 1] == ids_prompt, r.id
        # the prompt keeps every row, every earlier row unchanged
        assert len(prompt) == len(full) and prompt[:-1] == full[:-1], r.id
        last_full, last = full[-1], prompt[-1]
        row_span = r.spans[-1]
        assert ("A" in last) == (r.family == "cls"), r.id  # gen: the answer is past the prompt
        assert row_span["A"][0][0] >= n if r.family == "gen" else row_span["A"][0][1] <= n
        for role in row_span:
            if role == "A" and r.family == "gen":
                continue
            if role == "row":  # clipped to the prompt: same start, ends at the prompt's end
                assert last["row"] == [(last_full["row"][0][0], end + 1)], r.id
            else:
                assert last[role] == last_full[role], (r.id, role)


def test_add_special_tokens_shifts_by_the_bos():
    r = _sample("v1")[0]
    for tok, shift in ((wordlevel_tokenizer(), 1), (bpe_tokenizer(), 0)):
        with_bos = record_token_positions(r, tok)
        without = record_token_positions(r, tok, add_special_tokens=False)
        assert with_bos == [{k: [(a + shift, b + shift) for a, b in v] for k, v in row.items()}
                            for row in without]
        assert end_position(r, tok) == end_position(r, tok, add_special_tokens=False) + shift
    assert wordlevel_tokenizer()(r.prompt)["input_ids"][0] == wordlevel_tokenizer().bos_token_id


def test_batch_matches_single(tok):
    sample = _sample("paper")[:6]
    assert batch_token_positions(sample, tok) == [record_token_positions(r, tok) for r in sample]
    assert batch_token_positions(sample, tok, prompt=True) == [
        record_token_positions(r, tok, text=r.prompt) for r in sample]


def test_char_to_token_spans_rule():
    # "Hello world!" with a BOS (0, 0) and a leading space inside " world"'s offsets
    offsets = [(0, 0), (0, 5), (5, 11), (11, 12)]
    assert char_to_token_spans(offsets, [(0, 5), (6, 11), (4, 7), (11, 12), (0, 12)]) == [
        (1, 2), (2, 3), (1, 3), (3, 4), (1, 4)]
    assert char_to_token_spans([(0, 5), (6, 11)], [(6, 8)]) == [(1, 2)]  # trimmed offsets
    assert char_to_token_spans(offsets, []) == []
    with pytest.raises(GARDataError, match=r"\(12, 15\)"):
        char_to_token_spans(offsets, [(12, 15)])  # past every token
    with pytest.raises(GARDataError, match=r"\(5, 6\)"):
        char_to_token_spans([(0, 0), (0, 5), (6, 11)], [(5, 6)])  # whitespace between tokens
    with pytest.raises(GARDataError):
        char_to_token_spans(offsets, [(3, 3)])  # empty
    with pytest.raises(GARDataError):
        char_to_token_spans([(0, 0)], [(0, 1)])  # special tokens never match


def test_span_beyond_any_token_raises():
    r = _sample("paper")[0]
    tok = wordlevel_tokenizer()
    n = len(r.text)
    enc = tok(r.text, return_offsets_mapping=True)
    with pytest.raises(GARDataError, match=rf"\({n + 2}, {n + 5}\)"):
        char_to_token_spans(enc["offset_mapping"], [(n + 2, n + 5)])
    rows = list(r.spans)
    rows[0] = {**rows[0], "K": ((n + 2, n + 5),)}
    with pytest.raises(GARDataError, match=rf"\({n + 2}, {n + 5}\)"):
        record_token_positions(dataclasses.replace(r, spans=tuple(rows)), tok)
    space = r.text.index(" ", 3)  # a span on whitespace alone has no token
    rows[0] = {**r.spans[0], "K": ((space, space + 1),)}
    with pytest.raises(GARDataError, match=rf"\({space}, {space + 1}\)"):
        record_token_positions(dataclasses.replace(r, spans=tuple(rows)), tok)
    with pytest.raises(GARDataError, match="prefix"):
        record_token_positions(r, tok, text="not a prefix")


def test_slow_tokenizer_raises():
    class SlowTokenizer:
        is_fast = False

        def __call__(self, *args, **kwargs):
            raise AssertionError("must not be called")

    r = _sample("paper")[0]
    for call in (lambda t: record_token_positions(r, t), lambda t: end_position(r, t),
                 lambda t: batch_token_positions([r], t)):
        with pytest.raises(GARDataError, match="fast tokenizer"):
            call(SlowTokenizer())


def test_module_does_not_import_transformers():
    code = "import sys, gar_tasks.tokens; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
