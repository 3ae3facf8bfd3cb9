"""Validate GAR data: our records (JSON lines / parquet) or the published ``GAR_data.jsonl``.

``validate_records(records)`` and ``validate_file(path)`` return a ``ValidationReport``.

Errors (the data is wrong):

* ``span``      every role span of every row covers its string (K, V, Q, A, K', V', R, row, END);
* ``format``    ``text == prompt + DELIMITER + answer + TERMINATOR``, answer/label/choices agree,
                the rows are laid out as the renderer writes them;
* ``vocab``     a row string is not in the profile's vocabulary, or a row is malformed;
* ``semantics`` re-solving the row through the relational loop (GAR_SPEC 8, the generator's
                *formal* semantics) gives the record's answer / label;
* ``pairs``     classification twins share ``pair_id`` and differ only in the test row's label
                and answer; the test-row labels are balanced per ``task_id``;
* ``id``        ids are unique; ``task_id`` parses and matches the record's fields;
* ``parse`` / ``shape`` (published format) the text reads as rows of the task's templates.

Warnings (the data is as generated, but a reader may stumble; DATASET_STATS sections 4 and 8),
counted per category: see ``WARNINGS``.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .errors import GARDataError, GARError
from .io import iter_dicts
from .grid import Cell, parse_task_id
from .parse import TextParser
from .profiles import PROFILES, Profile, load_profile
from .records import DELIMITER, ROLES, TERMINATOR, GARRecord, RowInfo
from .render import ROW_SEPARATOR
from .schemas import Relation, Schema, SymSchema, TreeSchema

MAX_ERRORS = 50
MAX_EXAMPLES = 3
LABELS = ("Yes", "No")

# category -> (unit, description)
WARNINGS: dict[str, tuple[str, str]] = {
    "multiple_valid_answers": ("gen rows", "more than one answer is valid (synonym groups of 3+ words)"),
    "human:label_disagrees": ("cls rows", "a human reading gives the other label"),
    "human:answer_not_derivable": ("gen rows", "a human reading does not give the answer shown"),
    "similar:query_in_context": ("rows", "the query adjective itself appears among the keys"),
    "similar:answer_in_context": ("rows", "a valid answer adjective itself appears among the values"),
    "double_listed_person": ("context items", "a person listed under two occupations"),
    "quirk:plural_is": ("instances", "'The <plural> is X's.'"),
    "quirk:swiming": ("instances", "misspelt 'swiming'"),
    "quirk:splotless": ("instances", "misspelt 'splotless'"),
    "quirk:boys_is_not": ("instances", "'The boys is not' / 'the girls is not'"),
    "quirk:that_In_other_words": ("instances", "'... that In other words, ...'"),
    "quirk:tshirt_no_article": ("instances", "'T-shirt is X's.' without article"),
    "quirk:rosie_franklin": ("instances", "'Rosie Franklin' (Rosalind)"),
    "quirk:bare_noun": ("instances", "thing without article after has/owns ('has rabbit.')"),
    "quirk:lowercase_item": ("instances", "context item starting lower-case ('. bpost attracts')"),
    "quirk:lowercase_answer": ("instances", "lower-case answer after '?' ('? the boy')"),
}
_CAUSES = {"similar": "similar (reflexive / contradicted negation)",
           "double_listed_person": "double-listed person"}


# ---------------------------------------------------------------------------------------------
# the report

@dataclass
class ValidationReport:
    n_records: int = 0
    errors: list[str] = field(default_factory=list)
    error_counts: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    source: str | None = None
    format: str | None = None

    @property
    def ok(self) -> bool:
        return not self.error_counts

    def error(self, check: str, where: str, msg: str) -> None:
        self.error_counts[check] += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{where}: [{check}] {msg}")

    def warn(self, category: str, example: str) -> None:
        self.warnings[category] += 1
        ex = self.examples.setdefault(category, [])
        if len(ex) < MAX_EXAMPLES and example not in ex:
            ex.append(example)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (``dataclasses.asdict`` would mangle the Counters)."""
        return {"ok": self.ok, "n_records": self.n_records, "format": self.format, "source": self.source,
                "errors": list(self.errors), "error_counts": dict(self.error_counts),
                "warnings": dict(self.warnings), "examples": {k: list(v) for k, v in self.examples.items()}}

    def to_text(self) -> str:
        head = f"{self.n_records} records"
        if self.format:
            head += f" ({self.format} format)"
        if self.source:
            head += f" from {self.source}"
        n_err = sum(self.error_counts.values())
        lines = [f"{head}: {'OK' if self.ok else 'FAILED'}, {n_err} errors, "
                 f"{sum(self.warnings.values())} warnings"]
        if self.error_counts:
            lines.append("errors by check:")
            lines += [f"  {k:<12} {v}" for k, v in sorted(self.error_counts.items())]
            lines += [f"  - {e}" for e in self.errors[:10]]
            if n_err > 10:
                lines.append(f"  ... {n_err - 10} more")
        if self.warnings:
            lines.append("warnings by category:")
            for k in sorted(self.warnings):
                unit, desc = WARNINGS.get(k.split("[")[0], ("", ""))
                lines.append(f"  {k:<48} {self.warnings[k]:>5} {unit}" + (f"  ({desc})" if desc else ""))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# relational semantics: formal (the generator's relations) and human (DATASET_STATS 4)

