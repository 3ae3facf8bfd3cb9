"""Compositionality sub-questions: every hop of a generation record's test row asked on its own.

For each generation record (``family == "gen"``) ``sub_records`` builds up to three records of the
same type (``GARRecord``, same delimiter rule, same metadata, ``rows`` = the parent's rows), linked
to the parent by ``pair_id = parent.id`` and ``id = parent.id + "/" + kind``; ``family`` is the kind:

* ``sub_assoc`` (always): the in-context association alone. Each row is the parent row's context
  followed by ``So`` and the item sentence of its true key cut before the value; the answer is the
  value. The item template is the forward one when the key comes first in it, else the reversed
  one (``So Barbara likes`` -> ``Milan``; swapped: ``So Milan attracts`` -> ``Barbara``). Spans:
  ``K``/``V``/``K'``/``V'`` in the context as in the parent, ``Q`` the key in the question.
* ``sub_hop1`` (hop-1 relation not ``equal``): the knowledge fact from the true value to the
  answer, e.g. ``Milan is a city of`` -> ``Italy``; ``Q`` spans the value.
* ``sub_hop0`` (hop-0 relation, ``neg_`` stripped, not ``equal``): the knowledge fact about the
  true key that hop 0 needs, e.g. ``James is`` -> ``the boy``; ``Q`` spans the key. For a negated
  relation it is the same *positive* fact about the true key (its category, which is not the
  query; for ``neg_similar`` its first synonym in vocabulary order), since "X is not a city of Y"
  has no single answer.

Fact templates are per schema, held as data in ``data/subq_templates.json`` (``{x}`` is the
subject, capitalised at the start of the sentence; ``is`` becomes ``are`` after a plural thing
when the profile fixes grammar, as in the items). Fact rows carry no context: a sub-question's
rows are the parent's demonstration rows' facts, then the test row's fact, separated as in the
benchmark (newline + space). The parent's preamble line (answer candidates) is dropped everywhere.
Unused roles are empty lists. Everything is deterministic (no randomness).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from functools import lru_cache
from importlib import resources
from typing import Iterable

from .errors import GARDataError
from .grid import TaskRow, load_task_rows
from .profiles import Profile, load_profile
from .records import DELIMITER, ROLES, TERMINATOR, GARRecord, RowInfo, Span
from .render import ROW_SEPARATOR, last_unit, strip_article, capitalize
from .schemas import Schema, SymSchema, TreeSchema

KINDS = ("sub_assoc", "sub_hop0", "sub_hop1")
_SLOT = re.compile(r"\{(P|T|The\(T\)|Cap\(T\))\}")
_CONTEXT_END = " >. "

RowParts = tuple[str, dict[str, list[Span]], int]  # row text, spans relative to it, answer offset


def sub_kinds(rel0: str, rel1: str) -> tuple[str, ...]:
    """The sub-question kinds of a generation record with these relations, in ``KINDS`` order."""
    kinds = ["sub_assoc"]
    if rel0.removeprefix("neg_") != "equal":
        kinds.append("sub_hop0")
    if rel1.removeprefix("neg_") != "equal":
        kinds.append("sub_hop1")
    return tuple(kinds)


@lru_cache(maxsize=None)
def fact_templates() -> dict[str, str]:
    """Schema id -> fact template (``{x}`` = subject), from ``data/subq_templates.json``."""
    try:
        data = json.loads(resources.files("gar_tasks").joinpath("data", "subq_templates.json")
                          .read_text(encoding="utf-8"))
        facts = data["fact"]
    except FileNotFoundError:
        raise GARDataError("package data file subq_templates.json is missing") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise GARDataError(f"subq_templates.json is malformed: {e}") from None
    for sid, t in facts.items():
        if not isinstance(t, str) or t.count("{x}") != 1 or t.rstrip() != t:
            raise GARDataError(f"subq_templates.json: template of {sid!r} needs exactly one '{{x}}' "
                               f"and no trailing space, got {t!r}")
    return dict(facts)


def fact_template(schema_id: str) -> str:
    try:
        return fact_templates()[schema_id]
    except KeyError:
        raise GARDataError(f"subq_templates.json has no fact template for schema {schema_id!r}") from None


def positive_fact(schema: Schema, x: str) -> str:
    """The canonical knowledge fact about ``x``: its category (tree) or first synonym (adjectives)."""
    if isinstance(schema, TreeSchema):
        try:
            return schema.category_of[x]
        except KeyError:
            raise GARDataError(f"{x!r} is not a member of schema {schema.id}") from None
    if isinstance(schema, SymSchema):
        syn = [w for w in schema.group_of.get(x, ()) if w != x]
        if not syn:
            raise GARDataError(f"{x!r} has no synonym in schema {schema.id}")
        return syn[0]
    raise GARDataError(f"schema {schema.id}: no knowledge fact for its set type")


def hop0_fact(rec: GARRecord, row: RowInfo, profile: Profile) -> tuple[str, str]:
    """(subject, answer) of the hop-0 fact of a row: the true key and what hop 0 says about it."""
    key = row.keys[row.true_index]
    if rec.rel0.removeprefix("neg_") not in ("child", "similar"):
        raise GARDataError(f"{rec.id}: no hop-0 sub-question for relation {rec.rel0!r}")
    if rec.rel0.startswith("neg_"):
        return key, positive_fact(profile.vocab[rec.query_schema], key)
    return key, row.query


def hop1_fact(rec: GARRecord, row: RowInfo) -> tuple[str, str]:
    """(subject, answer) of the hop-1 fact of a row: the true value and the row's answer."""
    if rec.rel1.removeprefix("neg_") not in ("child", "similar"):
        raise GARDataError(f"{rec.id}: no hop-1 sub-question for relation {rec.rel1!r}")
    return row.values[row.true_index], row.true_answer


