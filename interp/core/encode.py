"""The one encoder of GAR prompts: token ids, in-context answer tokens, and left padding.

**Left padding** (:func:`left_pad`): every row ends in the last column, so the answer position
(the last prompt token) is ``T - 1`` for every row, with explicit ``position_ids`` counted from each
row's first real token: absolute-position models (GPT-2) see the positions they would see unpadded,
rotary ones are unaffected. :meth:`Padded.inputs` puts the tensors on the model's input device.

**Answer tokens** (:func:`next_tokens`): the first token of ``DELIMITER + answer`` as the model
reads it right after the prompt, tokenized in context (tokenizers disagree about a lone leading
space).

**cls prompts** (:class:`ClsPrompts`, :func:`encode_cls`): the Yes/No prompts of GAR ``cls``
records with their `` Yes`` / `` No`` targets, gold labels, tasks and Yes/No twins, batched either
by length (:meth:`ClsPrompts.length_batches`) or with twins together (:meth:`ClsPrompts.twin_batches`).
Clean/corrupted pairs of both families are built on the same functions by :mod:`interp.pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from gar_tasks.errors import GARConfigError, GARDataError
from gar_tasks.records import DELIMITER

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from gar_tasks.records import GARRecord

FAMILIES = ("cls", "gen")


def pad_id(tokenizer: Any) -> int:
    """The id padding is filled with: the tokenizer's pad token, else its EOS, else 0 (masked anyway)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return int(pad)