def _aliases(schema: Schema) -> dict[str, frozenset[str]]:
    """Person -> all categories of the names that denote the same person ('Dr. X' = 'X')."""
    if not (isinstance(schema, TreeSchema) and schema.is_person):
        return {}
    groups: dict[str, set[str]] = defaultdict(set)
    for m in schema.members:
        groups[m.removeprefix("Dr. ")].add(schema.category_of[m])
    return {m: frozenset(groups[m.removeprefix("Dr. ")]) for m in schema.members
            if len(groups[m.removeprefix("Dr. ")]) > 1}


class _Hops:
    """The two hops of one task with membership sets, and the row solver."""

    def __init__(self, vocab, hop0: tuple[str, str], hop1: tuple[str, str]) -> None:
        (s0, r0), (s1, r1) = hop0, hop1
        self.h0, self.h1 = vocab[s0], vocab[s1]
        self.rel0: Relation = self.h0.relation(r0)
        self.rel1: Relation = self.h1.relation(r1)
        self.negated = self.rel0.negated
        self.base0: Relation = self.h0.relation(self.rel0.base)
        self.dom0, self.cod0 = frozenset(self.rel0.domain), frozenset(self.rel0.codomain)
        self.dom1, self.cod1 = frozenset(self.rel1.domain), frozenset(self.rel1.codomain)
        self.sym0 = isinstance(self.h0, SymSchema) and self.rel0.base == "similar"
        self.sym1 = isinstance(self.h1, SymSchema) and self.rel1.base == "similar"
        self.alias0 = _aliases(self.h0) if self.rel0.base == "child" else {}
        self.alias1 = _aliases(self.h1) if self.rel1.base == "child" else {}
        self.double_listed = frozenset(_aliases(self.h0)) | frozenset(_aliases(self.h1))

    def related0(self, q: str, reflexive: bool = False, multi: bool = False) -> set[str]:
        """Keys related to the query by the un-negated hop-0 relation."""
        out = set(self.base0(q))
        if reflexive and self.sym0:
            out.add(q)
        if multi:
            out |= {p for p, cats in self.alias0.items() if q in cats}
        return out

    def inv1(self, v: str, reflexive: bool = False, multi: bool = False) -> set[str]:
        """Answers that reach the value ``v`` through hop 1."""
        out = set(self.rel1.inv(v))
        if reflexive and self.sym1:
            out.add(v)
        if multi and v in self.alias1:
            out |= self.alias1[v]
        return out

    def selected(self, keys: Sequence[str], q: str, reflexive: bool = False, multi: bool = False) -> list[int]:
        rel = self.related0(q, reflexive, multi)
        return [i for i, k in enumerate(keys) if (k in rel) != self.negated]

    def reachable(self, keys: Sequence[str], values: Sequence[str], q: str) -> tuple[list[int], set[str]]:
        """Formal semantics: (query-selected columns, answers reachable from their values)."""
        sel = self.selected(keys, q)
        return sel, set().union(*(self.inv1(values[i]) for i in sel))

    def holds(self, keys: Sequence[str], values: Sequence[str], q: str, a: str,
              reflexive: bool, multi: bool) -> bool:
        """Whether the row's statement with answer ``a`` holds under a human reading: the
        extended relations, and a negated statement is false if ``a`` is also reachable from
        a column that satisfies the un-negated relation."""
        sel = set(self.selected(keys, q, reflexive, multi))
        ok = any(a in self.inv1(values[i], reflexive, multi) for i in sel)
        if ok and self.negated:
            ok = not any(a in self.inv1(values[i], reflexive, multi)
                         for i in range(len(keys)) if i not in sel)
        return ok


