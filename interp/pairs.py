"""Clean/corrupted prompt pairs from GAR records, with one logit-difference metric per pair.

Patching compares a *clean* prompt with a *corrupted* one that asks for a different answer, and
scores a head by how much of the metric ``logit(clean_target) - logit(corrupt_target)`` (read at
the last prompt token, where the answer is predicted) it carries. The two families:

* ``cls``: clean = the ``Yes`` twin's prompt, corrupted = the ``No`` twin's (same ``pair_id``);
  targets ``" Yes"`` / ``" No"``, so the metric is positive when the model gets the clean label.
  Besides the statement's answer term, the twins of some tasks also differ in a shuffled
  candidate list of the preamble (``n_diff_tokens`` counts every differing position).
* ``gen`` (non-negated tasks only): corrupted = the clean prompt with the test row's query
  (``spans[-1]["Q"]``) replaced by the query of another context column ``j`` (first-letter case
  matched); targets = the first tokens of the true answer and of column ``j``'s answer. Negated
  tasks are skipped because their question ("... does *not* ...") has several right answers:
  after swapping the query, the clean answer usually stays a right answer of the corrupted
  prompt, so the logit difference would not contrast two answers.
  Column ``j`` must have a query no other column shares and an answer differing from the true
  one (else the corrupted prompt is ambiguous or asks the same thing); the first such column,
  in column order, whose prompt has the clean prompt's token length is used.

Clean and corrupted prompts must tokenize to the same length, so positions line up token by
token (per-position scores, exact patching of every position): other pairs are rejected and
counted in ``Pairs.counts``.

Batching uses **left padding** (the answer position is the last column of every batch,
``answer_position == T - 1``) with explicit ``position_ids`` counted from each row's first real
token, so absolute-position models (GPT-2) see the same positions as unpadded, and rotary ones
are unaffected. Per-position outputs are therefore aligned on the answer position (the end).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from gar_tasks.errors import GARConfigError, GARDataError
from gar_tasks.records import GARRecord
from gar_tasks.tokens import batch_token_positions

from .core.encode import FAMILIES, left_pad, length_batches, next_tokens, pad_id, token_ids

if TYPE_CHECKING:  # pragma: no cover
    import torch

TokenRange = tuple[int, int]


@dataclass(frozen=True)
class Pair:
    """One clean/corrupted pair: unpadded token ids, targets, and the test row's token roles.

    ``roles`` maps each role of the test row (``K``, ``V``, ``Q``, ``END``, ...; see
    ``gar_tasks.records``) to token ranges ``[start, end)`` in ``clean_ids``.
    """

    record_id: str
    family: str
    clean_ids: tuple[int, ...]
    corrupt_ids: tuple[int, ...]
    clean_target: int
    corrupt_target: int
    roles: dict[str, list[TokenRange]]
    n_diff_tokens: int
    corrupt_column: int | None = None  # gen: the column whose query was swapped in

    @property
    def length(self) -> int:
        return len(self.clean_ids)


@dataclass
class PairBatch:
    """Left-padded tensors of a few pairs, ready for one forward (clean and corrupted rows).

    ``answer_position`` is ``T - 1`` for every row; ``roles[b]`` are shifted by row ``b``'s
    padding, so they index the padded tensors directly.
    """

    indices: list[int]
    clean_ids: "torch.Tensor"
    corrupt_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    position_ids: "torch.Tensor"
    clean_target: "torch.Tensor"
    corrupt_target: "torch.Tensor"
    lengths: list[int]
    roles: list[dict[str, list[TokenRange]]]

    @property
    def size(self) -> int:
        return len(self.indices)

    @property
    def width(self) -> int:
        return int(self.clean_ids.shape[1])

    @property
    def answer_position(self) -> int:
        return self.width - 1

    def role_weights(self, roles: Sequence[str]) -> "torch.Tensor":
        """``[rows, width, len(roles)]`` float64: 1 on each token of a role (once per span holding it),
        for reducing per-position terms to roles in one contraction."""
        import torch

        w = torch.zeros(self.size, self.width, len(roles), dtype=torch.float64)
        for b, row_roles in enumerate(self.roles):
            for k, role in enumerate(roles):
                for s, e in row_roles.get(role, []):
                    w[b, s:e, k] += 1
        return w


@dataclass
class Pairs:
    """The pairs made from some records, the pad id to batch them with, and what was rejected.

    ``counts`` holds ``candidates`` (cls twin pairs + gen records considered), ``kept``, and one
    entry per rejection reason (``unequal_length``, ``negated_gen``, ``no_twin``,
    ``no_distinct_column``, ``same_target_token``, ``family_excluded``).
    """

    pairs: list[Pair]
    pad_token_id: int
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int) -> Pair:
        return self.pairs[item]

    @property
    def rejected(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k not in ("candidates", "kept") and v}

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def max_length(self) -> int:
        return max((p.length for p in self.pairs), default=0)

    def subset(self, indices: Iterable[int]) -> "Pairs":
        """The given pairs only (counts are kept: they describe how the full set was made)."""
        return Pairs([self.pairs[i] for i in indices], self.pad_token_id, dict(self.counts))

    def batch(self, indices: Sequence[int]) -> PairBatch:
        """Left-padded tensors of the pairs at ``indices`` (:func:`interp.core.encode.left_pad`)."""
        import torch

        chosen = [self.pairs[i] for i in indices]
        if not chosen:
            raise GARConfigError("cannot build an empty batch")
        clean = left_pad([p.clean_ids for p in chosen], self.pad_token_id)
        corrupt = left_pad([p.corrupt_ids for p in chosen], self.pad_token_id)
        pad = clean.pads
        roles = [{r: [(s + n, e + n) for s, e in ranges] for r, ranges in p.roles.items()}
                 for p, n in zip(chosen, pad)]
        return PairBatch(indices=list(indices), clean_ids=clean.input_ids, corrupt_ids=corrupt.input_ids,
                         attention_mask=clean.attention_mask, position_ids=clean.position_ids,
                         clean_target=torch.tensor([p.clean_target for p in chosen]),
                         corrupt_target=torch.tensor([p.corrupt_target for p in chosen]),
                         lengths=[p.length for p in chosen], roles=roles)

    def batch_indices(self, batch_size: int, sort_by_length: bool = True) -> list[list[int]]:
        """Pair indices per batch: deterministic, so a run can be checkpointed per batch.

        Sorting by length (stable) keeps padding, hence wasted compute, small.
        """
        lengths = [p.length for p in self.pairs]
        return length_batches(lengths, batch_size, key=None if sort_by_length else (lambda i: 0))

    def batches(self, batch_size: int, sort_by_length: bool = True) -> Iterator[PairBatch]:
        for idx in self.batch_indices(batch_size, sort_by_length):
            yield self.batch(idx)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for checkpoints); :meth:`from_dict` inverts it."""
        return {"pad_token_id": self.pad_token_id, "counts": dict(self.counts),
                "pairs": [{**asdict(p), "clean_ids": list(p.clean_ids), "corrupt_ids": list(p.corrupt_ids),
                           "roles": {r: [list(x) for x in v] for r, v in p.roles.items()}}
                          for p in self.pairs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Pairs":
        pairs = [Pair(**{**p, "clean_ids": tuple(p["clean_ids"]), "corrupt_ids": tuple(p["corrupt_ids"]),
                         "roles": {r: [tuple(x) for x in v] for r, v in p["roles"].items()}})
                 for p in d["pairs"]]
        return cls(pairs, int(d["pad_token_id"]), dict(d["counts"]))


# ------------------------------------------------------------------------------------------
# construction


def _match_case(template: str, word: str) -> str:
    """``word`` with its first letter's case taken from ``template``'s (sentence-initial)."""
    if not template or not word:
        return word
    first = word[0].upper() if template[0].isupper() else word[0].lower()
    return first + word[1:]


def _n_diff(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(x != y for x, y in zip(a, b))


def _cls_candidates(records: Sequence[GARRecord], counts: Counter) -> list[tuple[GARRecord, str]]:
    """(Yes twin, No twin's prompt) per complete twin pair, in order of first appearance."""
    twins: dict[str, dict[str, GARRecord]] = defaultdict(dict)
    for r in records:
        twins[r.pair_id][str(r.label)] = r
    out = []
    for group in twins.values():
        counts["candidates"] += 1
        if "Yes" not in group or "No" not in group:
            counts["no_twin"] += 1
            continue
        out.append((group["Yes"], group["No"].prompt))
    return out


def _gen_columns(record: GARRecord) -> tuple[str, str, list[tuple[int, str, str]]]:
    """The clean prompt and answer, and (column, corrupted prompt, its answer) per usable column."""
    row = record.rows[-1]
    (s, e) = record.spans[-1]["Q"][-1]
    surface = record.text[s:e]
    if e > len(record.prompt):
        raise GARDataError(f"record {record.id}: the test row's query span lies past the prompt")
    out = []
    for j, (q, a) in enumerate(zip(row.queries, row.answers)):
        if j == row.true_index or row.queries.count(q) != 1 or q == row.query or a == row.true_answer:
            continue
        out.append((j, record.prompt[:s] + _match_case(surface, q) + record.prompt[e:], a))
    return record.prompt, record.answer, out


def make_pairs(records: Iterable[GARRecord], tokenizer: Any, *, families: Sequence[str] = FAMILIES,
               add_special_tokens: bool = True) -> Pairs:
    """Clean/corrupted pairs (see the module docstring) from GAR records, for a fast tokenizer.

    ``families`` picks ``cls`` and/or ``gen``; records of other families are counted as
    ``family_excluded``. Pairs keep the order of their records (cls pairs by first twin).
    ``add_special_tokens`` must match how the model is run (a BOS shifts every position).
    """
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise GARConfigError(f"unknown pair families {bad or list(families)}; choose from {', '.join(FAMILIES)}")
    if not getattr(tokenizer, "is_fast", False):
        raise GARConfigError("make_pairs needs a Hugging Face fast tokenizer (token offsets)")
    records = list(records)
    counts: Counter = Counter()
    # (order key, clean record, clean prompt, [(column, corrupted prompt, clean answer, corrupt answer)])
    jobs: list[tuple[int, GARRecord, list[tuple[int | None, str, str, str]]]] = []
    cls_recs = [r for r in records if r.family == "cls"]
    gen_recs = [r for r in records if r.family == "gen"]
    order = {id(r): i for i, r in enumerate(records)}
    for fam, recs in (("cls", cls_recs), ("gen", gen_recs)):
        if fam not in families:
            counts["family_excluded"] += len(recs)
    if "cls" in families:
        for yes, no_prompt in _cls_candidates(cls_recs, counts):
            jobs.append((order[id(yes)], yes, [(None, no_prompt, "Yes", "No")]))
    if "gen" in families:
        for r in gen_recs:
            counts["candidates"] += 1
            if r.negate:
                counts["negated_gen"] += 1
                continue
            _, answer, cols = _gen_columns(r)
            if not cols:
                counts["no_distinct_column"] += 1
                continue
            jobs.append((order[id(r)], r, [(j, p, answer, a) for j, p, a in cols]))
    jobs.sort(key=lambda job: job[0])

    clean_prompts = [r.prompt for _, r, _ in jobs]
    clean_ids = token_ids(tokenizer, clean_prompts, add_special_tokens)
    flat = [(k, opt) for k, (_, _, opts) in enumerate(jobs) for opt in opts]
    corrupt_ids = token_ids(tokenizer, [opt[1] for _, opt in flat], add_special_tokens)
    for_targets = [(clean_prompts[k], clean_ids[k], opt) for k, opt in flat]
    t_clean = next_tokens(tokenizer, [p for p, _, _ in for_targets], [o[2] for _, _, o in for_targets],
                           [i for _, i, _ in for_targets], add_special_tokens)
    t_corrupt = next_tokens(tokenizer, [p for p, _, _ in for_targets], [o[3] for _, _, o in for_targets],
                             [i for _, i, _ in for_targets], add_special_tokens)
    chosen: dict[int, tuple[int | None, list[int], int, int]] = {}
    reason: dict[int, str] = {}
    for f, (k, (col, _, _, _)) in enumerate(flat):
        if k in chosen:
            continue
        equal, same = len(corrupt_ids[f]) == len(clean_ids[k]), t_clean[f] == t_corrupt[f]
        if equal and not same:
            chosen[k] = (col, corrupt_ids[f], t_clean[f], t_corrupt[f])
        elif equal:  # the only thing wrong with this option is its target
            reason[k] = "same_target_token"
        else:
            reason.setdefault(k, "unequal_length")
    kept = sorted(chosen)
    for k in range(len(jobs)):
        if k not in chosen:
            counts[reason[k]] += 1
    roles = batch_token_positions([jobs[k][1] for k in kept], tokenizer, prompt=True,
                                  add_special_tokens=add_special_tokens) if kept else []
    pairs = []
    for k, rows in zip(kept, roles):
        col, cids, tc, tx = chosen[k]
        rec = jobs[k][1]
        pairs.append(Pair(record_id=rec.id, family=rec.family, clean_ids=tuple(clean_ids[k]),
                          corrupt_ids=tuple(cids), clean_target=tc, corrupt_target=tx,
                          roles={r: list(v) for r, v in rows[-1].items()},
                          n_diff_tokens=_n_diff(clean_ids[k], cids), corrupt_column=col))
    counts["kept"] = len(pairs)
    return Pairs(pairs, pad_id(tokenizer), {"candidates": 0, "kept": 0, **counts})


__all__ = ["FAMILIES", "Pair", "PairBatch", "Pairs", "make_pairs"]
