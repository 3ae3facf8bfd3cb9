"""Templates -> text, with character spans recorded while writing (GAR_SPEC section 6).

Pure functions of a cell, a profile and sampled rows; the only randomness (the preamble order and
the reference's two unused synonym draws) comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .errors import GARDataError
from .grid import Cell
from .profiles import Profile
from .records import RowInfo, Span
from .schemas import Schema

CLS_PREFIX = "Answer with Yes or No. Can it be inferred from the premise that "
ROW_SEPARATOR = "\n "  # the published (LLaMA-mode) separator: newline + one space
_SYNONYM_SLOT = (0, 1, 2)  # the reference draws twice from 3-element lists it never uses
_PREAMBLE_RELATIONS = ("child", "similar", "opposite")
_PLACEHOLDER = re.compile(r"\{(P|T|The\(T\)|Cap\(T\))\}")


def capitalize(s: str) -> str:
    """Upper-case the first character (after one leading space, if any); keep the rest."""
    if s.startswith(" "):
        return " " + capitalize(s[1:])
    return s[:1].upper() + s[1:]


def strip_article(s: str) -> str:
    for art in ("a ", "an "):
        if s.startswith(art):
            return s[len(art):]
    return s


def join_and(items: list[str]) -> str:
    """'a, b and c' (the last two joined by ' and ')."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Writer:
    """Appends strings and returns the ``[start, end)`` span of each."""

    def __init__(self, start: int = 0) -> None:
        self.parts: list[str] = []
        self.pos = start

    def add(self, s: str) -> Span:
        start = self.pos
        self.parts.append(s)
        self.pos += len(s)
        return (start, self.pos)

    def text(self) -> str:
        return "".join(self.parts)


def find_term(hay: str, term: str, *, last: bool = True) -> tuple[int, int] | None:
    """Case-insensitive whole-word match of ``term`` (optionally plural: +s/+es); span of the
    term itself, plural suffix excluded (the reference's rule, with the term escaped)."""
    tail = "" if term.endswith(".") else r"(?:s|es)?\b"
    ms = list(re.finditer(r"(?<![\w-])" + re.escape(term) + tail, hay, flags=re.IGNORECASE))
    if not ms:
        return None
    m = ms[-1] if last else ms[0]
    return (m.start(), m.start() + len(term))


# ---------------------------------------------------------------------------------------------
# questions and statements (GAR_SPEC 6.2, 6.3)

def _wh_to_statement(s: str, h1: Schema) -> str:
    stem = h1.meta.sub_wh
    if not stem or (h1.wh + " ") not in s or (stem + " ") in s:
        return s
    s = s.replace("who ", stem + " ").replace("who is", "who's")
    if " is " in s:
        raise GARDataError(f"cannot turn {s!r} into a statement: it already contains ' is '")
    return s.replace("?", " is")


_NEGATIONS = ((re.compile(r"\bhas\b"), "does not have"), (re.compile(r"\bowns\b"), "does not own"),
              (re.compile(" wants "), " does not want "), (re.compile(" arrived"), " did not arrive"))


def _negate(s: str, h1: Schema, fix_grammar: bool) -> str:
    if s.startswith("So "):
        s = s[3:]
    s = _wh_to_statement(s, h1)
    if re.search(r"\bis\b", s):
        s = re.sub(r"\bis\b", "is not", s)
    else:
        applied = 0
        for pat, rep in _NEGATIONS:
            new = pat.sub(rep, s)
            applied += new != s
            s = new
        if applied != 1:
            raise GARDataError(f"cannot negate {s!r}: {applied} verb substitutions apply, expected 1")
    first_not = re.search(r"\bnot\b", s)
    head = s[:first_not.start()] if first_not else s
    if "boy " in head or "girl " in head:
        s = s.replace("boy ", "boys ").replace("girl ", "girls ").replace(" does not", " do not")
        if fix_grammar:
            s = s.replace(" is not", " are not", 1)
    return s


def base_question(cell: Cell, profile: Profile, query: str) -> str:
    """The un-negated question of a row (GAR_SPEC 6.2 step 3), before capitalisation."""
    (s0, r0), (s1, r1) = cell.hop0, cell.hop1
    h0, h1 = profile.vocab[s0], profile.vocab[s1]
    qp = (h0.verbalizer(r0) + " " + query).strip()
    tq = cell.task_row.query_template
    if cell.swap_qa:
        return tq.replace("{X}", h1.wh) + " " + qp + "?" + h1.verbalizer(r1)
    return tq.replace("{X}", qp) + h1.verbalizer(r1)


def question(cell: Cell, profile: Profile, query: str) -> str:
    """The question shown in a generation row."""
    q = base_question(cell, profile, query)
    if cell.negate:
        q = _negate(q, profile.vocab[cell.hop1[0]], profile.fix_grammar)
    return capitalize(q)


def statement(cell: Cell, profile: Profile, query: str) -> str:
    """The body of a classification statement (after 'that ', before the answer)."""
    h1 = profile.vocab[cell.hop1[0]]
    s = base_question(cell, profile, query)
    if cell.negate:
        s = _negate(s, h1, profile.fix_grammar)
    s = _wh_to_statement(s.replace("So ", ""), h1)
    if profile.fix_grammar and s.startswith("In other words, "):
        s = s[len("In other words, "):]
    return s


# ---------------------------------------------------------------------------------------------
# rows and instances (GAR_SPEC 6.1, 6.4 - 6.7)