@lru_cache(maxsize=None)
def _hops(profile: str, hop0: tuple[str, str], hop1: tuple[str, str]) -> _Hops:
    return _Hops(load_profile(profile).vocab, hop0, hop1)


def _check_row(rep: ValidationReport, where: str, hops: _Hops, family: str, keys: Sequence[str],
               values: Sequence[str], query: str, shown: str, label: str | None, text: str,
               info: RowInfo | None = None) -> None:
    """Checks (3) and the semantic warnings for one row; ``info`` when the record has columns."""
    unknown = [f"{what} {s!r}" for what, s, known in
               [("query", query, hops.dom0), ("answer", shown, hops.dom1)]
               + [("key", k, hops.cod0) for k in keys] + [("value", v, hops.cod1) for v in values]
               if s not in known]
    if unknown:
        rep.error("vocab", where, f"not in the vocabulary of {hops.rel0.name}/{hops.rel1.name}: "
                  + ", ".join(unknown))
        return
    sel, reach = hops.reachable(keys, values, query)
    if not sel:
        rep.error("semantics", where, f"no context key is related to the query {query!r} by {hops.rel0.name}")
        return
    if info is not None:
        t = info.true_index
        if t not in sel:
            rep.error("semantics", where, f"the query {query!r} does not select the true column "
                      f"({keys[t]!r} not in {hops.rel0.name}({query!r}))")
        for j in range(len(keys)):
            if (keys[j] in hops.related0(info.queries[j])) == hops.negated or \
                    info.answers[j] not in hops.inv1(values[j]):
                rep.error("semantics", where, f"column {j} is not a loop: {info.queries[j]!r} -> "
                          f"{keys[j]!r} -> {values[j]!r} -> {info.answers[j]!r}")
        if info.shown_index != t and (info.queries[info.shown_index] == query
                                      or info.answers[info.shown_index] == info.true_answer):
            rep.error("semantics", where, "the 'No' column shares the query or the true answer")
    if family == "gen":
        if shown not in reach:
            rep.error("semantics", where, f"answer {shown!r} is not reachable (valid: {sorted(reach)})")
            return
        if len(reach) > 1:
            rep.warn("multiple_valid_answers", f"{where}: {sorted(reach)}: {text}")
    else:
        expected = "Yes" if shown in reach else "No"
        if label != expected:
            rep.error("semantics", where, f"label {label!r}, but {shown!r} is "
                      f"{'' if expected == 'Yes' else 'not '}reachable: expected {expected!r}")
            return
    # human semantics (DATASET_STATS 4): reflexive similar, double-listed persons, contradiction
    if hops.sym0 or hops.sym1 or hops.alias0 or hops.alias1:
        formal = shown in reach
        if hops.holds(keys, values, query, shown, True, True) != formal:
            cat = "human:answer_not_derivable" if family == "gen" else "human:label_disagrees"
            rep.warn(cat, f"{where}: {text}")
            for cause, flags in (("similar", (True, False)), ("double_listed_person", (False, True))):
                if hops.holds(keys, values, query, shown, *flags) != formal:
                    rep.warn(f"{cat}[{cause}]", f"{where}: {text}")
    if hops.sym0 and query in keys:
        rep.warn("similar:query_in_context", f"{where}: {text}")
    if hops.sym1 and reach & set(values):
        rep.warn("similar:answer_in_context", f"{where}: {text}")
    for s in (*keys, *values):
        if s in hops.double_listed:
            rep.warn("double_listed_person", f"{where}: {s}")


