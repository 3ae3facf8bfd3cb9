"""The task grid: task rows (data), cells, validity rules, ``task_id`` strings and difficulty n_r.

A *cell* is one point of the published grid (GAR_SPEC 5.2): task row x relation indices x
swap x negate x reversed items x family. Cells are pure values; the generator turns a cell plus a
``random.Random`` into instances.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterator, Mapping, Sequence

from .errors import GARConfigError, GARDataError
from .schemas import Vocabulary

FAMILIES = ("gen", "cls")
_ROW_FIELDS = ("row", "person_schema", "person_relations", "thing_schema", "thing_relations",
               "dict_candidates_in_task_id", "preamble_allowed", "item_template_forward",
               "item_template_reversed", "query_template")


@dataclass(frozen=True)
class TaskRow:
    """One of the 10 task rows of ``task_rows.json`` (a person schema joined with a thing schema)."""

    row: int
    person_schema: str
    person_relations: tuple[str, ...]
    thing_schema: str
    thing_relations: tuple[str, ...]
    dict_candidates_in_task_id: bool
    preamble_allowed: bool
    item_template_forward: str
    item_template_reversed: str
    query_template: str

    @classmethod
    def from_dict(cls, d: Mapping) -> "TaskRow":
        missing = [f for f in _ROW_FIELDS if f not in d]
        if missing:
            raise GARDataError(f"task_rows.json: row {d.get('row', '?')} lacks {', '.join(missing)}")
        return cls(**{f: tuple(d[f]) if f.endswith("relations") else d[f] for f in _ROW_FIELDS})


@lru_cache(maxsize=None)
def load_task_rows() -> tuple[TaskRow, ...]:
    """The published task rows from package data (loaded and validated once)."""
    path = resources.files("gar_tasks").joinpath("data", "task_rows.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = tuple(TaskRow.from_dict(r) for r in data["rows"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise GARDataError(f"task_rows.json is malformed: {e}") from None
    if [r.row for r in rows] != list(range(len(rows))):
        raise GARDataError("task_rows.json: rows must be numbered 0..n-1 in order")
    return rows


@dataclass(frozen=True)
class Cell:
    """One point of the task grid (GAR_SPEC 5.2)."""

    task_row: TaskRow
    rel0_i: int
    rel1_i: int
    swap_qa: bool
    negate: bool
    rev_item2str: bool
    family: str  # "gen" | "cls"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise GARConfigError(f"unknown family {self.family!r}; expected one of {FAMILIES}")

    @property
    def valid(self) -> bool:
        """The only validity rule that bites in this grid: both relation indices must exist."""
        return (0 <= self.rel0_i < len(self.task_row.person_relations)
                and 0 <= self.rel1_i < len(self.task_row.thing_relations))

    @property
    def person_relation(self) -> str:
        return self.task_row.person_relations[self.rel0_i]

    @property
    def thing_relation(self) -> str:
        return self.task_row.thing_relations[self.rel1_i]

    @property
    def hop0(self) -> tuple[str, str]:
        """(schema id, relation) of the query side, after swap and negation."""
        s, r = ((self.task_row.thing_schema, self.thing_relation) if self.swap_qa
                else (self.task_row.person_schema, self.person_relation))
        return s, ("neg_" + r if self.negate else r)

    @property
    def hop1(self) -> tuple[str, str]:
        """(schema id, relation) of the answer side, after swap."""
        return ((self.task_row.person_schema, self.person_relation) if self.swap_qa
                else (self.task_row.thing_schema, self.thing_relation))

    @property
    def n_r(self) -> int:
        """Number of the two relations (``neg_`` stripped) that are not ``equal`` (GAR_SPEC 10.2)."""
        return sum(r != "equal" for r in (self.person_relation, self.thing_relation))

    def task_id(self, vocab: Vocabulary, cxt_len: int = 3) -> str:
        """The published ``task_id`` string (GAR_SPEC 10.1), naming the real context length (items
        per row): the paper's records all have 3; ``--cxt-len`` changes it."""
        gen = "rlr_gen[dict_candidates=True]" if self.task_row.dict_candidates_in_task_id else "rlr_gen"
        if self.family == "cls":
            gen = f"g2c[{gen}]"
        (s0, r0), (s1, r1) = self.hop0, self.hop1
        t0, t1 = vocab[s0].meta.set_type, vocab[s1].meta.set_type
        tail = f"cxt_len={cxt_len},rev_item2str" if self.rev_item2str else f"cxt_len={cxt_len}"
        return f"{gen}[{s0}.{t0}.{r0},{s1}.{t1}.{r1}][{tail}]"

    @property
    def code(self) -> str:
        """Short readable code of the cell, used in record ids: ``r0.01.SN-.gen``."""
        flags = form_code(self.swap_qa, self.negate, self.rev_item2str)
        return f"r{self.task_row.row}.{self.rel0_i}{self.rel1_i}.{flags}.{self.family}"


def form_code(swap_qa: bool, negate: bool, rev_item2str: bool) -> str:
    """The question form of a cell in three letters, as in record ids: ``S`` asks the key side
    (``swap_qa``), ``N`` negates, ``R`` writes context items reversed; ``-`` where not."""
    return ("S" if swap_qa else "-") + ("N" if negate else "-") + ("R" if rev_item2str else "-")


def iter_cells(rows: Sequence[TaskRow] | None = None, *, valid_only: bool = True) -> Iterator[Cell]:
    """All cells in the published grid order (outermost first: row, rel0_i, rel1_i, swap, negate,
    rev_item2str, family)."""
    rows = load_task_rows() if rows is None else rows
    for tr in rows:
        for r0, r1, sw, ng, rv, fam in itertools.product((0, 1), (0, 1), (False, True), (False, True),
                                                         (False, True), FAMILIES):
            cell = Cell(tr, r0, r1, sw, ng, rv, fam)
            if cell.valid or not valid_only:
                yield cell


_TASK_ID_RE = re.compile(
    r"(?:g2c\[)?rlr_gen(?:\[dict_candidates=True\])?\]?"
    r"\[(?P<s0>\w+)\.\w+\.(?P<r0>\w+),(?P<s1>\w+)\.\w+\.(?P<r1>\w+)\]\[(?P<tail>cxt_len=\d+(?:,rev_item2str)?)\]")


def parse_task_id(task_id: str, rows: Sequence[TaskRow] | None = None) -> Cell:
    """Recover the grid cell of a published ``task_id`` (GAR_SPEC 10.1)."""
    from .schemas import PERSON_SCHEMAS

    rows = load_task_rows() if rows is None else rows
    family = "cls" if task_id.startswith("g2c[") else "gen"
    m = _TASK_ID_RE.fullmatch(task_id)
    if m is None:
        raise GARDataError(f"not a GAR task_id: {task_id!r}")
    s0, r0, s1, r1, tail = m.group("s0", "r0", "s1", "r1", "tail")
    swap = s0 not in PERSON_SCHEMAS
    negate = r0.startswith("neg_")
    r0 = r0[4:] if negate else r0
    person, thing = ((s1, r1), (s0, r0)) if swap else ((s0, r0), (s1, r1))
    for tr in rows:
        if (tr.person_schema, tr.thing_schema) == (person[0], thing[0]):
            try:
                cell = Cell(tr, tr.person_relations.index(person[1]), tr.thing_relations.index(thing[1]),
                            swap, negate, "rev_item2str" in tail, family)
            except ValueError:
                break
            return cell
    raise GARDataError(f"task_id {task_id!r} names no cell of the task grid")