# ---------------------------------------------------------------------------------------------
# rows

def _fact_row(template: str, subject: str, answer: str, profile: Profile) -> RowParts:
    before, after = template.split("{x}")
    if profile.fix_grammar and subject in profile.plural_things:
        after = re.sub(r"^ is\b", " are", after)
    surface = subject if before else capitalize(subject)
    q = (len(before), len(before) + len(surface))
    head = before + surface + after
    a0 = len(head) + len(DELIMITER)
    text = head + DELIMITER + answer
    return text, {"row": [(0, len(text))], "Q": [q], "A": [(a0, len(text))],
                  "END": [last_unit(text, a0 - len(DELIMITER))]}, a0


def _key_first_template(tr: TaskRow, swap: bool) -> str:
    """The item template whose first slot is the key (person slot unless swapped)."""
    for tpl in (tr.item_template_forward, tr.item_template_reversed):
        slots = [m.group(1) for m in _SLOT.finditer(tpl)]
        if len(slots) == 2 and (slots[0] == "P") != swap:
            return tpl
    raise GARDataError(f"task row {tr.row}: no item template starts with the "
                       f"{'thing' if swap else 'person'} slot")


def _assoc_row(rec: GARRecord, i: int, tr: TaskRow, profile: Profile) -> RowParts:
    row, sp = rec.rows[i], rec.spans[i]
    r0, r1 = sp["row"][0]
    rtext = rec.text[r0:r1]
    cut = rtext.find(_CONTEXT_END)
    if cut < 0:
        raise GARDataError(f"{rec.id} row {i + 1}: no context end {_CONTEXT_END!r}")
    context = rtext[:cut + len(_CONTEXT_END) - 1]  # up to and including '>.'
    spans: dict[str, list[Span]] = {
        role: [(a - r0, b - r0) for a, b in sp.get(role, ())] for role in ("K", "V", "K'", "V'")}
    key, value = row.keys[row.true_index], row.values[row.true_index]
    thing = key if rec.swap_qa else value
    tpl = _key_first_template(tr, rec.swap_qa)
    if profile.fix_grammar and thing in profile.plural_things:
        tpl = tpl.replace("{The(T)} is ", "{The(T)} are ")
    m_key, m_val = list(_SLOT.finditer(tpl))
    if m_val.group(1) not in ("P", "T"):
        raise GARDataError(f"task row {tr.row}: the value slot of {tpl!r} is not plain")
    parts = [context, " So ", tpl[:m_key.start()]]
    slot = m_key.group(1)
    if slot == "The(T)" and (profile.fix_grammar or not key[:1].isupper()):
        parts.append("the ")
        key_surface = strip_article(key)
    else:
        key_surface = key  # mid-sentence: no capital for {Cap(T)}
    q0 = len("".join(parts))
    parts += [key_surface, tpl[m_key.end():m_val.start()].rstrip()]
    spans["Q"] = [(q0, q0 + len(key_surface))]
    head = "".join(parts)
    a0 = len(head) + len(DELIMITER)
    text = head + DELIMITER + value
    spans.update({"row": [(0, len(text))], "A": [(a0, len(text))],
                  "END": [last_unit(text, a0 - len(DELIMITER))]})
    return text, spans, a0