# ---------------------------------------------------------------------------------------------
# text quirks (DATASET_STATS 8)

@lru_cache(maxsize=None)
def _quirk_patterns() -> tuple[tuple[str, re.Pattern], ...]:
    paper = load_profile("paper").vocab
    plural = sorted(load_profile("v1").plural_things, key=len, reverse=True)
    things = {m for sid in ("kinds_of_things", "capabilities_of_things") for m in paper[sid].members
              if m[:1].islower()}
    alt = lambda ws: "|".join(re.escape(w) for w in sorted(ws, key=len, reverse=True))  # noqa: E731
    return (
        ("quirk:plural_is", re.compile(rf"\bThe (?:{alt(plural)}) is\b")),
        ("quirk:swiming", re.compile(r"\bswiming\b", re.I)),
        ("quirk:splotless", re.compile(r"\bsplotless\b", re.I)),
        ("quirk:boys_is_not", re.compile(r"\b[Tt]he (?:boys|girls) is not\b")),
        ("quirk:that_In_other_words", re.compile(r"\bthat In other words\b")),
        ("quirk:tshirt_no_article", re.compile(r"(?:< |\. )T-shirt is\b")),
        ("quirk:rosie_franklin", re.compile(r"\bRosie Franklin\b")),
        ("quirk:bare_noun", re.compile(rf"\b(?:has|owns) (?:{alt(things)})\b")),
        ("quirk:lowercase_item", re.compile(r"(?:< |\. )[a-z]")),
        ("quirk:lowercase_answer", re.compile(r"\? [a-z][^?\n]*\n\Z")),
    )


def _check_quirks(rep: ValidationReport, where: str, text: str) -> None:
    for cat, pat in _quirk_patterns():
        m = pat.search(text)
        if m:
            rep.warn(cat, f"{where}: {text[max(0, m.start() - 20):m.end() + 20]!r}")


# ---------------------------------------------------------------------------------------------
# our record format

def _same(surface: str, s: str) -> bool:
    """Equal up to the case of the first letter (and a dropped leading article)."""
    for cand in (s, s[2:] if s.startswith("a ") else None, s[3:] if s.startswith("an ") else None):
        if cand is not None and surface[1:] == cand[1:] and surface[:1].lower() == cand[:1].lower():
            return True
    return False


_PLURAL_TAIL = re.compile(r"(?:s|es)?(?!\w)")
_END_UNIT = re.compile(r"\w+|[^\w\s]")


def _valid_span(sp: Any, n: int) -> bool:
    return (isinstance(sp, (tuple, list)) and len(sp) == 2 and all(isinstance(x, int) for x in sp)
            and 0 <= sp[0] <= sp[1] <= n)


