"""Character spans of a record -> token positions, for any Hugging Face *fast* tokenizer.

Records carry tokenizer-independent character spans (see ``records.py``); interpretability code
needs token positions. The mapping uses the tokenizer's offset mapping and one rule: a span maps
to the half-open range ``[first, last + 1)`` of every token whose character range intersects it.
Zero-width tokens (special tokens report ``(0, 0)``) never match, and a token whose offsets
include its leading space (byte-level BPE without ``trim_offsets``) is still matched only by the
characters it really overlaps, so the rule is the same for every tokenizer.

``transformers`` is never imported here: any object with the fast-tokenizer call signature works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .errors import GARDataError
from .records import GARRecord, Span

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

TokenRange = tuple[int, int]
RowPositions = dict[str, list[TokenRange]]


def char_to_token_spans(offsets: Sequence[Sequence[int]], spans: Iterable[Span]) -> list[TokenRange]:
    """Token range ``[first, last + 1)`` of the tokens intersecting each character span.

    Intersection (not containment) is what makes the rule tokenizer-independent: a token may
    start before the span (a leading space in its offsets) or run past it (``>.`` as one token).
    A span no token intersects (whitespace only, past the text, empty) is a data error.
    """
    offs = [(int(a), int(b)) for a, b in offsets]
    out = []
    for span in spans:
        s, e = int(span[0]), int(span[1])
        hits = [i for i, (a, b) in enumerate(offs) if a < b and a < e and b > s]
        if s >= e or not hits:
            covered = max((b for _, b in offs), default=0)
            raise GARDataError(f"character span ({s}, {e}) intersects no token "
                               f"(tokens cover characters [0, {covered}))")
        out.append((hits[0], hits[-1] + 1))
    return out


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise GARDataError(f"{type(tokenizer).__name__} is not a fast tokenizer: token positions need "
                           "the offset mapping of a Hugging Face fast tokenizer (use_fast=True)")


def _offsets(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[tuple[int, int]]]:
    _require_fast(tokenizer)
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    return [list(map(tuple, o)) for o in enc["offset_mapping"]]


def _row_positions(record: GARRecord, text: str, offsets: Sequence[Sequence[int]]) -> list[RowPositions]:
    """Per-row role -> token ranges for ``text``, a prefix of ``record.text``.

    Spans must lie in ``record.text``. Spans starting at or after ``len(text)`` are dropped (a role left with none is omitted, a
    row left with none is omitted); a span straddling the end (the final ``row`` in a prompt) is
    clipped to it. Roles without spans in the record (``R`` of a plain task) stay as ``[]``.
    """
    if not record.text.startswith(text):
        raise GARDataError(f"record {record.id}: text is not a prefix of record.text")
    n, total = len(text), len(record.text)
    for row in record.spans:
        for s, e in (span for spans in row.values() for span in spans):
            if not 0 <= s < e <= total:
                raise GARDataError(f"record {record.id}: span ({s}, {e}) is empty or outside the text "
                                   f"(length {total})")
    rows = []
    for row in record.spans:
        if not any(s < n for spans in row.values() for s, _ in spans):
            continue
        out: RowPositions = {}
        for role, spans in row.items():
            kept = [(s, min(e, n)) for s, e in spans if s < n]
            if spans and not kept:
                continue
            out[role] = char_to_token_spans(offsets, kept)
        rows.append(out)
    return rows


def record_token_positions(record: GARRecord, tokenizer: "PreTrainedTokenizerBase", *,
                           text: str | None = None, add_special_tokens: bool = True) -> list[RowPositions]:
    """One dict per row, role -> token ranges, in the tokenization of ``text``.

    ``text`` defaults to ``record.text``; pass ``record.prompt`` to get positions in the
    sequence a model reads when it is scored (the final answer is then dropped). Positions
    count special tokens iff ``add_special_tokens`` (a BOS shifts every range by one).
    """
    text = record.text if text is None else text
    return _row_positions(record, text, _offsets(tokenizer, [text], add_special_tokens)[0])


def batch_token_positions(records: Sequence[GARRecord], tokenizer: "PreTrainedTokenizerBase", *,
                          prompt: bool = False, add_special_tokens: bool = True) -> list[list[RowPositions]]:
    """``record_token_positions`` for many records with one (batched) tokenizer call."""
    texts = [r.prompt if prompt else r.text for r in records]
    offsets = _offsets(tokenizer, texts, add_special_tokens)
    return [_row_positions(r, t, o) for r, t, o in zip(records, texts, offsets)]


def _last_real_token(offsets: Sequence[Sequence[int]], record: GARRecord) -> int:
    for i in range(len(offsets) - 1, -1, -1):
        if offsets[i][1] > offsets[i][0]:
            return i
    raise GARDataError(f"record {record.id}: the prompt tokenizes to no non-special token")


def end_position(record: GARRecord, tokenizer: "PreTrainedTokenizerBase", add_special_tokens: bool = True) -> int:
    """Index of the last prompt token: the position whose next-token prediction is scored.

    It is the last token of ``record.prompt`` that covers characters, so a special token a
    tokenizer appends (an EOS) is skipped, while a prepended BOS counts in the index.
    """
    return _last_real_token(_offsets(tokenizer, [record.prompt], add_special_tokens)[0], record)
