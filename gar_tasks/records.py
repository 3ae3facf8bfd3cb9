"""The one record type that flows generator -> dataset -> lm-eval -> interp.

Delimiter rule (written once, here): ``text == prompt + DELIMITER + answer + TERMINATOR``.
``prompt`` is everything the model reads before the test row's answer (generation) or label
(classification); ``answer`` is what it must continue with, without the separating space. This is
what lm-eval needs: ``doc_to_text = prompt`` and ``doc_to_target = DELIMITER + answer``.

Spans are half-open ``[start, end)`` character offsets into ``text`` (Python ``str`` indices), one
dict per row of the instance, each role mapping to a list of spans (usually one):

* ``row``  the row itself (without the separator before it and the newline after it);
* ``K``/``V``  the true key and value in the context (the column the query selects);
* ``Q``  the query term in the question or statement (not the verbaliser such as 'a city of');
* ``A``  the answer: for generation the answer after the question; for classification the
  answer term inside the statement (true or wrong);
* ``K'``/``V'``  the keys and values of the distractor columns, in column order;
* ``R``  the word ``not`` of a negated question or statement (empty list otherwise);
* ``END``  the last word or punctuation mark before the row's answer (gen) or label (cls): the
  position whose next-token prediction is scored (its last token, for any tokenizer).

Unlike the published LLaMA-token ``ranges``, role names do **not** flip under negation: K, V and A
always name the query-selected (true) column. ``published_role_names`` gives the paper's names.
A span covers the surface form, which can differ from the vocabulary string in the case of its
first letter (sentence-initial capitals) and a plural suffix (``The boys`` for ``the boy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

DELIMITER = " "
TERMINATOR = "\n"
ROLES = ("row", "K", "V", "Q", "A", "K'", "V'", "R", "END")
Span = tuple[int, int]


@dataclass(frozen=True)
class RowInfo:
    """The sampled content of one row: the context columns in the order shown, and the query.

    Column i of the context is the item (keys[i], values[i]); answers[i] is the answer its
    loop leads to and queries[i] the query that selects it. ``true_index`` is the column the
    row's query selects; ``shown_index`` the column whose answer is shown (classification
    'No' rows show another column's answer).
    """

    keys: tuple[str, ...]
    values: tuple[str, ...]
    answers: tuple[str, ...]
    queries: tuple[str, ...]
    true_index: int
    shown_index: int
    label: str | None = None

    @property
    def query(self) -> str:
        return self.queries[self.true_index]

    @property
    def true_answer(self) -> str:
        return self.answers[self.true_index]

    @property
    def shown_answer(self) -> str:
        return self.answers[self.shown_index]


@dataclass(frozen=True)
class GARRecord:
    """One GAR instance (a prompt of demonstration rows and one test row), any profile."""

    id: str
    pair_id: str
    profile: str
    split: str
    task_id: str
    task_row: int
    family: str
    query_schema: str
    answer_schema: str
    rel0: str
    rel1: str
    swap_qa: bool
    negate: bool
    rev_item2str: bool
    n_r: int
    prompt: str
    answer: str
    label: str | None
    choices: tuple[str, ...]
    text: str
    spans: tuple[Mapping[str, tuple[Span, ...]], ...]
    rows: tuple[RowInfo, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, not tuples), the layout of ``features()``."""
        d = {f: getattr(self, f) for f in _SCALAR_FIELDS}
        d["choices"] = list(self.choices)
        d["spans"] = [{r: [list(s) for s in row.get(r, ())] for r in ROLES} for row in self.spans]
        d["rows"] = [{"keys": list(r.keys), "values": list(r.values), "answers": list(r.answers),
                      "queries": list(r.queries), "true_index": r.true_index,
                      "shown_index": r.shown_index, "label": r.label} for r in self.rows]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GARRecord":
        kw = {f.name: d[f.name] for f in fields(cls)}
        kw["choices"] = tuple(d["choices"])
        kw["spans"] = tuple({r: tuple(tuple(s) for s in row[r]) for r in ROLES if r in row}
                            for row in d["spans"])
        kw["rows"] = tuple(RowInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()})
                           for r in d["rows"])
        return cls(**kw)


def features():
    """The ``datasets.Features`` of a record (imported lazily: ``datasets`` is heavy)."""
    from datasets import Features, List, Value

    s, i32, b = Value("string"), Value("int32"), Value("bool")
    span_list = List(List(i32, length=2))
    return Features({
        "id": s, "pair_id": s, "profile": s, "split": s, "task_id": s, "task_row": i32,
        "family": s, "query_schema": s, "answer_schema": s, "rel0": s, "rel1": s,
        "swap_qa": b, "negate": b, "rev_item2str": b, "n_r": i32,
        "prompt": s, "answer": s, "label": s, "choices": List(s), "text": s,
        "spans": List({r: span_list for r in ROLES}),
        "rows": List({"keys": List(s), "values": List(s), "answers": List(s), "queries": List(s),
                      "true_index": i32, "shown_index": i32, "label": s}),
    })


_SCALAR_FIELDS = tuple(f.name for f in fields(GARRecord) if f.name not in ("choices", "spans", "rows"))
_PUBLISHED_RENAME = {"K": "K'", "V": "V'", "A": "A'", "K'": "K", "V'": "V"}


def published_role_names(row_spans: Mapping[str, Any], negate: bool) -> dict[str, Any]:
    """Rename one row's roles as the published ``ranges`` do (they flip under negation)."""
    if not negate:
        return dict(row_spans)
    return {_PUBLISHED_RENAME.get(k, k): v for k, v in row_spans.items()}