def _check_spans(rep: ValidationReport, where: str, rec: GARRecord, i: int, info: RowInfo) -> None:
    """Check (1) for row ``i``: every role's span covers its string."""
    text, row_spans = rec.text, rec.spans[i]
    t = info.true_index
    others = [j for j in range(len(info.keys)) if j != t]
    expected = {"K": [info.keys[t]], "V": [info.values[t]], "Q": [info.query], "A": [info.shown_answer],
                "K'": [info.keys[j] for j in others], "V'": [info.values[j] for j in others],
                "R": ["not"] if rec.negate else []}
    missing = [r for r in ROLES if r not in row_spans]
    if missing:
        rep.error("span", where, f"row {i + 1}: missing roles {missing}")
        return
    bad = [r for r in ROLES if not all(_valid_span(sp, len(text)) for sp in row_spans[r])]
    if bad:
        rep.error("span", where, f"row {i + 1}: malformed or out-of-bounds spans for {bad}")
        return
    if len(row_spans["row"]) != 1 or len(row_spans["END"]) != 1:
        rep.error("span", where, f"row {i + 1}: 'row' and 'END' need exactly one span")
        return
    r0, r1 = row_spans["row"][0]
    for role, strings in expected.items():
        spans = row_spans[role]
        if len(spans) != len(strings):
            rep.error("span", where, f"row {i + 1}: {role} has {len(spans)} spans, expected {len(strings)}")
            continue
        for (s, e), want in zip(spans, strings):
            got = text[s:e]
            if not (r0 <= s and e <= r1) or not _same(got, want) or not _PLURAL_TAIL.match(text, e) \
                    or (s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_-")):
                rep.error("span", where, f"row {i + 1}: {role} span [{s}, {e}) = {got!r}, expected {want!r}")
    (s, e), = row_spans["END"]
    follow = info.label if rec.family == "cls" else info.shown_answer
    if not (r0 <= s < e <= r1 and _END_UNIT.fullmatch(text[s:e])
            and text.startswith(DELIMITER + (follow or ""), e)):
        rep.error("span", where, f"row {i + 1}: END span [{s}, {e}) = {text[s:e]!r} is not the last unit "
                  f"before {DELIMITER + (follow or '')!r}")


def _check_layout(rep: ValidationReport, where: str, rec: GARRecord) -> bool:
    """Rows are laid out as [preamble '\\n'] row ('\\n ' row)* '\\n'; False if spans are unusable."""
    rows = []
    for i, sp in enumerate(rec.spans):
        rs = sp.get("row", ())
        if len(rs) != 1 or not _valid_span(rs[0], len(rec.text)):
            rep.error("span", where, f"row {i + 1}: malformed 'row' span {list(rs)}")
            return False
        rows.append(rs[0])
    text = rec.text
    start = rows[0][0]
    if start and (text[start - 1] != "\n" or "\n" in text[:start - 1]):
        rep.error("format", where, "the text before the first row is not one preamble line")
    for (_, e), (s, _) in zip(rows, rows[1:]):
        if text[e:s] != ROW_SEPARATOR:
            rep.error("format", where, f"rows are not separated by {ROW_SEPARATOR!r} at {e}")
    if rows[-1][1] != len(text) - len(TERMINATOR):
        rep.error("format", where, "the last row does not end right before the final newline")
    return True


def _check_record(rep: ValidationReport, rec: GARRecord, profile: str | Profile | None) -> None:
    where = rec.id
    # (5) task_id and fields
    try:
        cell = parse_task_id(rec.task_id)
    except GARDataError as e:
        rep.error("id", where, str(e))
        cell = None
    pname = profile.name if isinstance(profile, Profile) else (profile or rec.profile)
    if pname not in PROFILES:
        rep.error("format", where, f"unknown profile {pname!r}")
        return
    if cell is not None:
        have = dict(family=rec.family, negate=rec.negate, swap_qa=rec.swap_qa, rev_item2str=rec.rev_item2str,
                    task_row=rec.task_row, hop0=(rec.query_schema, rec.rel0), hop1=(rec.answer_schema, rec.rel1),
                    n_r=rec.n_r)
        want = dict(family=cell.family, negate=cell.negate, swap_qa=cell.swap_qa, rev_item2str=cell.rev_item2str,
                    task_row=cell.task_row.row, hop0=cell.hop0, hop1=cell.hop1, n_r=cell.n_r)
        diff = [f"{k}={have[k]!r} (task_id: {want[k]!r})" for k in have if have[k] != want[k]]
        if diff:
            rep.error("id", where, "record fields disagree with task_id: " + ", ".join(diff))
    # (2) delimiter rule, answer, label, choices
    if rec.text != rec.prompt + DELIMITER + rec.answer + TERMINATOR:
        rep.error("format", where, "text != prompt + DELIMITER + answer + TERMINATOR")
    if rec.family == "cls":
        if rec.label not in LABELS or rec.answer != rec.label or tuple(rec.choices) != LABELS:
            rep.error("format", where, f"cls needs answer == label in {LABELS} and choices == {list(LABELS)}: "
                      f"answer={rec.answer!r}, label={rec.label!r}, choices={list(rec.choices)}")
    elif rec.family == "gen":
        if rec.answer not in rec.choices or rec.label is not None:
            rep.error("format", where, f"gen answer {rec.answer!r} not in choices {list(rec.choices)} "
                      f"(or label {rec.label!r} set)")
    else:
        rep.error("format", where, f"unknown family {rec.family!r}")
        return
    # rows
    if not rec.rows or len(rec.rows) != len(rec.spans):
        rep.error("format", where, f"{len(rec.rows)} rows but {len(rec.spans)} span rows")
        return
    for i, info in enumerate(rec.rows):
        n = len(info.keys)
        if n < 2 or not (len(info.values) == len(info.answers) == len(info.queries) == n) \
                or not all(isinstance(x, int) and 0 <= x < n for x in (info.true_index, info.shown_index)):
            rep.error("vocab", where, f"row {i + 1}: malformed columns or indices")
            return
        if rec.family == "gen" and (info.shown_index != info.true_index or info.label is not None):
            rep.error("format", where, f"row {i + 1}: gen row shows another column or has a label")
        if rec.family == "cls" and (info.label not in LABELS
                                    or (info.label == "Yes") != (info.shown_index == info.true_index)):
            rep.error("format", where, f"row {i + 1}: label {info.label!r} does not match the column shown")
    final = rec.rows[-1]
    if rec.answer != (final.label if rec.family == "cls" else final.shown_answer):
        rep.error("format", where, f"answer {rec.answer!r} is not the test row's "
                  f"{'label' if rec.family == 'cls' else 'answer'}")
    # (1) spans, (3) semantics
    if not _check_layout(rep, where, rec):
        return
    try:
        hops = _hops(pname, (rec.query_schema, rec.rel0), (rec.answer_schema, rec.rel1))
    except GARError as e:  # unknown schema or relation
        rep.error("vocab", where, str(e))
        return
    for i, info in enumerate(rec.rows):
        _check_spans(rep, where, rec, i, info)
        (s, e), = rec.spans[i]["row"]
        _check_row(rep, f"{where} row {i + 1}", hops, rec.family, info.keys, info.values, info.query,
                   info.shown_answer, info.label, rec.text[s:e], info)
    _check_quirks(rep, where, rec.text)


def _twins_differ(a: GARRecord, b: GARRecord) -> bool:
    """Whether classification twins differ beyond the test row's answer and label."""
    ra, rb = a.rows, b.rows
    same_rows = (len(ra) == len(rb) and ra[:-1] == rb[:-1] and a.task_id == b.task_id
                 and (ra[-1].keys, ra[-1].values, ra[-1].answers, ra[-1].queries, ra[-1].true_index)
                 == (rb[-1].keys, rb[-1].values, rb[-1].answers, rb[-1].queries, rb[-1].true_index))
    if same_rows:
        try:
            texts = [[t.text[s:e] for sp in t.spans[:-1] for (s, e) in sp["row"]]
                     + [t.text[t.spans[-1]["row"][0][0]:t.spans[-1]["A"][0][0]]] for t in (a, b)]
            same_rows = texts[0] == texts[1]
        except (IndexError, KeyError, ValueError, TypeError):
            same_rows = False  # malformed spans are reported by the span check
    return not same_rows


class _PairState:
    """Check (4) over a stream: per ``pair_id`` only its ids and, until the twin arrives, the first
    record (twins are adjacent in our files, so at most one record is held at a time)."""

    def __init__(self) -> None:
        self.ids: dict[str, list[str]] = {}
        self.pending: dict[str, GARRecord] = {}
        self.problems: dict[str, list[str]] = {}
        self.balance: dict[str, Counter] = defaultdict(Counter)

    def add(self, r: GARRecord) -> None:
        if r.family != "cls":
            return
        self.balance[r.task_id][r.label] += 1
        ids = self.ids.setdefault(r.pair_id, [])
        ids.append(r.id)
        if len(ids) == 1:
            self.pending[r.pair_id] = r
        elif len(ids) == 2:
            a, b = self.pending.pop(r.pair_id), r
            msgs = []
            if {a.label, b.label} != set(LABELS):
                msgs.append(f"twins {a.id}, {b.id} have labels {a.label!r}, {b.label!r}")
            if _twins_differ(a, b):
                msgs.append(f"twins {a.id}, {b.id} differ beyond the test row's answer and label")
            if msgs:
                self.problems[r.pair_id] = msgs

    def finish(self, rep: ValidationReport) -> None:
        for pid, ids in self.ids.items():
            if len(ids) != 2:
                rep.error("pairs", pid, f"cls pair has {len(ids)} records, expected 2 ({', '.join(ids)})")
                continue
            for msg in self.problems.get(pid, ()):
                rep.error("pairs", pid, msg)
        for task, c in self.balance.items():
            if c["Yes"] != c["No"]:
                rep.error("pairs", task, f"test-row labels unbalanced: {c['Yes']} Yes / {c['No']} No")


def validate_records(records: Iterable[GARRecord], profile: str | Profile | None = None) -> ValidationReport:
    """Validate our records; ``profile`` overrides each record's ``profile`` field.

    ``records`` may be a lazy iterator: each record is checked and dropped; what spans records
    (duplicate ids, twins, label balance) keeps compact per-record state."""
    rep = ValidationReport(format="records")
    seen: set[str] = set()
    pairs = _PairState()
    for r in records:
        rep.n_records += 1
        if r.id in seen:
            rep.error("id", r.id, "duplicate id")
        seen.add(r.id)
        _check_record(rep, r, profile)
        pairs.add(r)
    pairs.finish(rep)
    return rep


# ---------------------------------------------------------------------------------------------
# the published format

def validate_published(lines: Iterable[Mapping[str, Any]], profile: str | Profile = "paper") -> ValidationReport:
    """Validate published-format dicts (``task_id``, ``texts``, optional ``ranges``), in file order.

    ``lines`` may be a lazy iterator: per task only the label counts and the last unpaired cls line
    are held (twins are consecutive cls lines of a task)."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    parser = TextParser(prof)
    rep = ValidationReport(format="published")
    counts: dict[str, Counter] = {}  # task_id -> test-row labels of its cls lines
    waiting: dict[str, tuple[str, Any] | None] = {}  # task_id -> the cls line waiting for its twin
    n_cls: Counter = Counter()
    for n, d in enumerate(lines, 1):
        rep.n_records += 1
        where, text = f"line {n}", d["texts"]
        try:
            cell: Cell = parse_task_id(d["task_id"])
        except GARDataError as e:
            rep.error("id", where, str(e))
            continue
        try:
            parsed = parser.parse(cell, text)
        except GARDataError as e:
            rep.error("parse", where, str(e))
            continue
        if len(parsed.rows) != 2:
            rep.error("shape", where, f"{len(parsed.rows)} rows, expected 2")
        ranges = d.get("ranges")
        if ranges is not None and not (isinstance(ranges, list) and len(ranges) == len(parsed.rows)
                                       and all(isinstance(x, dict) for x in ranges)):
            rep.error("shape", where, "ranges is not a list of one object per row")
        hops = _hops(prof.name, cell.hop0, cell.hop1)
        for i, row in enumerate(parsed.rows, 1):
            _check_row(rep, f"{where} row {i}", hops, cell.family, row.keys, row.values, row.query,
                       row.answer, row.label, row.text)
        _check_quirks(rep, where, text)
        if cell.family == "cls":
            task = d["task_id"]
            counts.setdefault(task, Counter())[parsed.rows[-1].label] += 1
            n_cls[task] += 1
            first = waiting.get(task)
            if first is None:
                waiting[task] = (where, parsed)
                continue
            waiting[task] = None
            (wa, a), (wb, b) = first, (where, parsed)
            fa, fb = a.rows[-1], b.rows[-1]
            if {fa.label, fb.label} != set(LABELS) or a.rows[:-1] != b.rows[:-1] \
                    or (fa.keys, fa.values, fa.query, fa.body) != (fb.keys, fb.values, fb.query, fb.body):
                rep.error("pairs", f"{wa}/{wb}", "consecutive cls lines of a task are not counter-paired twins")
    for task, c in counts.items():
        if c["Yes"] != c["No"]:
            rep.error("pairs", task, f"test-row labels unbalanced: {c['Yes']} Yes / {c['No']} No")
        if n_cls[task] % 2:
            rep.error("pairs", task, f"odd number of cls lines ({n_cls[task]})")
    return rep


# ---------------------------------------------------------------------------------------------
# files

_RECORD_FIELDS = tuple(f.name for f in fields(GARRecord))
_STR_FIELDS = ("id", "pair_id", "profile", "task_id", "family", "prompt", "answer", "text")


def validate_file(path: str | Path, profile: str | Profile | None = None) -> ValidationReport:
    """Validate a file of our records (jsonl of ``GARRecord.to_dict()`` or parquet) or the
    published ``GAR_data.jsonl`` format; the format is detected from the first record's keys.
    The file is read once, as a stream: memory does not grow with its size (any readable file:
    a FIFO or ``<(zcat f.jsonl.gz)`` works). Unreadable or malformed input raises
    ``GARDataError`` naming the file and line."""
    path = Path(path)
    items = iter_dicts(path)
    first_item = next(items, None)
    if first_item is None:
        raise GARDataError(f"{path}: no records")
    first = first_item[1]
    if not isinstance(first, dict):
        raise GARDataError(f"{path}, {first_item[0]}: expected a JSON object, got {type(first).__name__}")
    stream = itertools.chain([first_item], items)
    if "texts" in first and "rows" not in first:
        rep = validate_published(_published_dicts(path, stream), profile or "paper")
    else:
        rep = validate_records(_record_objects(path, stream), profile)
    rep.source = str(path)
    return rep


def _published_dicts(path: Path, items: Iterable[tuple[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for loc, d in items:
        if not isinstance(d, dict):
            raise GARDataError(f"{path}, {loc}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in ("task_id", "texts") if k not in d]
        if missing:
            raise GARDataError(f"{path}, {loc}: missing key(s) {', '.join(missing)}")
        if not isinstance(d["task_id"], str) or not isinstance(d["texts"], str):
            raise GARDataError(f"{path}, {loc}: task_id and texts must be strings")
        yield d


def _record_objects(path: Path, items: Iterable[tuple[str, Any]]) -> Iterator[GARRecord]:
    for loc, d in items:
        if not isinstance(d, dict):
            raise GARDataError(f"{path}, {loc}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in _RECORD_FIELDS if k not in d]
        if missing:
            raise GARDataError(f"{path}, {loc}: missing key(s) {', '.join(missing)}")
        wrong = [k for k in _STR_FIELDS if not isinstance(d[k], str)]
        if wrong or not isinstance(d["rows"], list) or not isinstance(d["spans"], list):
            raise GARDataError(f"{path}, {loc}: wrong type for {', '.join(wrong) or 'rows/spans'}")
        try:
            yield GARRecord.from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise GARDataError(f"{path}, {loc}: malformed record: {_plain_reason(e)}") from None


def _plain_reason(e: Exception) -> str:
    """The reason of a ``from_dict`` failure without Python's internal names (``RowInfo.__init__()``)."""
    msg = str(e)
    m = re.search(r"(unexpected keyword argument|missing \d+ required (?:positional|keyword-only) "
                  r"arguments?:?)\s*(.*)", msg)
    if isinstance(e, TypeError) and m:
        what = "unknown field" if m.group(1).startswith("unexpected") else "missing field(s)"
        return f"a row has an {what} {m.group(2)}" if what.startswith("unknown") else f"a row is {what} {m.group(2)}"
    if isinstance(e, KeyError):
        return f"missing field {e}"
    msg = re.sub(r"\b\w+\.__\w+__\(\)\s*", "", msg)
    return msg.splitlines()[0][:200] if msg else type(e).__name__