def token_ids(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of each text (unpadded)."""
    if not texts:
        return []
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]


def next_tokens(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], prompt_ids: Sequence[Sequence[int]],
                add_special_tokens: bool = True) -> list[int]:
    """First token of ``DELIMITER + answer`` as the model would read it right after ``prompt``.

    Tokenized in context (prompt + answer, then the prompt's ids stripped); a tokenizer whose ids
    of the joined text do not start with the prompt's (one appending an EOS) falls back to
    tokenizing the answer alone.
    """
    joined = token_ids(tokenizer, [p + DELIMITER + a for p, a in zip(prompts, answers)], add_special_tokens)
    out = []
    for full, pids, answer in zip(joined, prompt_ids, answers):
        pids = list(pids)
        if len(full) > len(pids) and full[:len(pids)] == pids:
            out.append(full[len(pids)])
        else:
            alone = token_ids(tokenizer, [DELIMITER + answer], False)[0]
            if not alone:
                raise GARDataError(f"answer {answer!r} tokenizes to no token")
            out.append(alone[0])
    return out


@dataclass
class Padded:
    """Left-padded rows: ``input_ids``, ``attention_mask``, ``position_ids`` ``[rows, T]`` (CPU)."""

    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    position_ids: "torch.Tensor"

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def pads(self) -> list[int]:
        """Padding columns per row."""
        return [int(v) for v in (self.attention_mask == 0).sum(1)]

    def inputs(self, device: Any = None, **extra: Any) -> dict[str, Any]:
        """Forward keyword arguments, on ``device`` (the model's input device) when given."""
        d = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}
        if device is not None:
            d = {k: v.to(device) for k, v in d.items()}
        return {**d, **extra}


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> Padded:
    """The one left padding: rows right-aligned, mask 1 on real tokens, positions from each row's start."""
    import torch

    if not rows:
        raise GARConfigError("cannot build an empty batch")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = width - len(row)
        ids[b, n:] = torch.tensor(list(row), dtype=torch.long)
        mask[b, n:] = 1
    return Padded(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))


def length_batches(lengths: Sequence[int], batch_size: int, key: Any = None) -> list[list[int]]:
    """Indices in batches of at most ``batch_size``, shortest first (stable): deterministic, so a run
    can be checkpointed per batch, and padding (wasted compute) stays small."""
    if batch_size < 1:
        raise GARConfigError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=key or (lambda i: lengths[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class ClsBatch:
    """Left-padded cls rows (``answer position == T - 1``) with targets; twins side by side.

    ``partner[b]`` is the row of ``b``'s twin when ``b`` is a Yes record whose No twin has the same
    token length and is in the batch (an AtP pair, clean = ``b``), else ``b``; ``atp_valid[b]`` tells which.
    """

    indices: list[int]
    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    position_ids: "torch.Tensor"
    yes: "torch.Tensor"
    no: "torch.Tensor"
    partner: "torch.Tensor"
    atp_valid: list[bool]

    @property
    def size(self) -> int:
        return len(self.indices)


@dataclass
class ClsPrompts:
    """Tokenized cls prompts with their Yes/No targets, gold labels (True = Yes), tasks and twins."""

    ids: list[list[int]]
    yes: list[int]
    no: list[int]
    labels: list[bool]
    task_index: list[int]
    tasks: list[str]  # task names; record i belongs to tasks[task_index[i]]
    record_ids: list[str]
    pair_ids: list[str]
    pad_token_id: int
    twin: list[int | None] = field(default_factory=list)  # index of the equal-length No twin (Yes records)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def gold_yes(self) -> list[bool]:
        return self.labels

    @property
    def record_tasks(self) -> list[str]:
        """The task name of every record."""
        return [self.tasks[t] for t in self.task_index]

    @property
    def n_atp_pairs(self) -> int:
        return sum(t is not None for t in self.twin)

    def groups(self) -> list[list[int]]:
        """Record indices grouped by ``pair_id`` (order of first appearance)."""
        out: dict[str, list[int]] = {}
        for i, p in enumerate(self.pair_ids):
            out.setdefault(p, []).append(i)
        return list(out.values())

    def length_batches(self, batch_size: int) -> list[list[int]]:
        """Batches of at most ``batch_size`` records, shortest first."""
        return length_batches([len(x) for x in self.ids], batch_size)

    def twin_batches(self, batch_size: int) -> list[list[int]]:
        """Deterministic batches of whole twin groups, shortest first, at most ``batch_size`` rows
        each (a group larger than ``batch_size`` gets a batch of its own)."""
        if batch_size < 1:
            raise GARConfigError(f"--batch-size must be at least 1, got {batch_size}")
        groups = sorted(self.groups(), key=lambda g: max(len(self.ids[i]) for i in g))
        out: list[list[int]] = []
        for g in groups:
            if out and len(out[-1]) + len(g) <= batch_size:
                out[-1].extend(g)
            else:
                out.append(list(g))
        return out

    def padded(self, indices: Sequence[int]) -> Padded:
        return left_pad([self.ids[i] for i in indices], self.pad_token_id)

    def batch(self, indices: Sequence[int]) -> ClsBatch:
        """Left-padded tensors of the records at ``indices`` with targets and twin partners."""
        import torch

        indices = list(indices)
        p = self.padded(indices)
        row = {i: b for b, i in enumerate(indices)}
        partner, valid = [], []
        for b, i in enumerate(indices):
            t = self.twin[i] if self.twin else None
            ok = t is not None and t in row
            partner.append(row[t] if ok else b)
            valid.append(ok)
        return ClsBatch(indices=indices, input_ids=p.input_ids, attention_mask=p.attention_mask,
                        position_ids=p.position_ids, yes=torch.tensor([self.yes[i] for i in indices]),
                        no=torch.tensor([self.no[i] for i in indices]), partner=torch.tensor(partner),
                        atp_valid=valid)


def encode_cls(records: Sequence["GARRecord"], tokenizer: Any, task_index: Sequence[int] | None = None,
               tasks: Sequence[str] | None = None, add_special_tokens: bool = True) -> ClsPrompts:
    """Tokenize cls records: prompt ids, in-context `` Yes`` / `` No`` first tokens, labels, twins.

    ``add_special_tokens`` must match how the model is run (a BOS shifts every position).
    """
    records = list(records)
    if not records:
        raise GARConfigError("no cls records to encode")
    bad = [r.id for r in records if r.family != "cls" or str(r.label) not in ("Yes", "No")]
    if bad:
        raise GARConfigError(f"needs cls records labelled Yes/No; got {bad[:3]}")
    prompts = [r.prompt for r in records]
    ids = token_ids(tokenizer, prompts, add_special_tokens)
    yes = next_tokens(tokenizer, prompts, ["Yes"] * len(records), ids, add_special_tokens)
    no = next_tokens(tokenizer, prompts, ["No"] * len(records), ids, add_special_tokens)
    same = [r.id for r, y, n in zip(records, yes, no) if y == n]
    if same:
        raise GARConfigError(f"the tokenizer gives ' Yes' and ' No' the same first token (record {same[0]})")
    labels = [str(r.label) == "Yes" for r in records]
    twin: list[int | None] = [None] * len(records)
    by_pair: dict[str, dict[bool, int]] = {}
    for i, r in enumerate(records):
        by_pair.setdefault(r.pair_id, {})[labels[i]] = i
    for group in by_pair.values():
        if True in group and False in group:
            y, n = group[True], group[False]
            if len(ids[y]) == len(ids[n]):
                twin[y] = n
    if task_index is None:
        task_index, tasks = [0] * len(records), [""]
    return ClsPrompts(ids=ids, yes=yes, no=no, labels=labels, task_index=list(task_index),
                      tasks=list(tasks or []), record_ids=[r.id for r in records],
                      pair_ids=[r.pair_id for r in records], pad_token_id=pad_id(tokenizer), twin=twin)


__all__ = ["ClsBatch", "ClsPrompts", "FAMILIES", "Padded", "encode_cls", "left_pad", "length_batches", "next_tokens",
           "pad_id", "token_ids"]