def _item(w: _Writer, template: str, person: str, thing: str, profile: Profile) -> tuple[Span, Span]:
    """Write one context item; return the spans of (person, thing)."""
    if profile.fix_grammar and thing in profile.plural_things:
        template = template.replace("{The(T)} is ", "{The(T)} are ")
    spans: dict[str, Span] = {}
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        w.add(template[pos:m.start()])
        slot = m.group(1)
        if slot == "P":
            spans["P"] = w.add(person)
        elif slot == "T":
            spans["T"] = w.add(thing)
        elif slot == "Cap(T)":
            spans["T"] = w.add(capitalize(thing))
        else:  # The(T)
            if thing[:1].isupper() and not profile.fix_grammar:
                spans["T"] = w.add(thing)
            else:
                w.add("The ")
                spans["T"] = w.add(strip_article(thing))
        pos = m.end()
    w.add(template[pos:])
    return spans["P"], spans["T"]


def last_unit(text: str, end: int) -> Span:
    """Span of the last word or punctuation mark ending at ``end``."""
    m = re.search(r"(\w+|[^\w\s])$", text[:end])
    assert m is not None
    return (m.start(), m.end())


@dataclass(frozen=True)
class RenderedRow:
    text: str
    spans: dict[str, tuple[Span, ...]]
    answer_start: int  # offset (in the whole text) of the answer (gen) or label (cls)


def render_row(cell: Cell, profile: Profile, row: RowInfo, start: int) -> RenderedRow:
    """One row (context, question/statement, answer/label), spans offset by ``start``."""
    w = _Writer(start)
    cls = cell.family == "cls"
    w.add("Premise: < " if cls else "< ")
    template = cell.task_row.item_template_reversed if cell.rev_item2str else cell.task_row.item_template_forward
    key_spans: list[Span] = []
    value_spans: list[Span] = []
    for i, (k, v) in enumerate(zip(row.keys, row.values)):
        if i:
            w.add(" ")
        if cell.swap_qa:  # key is the thing, value the person; sentences stay person-first
            vs, ks = _item(w, template, v, k, profile)
        else:
            ks, vs = _item(w, template, k, v, profile)
        key_spans.append(ks)
        value_spans.append(vs)
    w.add(" >. ")
    if cls:
        w.add(CLS_PREFIX)
        body = statement(cell, profile, row.query)
        q_region = w.add(body)
        w.add(" ")
        a_span = w.add(row.shown_answer)
        w.add("? Answer: ")
        answer_start = w.pos
        w.add(row.label or "")
    else:
        q_region = w.add(question(cell, profile, row.query))
        w.add(" ")
        answer_start = w.pos
        a_span = w.add(row.shown_answer)
    text = w.text()
    region = text[q_region[0] - start:q_region[1] - start]
    q = find_term(region, row.query)
    if q is None:
        raise GARDataError(f"query {row.query!r} not found in {region!r}")
    spans: dict[str, list[Span]] = {
        "row": [(start, w.pos)],
        "K": [key_spans[row.true_index]],
        "V": [value_spans[row.true_index]],
        "Q": [(q_region[0] + q[0], q_region[0] + q[1])],
        "A": [a_span],
        "K'": [s for i, s in enumerate(key_spans) if i != row.true_index],
        "V'": [s for i, s in enumerate(value_spans) if i != row.true_index],
        "R": [],
        "END": [tuple(x + start for x in last_unit(text, answer_start - start - 1))],
    }
    if cell.negate:
        nots = list(re.finditer(r"\bnot\b", region))
        if nots:
            spans["R"] = [(q_region[0] + nots[-1].start(), q_region[0] + nots[-1].end())]
    return RenderedRow(text, {role: tuple(v) for role, v in spans.items()}, answer_start)


def preamble(rng: random.Random, cell: Cell, profile: Profile, rows: list[RowInfo]) -> str | None:
    """The relation-candidates line (GAR_SPEC 6.6), drawing exactly as the reference does."""
    s1, r1 = cell.hop1
    if not cell.task_row.preamble_allowed or r1.removeprefix("neg_") not in _PREAMBLE_RELATIONS:
        return None
    candidates = list(dict.fromkeys(a for row in rows for a in row.answers))
    order = rng.sample(candidates, len(candidates))  # drawn even when no line is printed
    name = profile.vocab[s1].meta.name
    return f"{capitalize(name)} include {join_and(order)}." if name else None


DRAW_PREAMBLE = object()


def render_instance(rng: random.Random, cell: Cell, profile: Profile, rows: list[RowInfo],
                    pre: "str | None | object" = DRAW_PREAMBLE) -> tuple[str, list[dict[str, tuple[Span, ...]]], int, str | None]:
    """Whole text, per-row spans, the offset of the test row's answer/label, and the preamble
    line. ``pre`` given: reuse that preamble line (v1 twins share theirs) instead of drawing one."""
    rng.choice(_SYNONYM_SLOT)
    rng.choice(_SYNONYM_SLOT)
    if pre is DRAW_PREAMBLE:
        pre = preamble(rng, cell, profile, rows)
    parts: list[str] = []
    pos = 0
    if pre is not None:
        parts.append(pre + "\n")
        pos = len(parts[0])
    spans = []
    answer_start = 0
    for i, row in enumerate(rows):
        if i:
            parts.append(ROW_SEPARATOR)
            pos += len(ROW_SEPARATOR)
        rr = render_row(cell, profile, row, pos)
        parts.append(rr.text)
        pos += len(rr.text)
        spans.append(rr.spans)
        answer_start = rr.answer_start
    parts.append("\n")
    return "".join(parts), spans, answer_start, pre