# ---------------------------------------------------------------------------------------------
# records

def _assemble(parent: GARRecord, kind: str, rows: list[RowParts], choices: Iterable[str]) -> GARRecord:
    parts: list[str] = []
    spans = []
    pos = answer_start = 0
    for i, (text, sp, a0) in enumerate(rows):
        if i:
            parts.append(ROW_SEPARATOR)
            pos += len(ROW_SEPARATOR)
        spans.append({role: tuple((a + pos, b + pos) for a, b in sp.get(role, ())) for role in ROLES})
        answer_start = pos + a0
        parts.append(text)
        pos += len(text)
    parts.append(TERMINATOR)
    text = "".join(parts)
    answer = text[answer_start:spans[-1]["A"][0][1]]
    prompt = text[:answer_start - len(DELIMITER)]
    rid = f"{parent.id}/{kind}"
    if text != prompt + DELIMITER + answer + TERMINATOR:
        raise GARDataError(f"{rid}: text does not end with the delimiter, answer and terminator")
    return replace(parent, id=rid, pair_id=parent.id, family=kind, prompt=prompt, answer=answer,
                   label=None, choices=tuple(dict.fromkeys([answer, *choices])), text=text,
                   spans=tuple(spans))


def sub_question(parent: GARRecord, kind: str) -> GARRecord:
    """One sub-question record of a generation record (``kind`` in ``sub_kinds`` of it)."""
    if parent.family != "gen":
        raise GARDataError(f"{parent.id}: sub-questions are built from generation records only")
    if kind not in sub_kinds(parent.rel0, parent.rel1):
        raise GARDataError(f"{parent.id}: no {kind} sub-question for relations {parent.rel0}, {parent.rel1}")
    if not parent.rows or len(parent.rows) != len(parent.spans):
        raise GARDataError(f"{parent.id}: rows and spans are missing or disagree")
    profile = load_profile(parent.profile)
    final = parent.rows[-1]
    if kind == "sub_assoc":
        tr = load_task_rows()[parent.task_row]
        rows = [_assoc_row(parent, i, tr, profile) for i in range(len(parent.rows))]
        return _assemble(parent, kind, rows, final.values)
    if kind == "sub_hop1":
        tpl = fact_template(parent.answer_schema)
        rows = [_fact_row(tpl, *hop1_fact(parent, r), profile) for r in parent.rows]
        return _assemble(parent, kind, rows, final.answers)
    schema = profile.vocab[parent.query_schema]
    tpl = fact_template(parent.query_schema)
    rows = [_fact_row(tpl, *hop0_fact(parent, r, profile), profile) for r in parent.rows]
    others = [positive_fact(schema, k) for j, k in enumerate(final.keys) if j != final.true_index]
    return _assemble(parent, kind, rows, others)


def sub_records(parents: Iterable[GARRecord]) -> list[GARRecord]:
    """The sub-question records of every generation record among ``parents``, in order: for each
    parent its kinds in ``KINDS`` order. Classification records are skipped."""
    return [sub_question(p, kind) for p in parents if p.family == "gen"
            for kind in sub_kinds(p.rel0, p.rel1)]
