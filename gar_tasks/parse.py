"""Parse published-format GAR texts (``task_id`` + ``texts``) back into rows.

A row is read with the vocabulary of a profile and the cell of its ``task_id``: the context items
through the cell's item template (forward or reversed), the question or statement by looking it
up among the renderings of every possible query (``render.question`` / ``render.statement``), and
the shown answer and label from what follows. Nothing is guessed from free text: a string that is
not in the vocabulary, or a question the renderer cannot produce, is a parse error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from .errors import GARDataError
from .grid import Cell
from .profiles import Profile
from .records import TERMINATOR
from .render import CLS_PREFIX, ROW_SEPARATOR, capitalize, question, statement

_ROW_START = re.compile(r"(?:Premise: )?< ")
_SLOT = re.compile(r"\{(P|T|The\(T\)|Cap\(T\))\}")
_CLS_TAIL = "? Answer: "


@dataclass(frozen=True)
class ParsedRow:
    """One row as read from a text: context columns (key, value) in the order shown."""

    text: str
    keys: tuple[str, ...]
    values: tuple[str, ...]
    query: str
    answer: str  # the answer shown (gen: after the question; cls: in the statement)
    label: str | None  # cls only
    body: str  # the question (gen) or statement (cls) before the answer


@dataclass(frozen=True)
class ParsedText:
    preamble: str | None
    rows: tuple[ParsedRow, ...]


def split_rows(text: str) -> tuple[str | None, list[str]]:
    """(preamble line or None, row strings) of a published-layout text (GAR_SPEC 6.7)."""
    if not text.endswith(TERMINATOR):
        raise GARDataError("text does not end with a newline")
    lines = text[:-len(TERMINATOR)].split("\n")
    pre = None if _ROW_START.match(lines[0]) else lines.pop(0)
    if not lines:
        raise GARDataError("text has no row")
    rows = [lines[0]]
    for i, line in enumerate(lines[1:], 2):
        if not line.startswith(ROW_SEPARATOR[1:]):
            raise GARDataError(f"row {i} does not start with the row separator's space")
        rows.append(line[len(ROW_SEPARATOR) - 1:])
    return pre, rows


def _strip_article(s: str) -> str:
    for art in ("a ", "an "):
        if s.startswith(art):
            return s[len(art):]
    return s


class TextParser:
    """Parses rows of one profile's texts; per-template and per-question tables are cached."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._items: dict[tuple[int, bool], list] = {}
        self._questions: dict[tuple, dict[str, str]] = {}
        self._answers: dict[tuple[str, str], frozenset[str]] = {}

    # -- context items ------------------------------------------------------------------------

    def _item_pieces(self, cell: Cell) -> list:
        """The item template as pieces: ('lit', alternatives) or ('slot', name, surface->member)."""
        key = (cell.task_row.row, cell.rev_item2str)
        if key in self._items:
            return self._items[key]
        tr, vocab = cell.task_row, self.profile.vocab
        template = tr.item_template_reversed if cell.rev_item2str else tr.item_template_forward
        persons = vocab[tr.person_schema].members
        things = vocab[tr.thing_schema].members
        surfaces: dict[str, Mapping[str, str]] = {
            "P": {m: m for m in persons},
            "T": {m: m for m in things},
            "Cap(T)": {capitalize(m): m for m in things},
            # paper: 'T' when T is capitalised, else 'The T'; v1 always writes 'The T'
            "The(T)": {**{"The " + _strip_article(m): m for m in things},
                       **{m: m for m in things if m[:1].isupper()}},
        }
        pieces: list = []
        pos, prev = 0, None
        for m in _SLOT.finditer(template):
            if m.start() > pos:
                pieces.append(("lit", self._literal(template[pos:m.start()], prev)))
            pieces.append(("slot", "P" if m.group(1) == "P" else "T", surfaces[m.group(1)]))
            prev, pos = m.group(1), m.end()
        if pos == len(template):
            raise GARDataError(f"item template {template!r} must end with a literal")
        pieces.append(("lit", self._literal(template[pos:], prev)))
        self._items[key] = pieces
        return pieces

    @staticmethod
    def _literal(lit: str, prev_slot: str | None) -> tuple[str, ...]:
        # the v1 grammar fix writes 'The goggles are X's.' for plural things
        if prev_slot == "The(T)" and lit.startswith(" is "):
            return (lit, " are " + lit[4:])
        return (lit,)

    def _match_item(self, pieces: list, s: str, pos: int, i: int = 0,
                    acc: tuple = ()) -> tuple[int, dict[str, str]] | None:
        """Backtracking match of one item at ``pos``; it must be followed by a space."""
        if i == len(pieces):
            return (pos, dict(acc)) if s.startswith(" ", pos) else None
        kind = pieces[i]
        if kind[0] == "lit":
            for alt in kind[1]:
                if s.startswith(alt, pos):
                    r = self._match_item(pieces, s, pos + len(alt), i + 1, acc)
                    if r is not None:
                        return r
            return None
        _, name, smap = kind
        for alt in pieces[i + 1][1]:  # a slot is always followed by a literal
            end = s.find(alt, pos + 1)
            while end != -1:
                member = smap.get(s[pos:end])
                if member is not None:
                    r = self._match_item(pieces, s, end, i + 1, acc + ((name, member),))
                    if r is not None:
                        return r
                end = s.find(alt, end + 1)
        return None

    def _context(self, cell: Cell, row: str) -> tuple[list[str], list[str], int]:
        """(keys, values, offset after ' >. ') of a row's context."""
        head = "Premise: < " if cell.family == "cls" else "< "
        if not row.startswith(head):
            raise GARDataError(f"row does not start with {head!r}")
        pieces = self._item_pieces(cell)
        keys: list[str] = []
        values: list[str] = []
        pos = len(head)
        while True:
            m = self._match_item(pieces, row, pos)
            if m is None:
                raise GARDataError(f"cannot read a context item from {row[pos:pos + 40]!r}")
            pos, slots = m
            k, v = (slots["T"], slots["P"]) if cell.swap_qa else (slots["P"], slots["T"])
            keys.append(k)
            values.append(v)
            if row.startswith(" >. ", pos):
                return keys, values, pos + 4
            pos += 1

    # -- question / statement and answer ------------------------------------------------------

    def _question_table(self, cell: Cell) -> dict[str, str]:
        """Rendered question (gen) or statement (cls) -> query, for every query of hop 0."""
        key = (cell.task_row.row, cell.hop0, cell.hop1, cell.swap_qa, cell.negate, cell.family)
        table = self._questions.get(key)
        if table is None:
            s0, r0 = cell.hop0
            render = statement if cell.family == "cls" else question
            table = {}
            for q in self.profile.vocab[s0].relation(r0).domain:
                try:
                    table.setdefault(render(cell, self.profile, q), q)
                except GARDataError:  # the reference cannot render this query either
                    continue
            self._questions[key] = table
        return table

    def _answer_domain(self, cell: Cell) -> frozenset[str]:
        s1, r1 = cell.hop1
        dom = self._answers.get(cell.hop1)
        if dom is None:
            dom = self._answers[cell.hop1] = frozenset(self.profile.vocab[s1].relation(r1).domain)
        return dom

    def _split_answer(self, cell: Cell, rest: str) -> tuple[str, str, str]:
        """(body, query, answer) of 'BODY ANSWER' where BODY is a rendering of some query."""
        table, answers = self._question_table(cell), self._answer_domain(cell)
        i = rest.find(" ")
        while i != -1:
            q = table.get(rest[:i])
            if q is not None and rest[i + 1:] in answers:
                return rest[:i], q, rest[i + 1:]
            i = rest.find(" ", i + 1)
        raise GARDataError(f"cannot read the question and answer of {rest!r}")

    def parse_row(self, cell: Cell, row: str) -> ParsedRow:
        keys, values, pos = self._context(cell, row)
        rest = row[pos:]
        label = None
        if cell.family == "cls":
            if not rest.startswith(CLS_PREFIX):
                raise GARDataError(f"statement does not start with {CLS_PREFIX!r}")
            rest, sep, label = rest[len(CLS_PREFIX):].rpartition(_CLS_TAIL)
            if not sep or label not in ("Yes", "No"):
                raise GARDataError(f"row does not end with '{_CLS_TAIL}Yes' or '{_CLS_TAIL}No'")
        body, query, answer = self._split_answer(cell, rest)
        return ParsedRow(row, tuple(keys), tuple(values), query, answer, label, body)

    def parse(self, cell: Cell, text: str) -> ParsedText:
        pre, rows = split_rows(text)
        parsed = []
        for i, row in enumerate(rows, 1):
            try:
                parsed.append(self.parse_row(cell, row))
            except GARDataError as e:
                raise GARDataError(f"row {i}: {e}") from None
        return ParsedText(pre, tuple(parsed))
