"""Counterfactuals and ablations for circuit discovery: what the corrupted run is, and what it can show.

Kinds of clean/corrupted prompt pairs (``make_counterfactuals``), all token-aligned (equal token
lengths; other candidates are rejected and counted):

* ``pair``: the pairs of ``gar patch``: cls Yes/No twins (records sharing ``pair_id``, targets
  Yes/No) and gen query swaps (the test row's query replaced by another column's query, targets
  the two answers; non-negated gen only, since a negated question has several right answers).
* ``context``: the context counterfactual: in the test row's context the true column's value and
  another column's value swap places, so the query's key now maps to the other value. gen: the
  answer becomes that column's answer (targets: the two answers); cls (the Yes twin): the shown
  answer becomes false (targets Yes/No). Non-negated tasks only; the swapped values' columns must
  have different answers, and every differing token must lie inside the two value spans.

Role-mean ablation (``RoleMeans``): the corrupted output of every sender at a token of role ``r``
is that sender's mean output over the tokens of role ``r`` of the *other* records of the same task
(clean prompts). It uses the targets of a pair kind for the metric.

Under pair patching every activation before the first token where the prompts differ is the same
in both runs, so every edge whose sender sits there scores exactly 0: :meth:`CFSet.reachability`
reports the first differing role and the roles that are "unreachable under this counterfactual".
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from gar_tasks.errors import GARConfigError, GARDataError
from gar_tasks.records import GARRecord
from gar_tasks.tokens import TokenRange, batch_token_positions

from ..core.encode import left_pad, next_tokens, pad_id, token_ids
from .batch import CircuitBatch
from .roles import PAD_ROLE, RoleSchema, token_roles

if TYPE_CHECKING:  # pragma: no cover
    import torch

KINDS = ("pair", "context")


@dataclass(frozen=True)
class CFItem:
    """One clean/corrupted prompt pair (unpadded token ids), its targets and per-token role ids."""

    record_id: str
    task_id: str
    family: str
    clean_ids: tuple[int, ...]
    corrupt_ids: tuple[int, ...]
    clean_target: int
    corrupt_target: int
    role_ids: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.clean_ids)

    @property
    def first_difference(self) -> int:
        """First position where the prompts differ (``length`` if they never do)."""
        return next((i for i, (a, b) in enumerate(zip(self.clean_ids, self.corrupt_ids)) if a != b), self.length)


@dataclass
class CFSet:
    """The items of one counterfactual kind, the schema's roles, and what was rejected."""

    kind: str
    items: list[CFItem]
    roles: tuple[str, ...]
    end_role: int
    pad_token_id: int
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def rejected(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k not in ("candidates", "kept") and v}

    def batch_indices(self, batch_size: int) -> list[list[int]]:
        """Deterministic batches (stable sort by length keeps padding small), for checkpoints."""
        if batch_size < 1:
            raise GARConfigError(f"batch_size must be at least 1, got {batch_size}")
        order = sorted(range(len(self.items)), key=lambda i: self.items[i].length)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def batch(self, indices: Sequence[int], means: "RoleMeans | None" = None, model: Any = None) -> CircuitBatch:
        """Left-padded :class:`CircuitBatch` of the items at ``indices``: pair patching, or role-mean
        ablation when ``means`` (fitted on this set) and the HF ``model`` are given."""
        import torch

        chosen = [self.items[i] for i in indices]
        clean = left_pad([it.clean_ids for it in chosen], self.pad_token_id)
        common = dict(input_ids=clean.input_ids, attention_mask=clean.attention_mask,
                      position_ids=clean.position_ids, role_ids=left_pad([it.role_ids for it in chosen], PAD_ROLE).input_ids,
                      clean_target=torch.tensor([it.clean_target for it in chosen]),
                      corrupt_target=torch.tensor([it.corrupt_target for it in chosen]),
                      n_roles=len(self.roles), end_role=self.end_role)
        if means is None:
            return CircuitBatch(**common, corrupt_ids=left_pad([it.corrupt_ids for it in chosen],
                                                               self.pad_token_id).input_ids)
        if model is None:
            raise GARConfigError("role-mean ablation needs the model (to take each row out of its task's mean)")
        return CircuitBatch(**common, role_means=means.excluding(model, chosen, common))

    def reachability(self) -> dict[str, Any]:
        """First differing role per item (counted) and the roles before it in every item.

        A role is *unreachable under this counterfactual* when every one of its tokens, in every
        item, lies before that item's first differing token: its senders score exactly 0 there,
        which says nothing about their importance.
        """
        first = Counter()
        reachable = set()
        for it in self.items:
            k = it.first_difference
            if k < it.length:
                first[self.roles[it.role_ids[k]]] += 1
            reachable |= {self.roles[r] for r in it.role_ids[k:]}
        present = {self.roles[r] for it in self.items for r in it.role_ids}
        return {"first_difference": dict(first),
                "unreachable": [r for r in self.roles if r in present and r not in reachable]}


# ------------------------------------------------------------------------------------------
# construction


def _match_case(template: str, word: str) -> str:
    if not template or not word:
        return word
    return (word[0].upper() if template[0].isupper() else word[0].lower()) + word[1:]


def _replace(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with each ``[s, e)`` replaced (non-overlapping edits, any order)."""
    for s, e, new in sorted(edits, reverse=True):
        text = text[:s] + new + text[e:]
    return text


def _query_swaps(record: GARRecord) -> list[tuple[str, str]]:
    """gen query swap: (corrupted prompt, corrupted answer) per usable column, in column order."""
    row = record.rows[-1]
    s, e = record.spans[-1]["Q"][-1]
    if e > len(record.prompt):
        raise GARDataError(f"record {record.id}: the test row's query span lies past the prompt")
    surface = record.text[s:e]
    out = []
    for j, (q, a) in enumerate(zip(row.queries, row.answers)):
        if j == row.true_index or row.queries.count(q) != 1 or q == row.query or a == row.true_answer:
            continue
        out.append((_replace(record.prompt, [(s, e, _match_case(surface, q))]), a))
    return out


def _value_swaps(record: GARRecord) -> list[tuple[str, str, int]]:
    """context counterfactual: (corrupted prompt, answer of the swapped-in column, index of the
    swapped distractor value among the test row's ``V'`` spans) per distractor column whose value
    and answer differ from the true column's."""
    row, spans = record.rows[-1], record.spans[-1]
    if len(spans.get("V", ())) != 1:
        return []
    (vs, ve), distract = spans["V"][0], list(spans.get("V'", ()))
    columns = [c for c in range(len(row.values)) if c != row.true_index]
    if len(distract) != len(columns):
        return []
    out = []
    true_surface = record.text[vs:ve]
    for k, ((ds, de), c) in enumerate(zip(distract, columns)):
        if row.values[c] == row.values[row.true_index] or row.answers[c] == row.true_answer:
            continue
        other = record.text[ds:de]
        edits = [(vs, ve, _match_case(true_surface, other)), (ds, de, _match_case(other, true_surface))]
        out.append((_replace(record.prompt, edits), row.answers[c], k))
    return out


def make_counterfactuals(records: Iterable[GARRecord], tokenizer: Any, schema: RoleSchema, kind: str = "pair", *,
                         add_special_tokens: bool = True) -> CFSet:
    """Clean/corrupted items of ``kind`` (``pair`` or ``context``) from GAR records.

    Counts: ``candidates``, ``kept`` and one entry per rejection reason (``no_twin``,
    ``negated``, ``no_distinct_column``, ``unequal_length``, ``same_target_token``,
    ``outside_value_spans``). Raises when nothing is left.
    """
    if kind not in KINDS:
        raise GARConfigError(f"unknown counterfactual {kind!r}; choose from {', '.join(KINDS)}")
    if not getattr(tokenizer, "is_fast", False):
        raise GARConfigError("counterfactuals need a Hugging Face fast tokenizer (token offsets)")
    if "END" not in schema.roles:
        raise GARConfigError(f"schema {schema.name!r} has no END role (the metric is read there)")
    records = list(records)
    counts: Counter = Counter()
    # (record, [(corrupted prompt, clean answer, corrupted answer, swapped V' index or None)])
    jobs: list[tuple[GARRecord, list[tuple[str, str, str, int | None]]]] = []
    twins: dict[str, dict[str, GARRecord]] = defaultdict(dict)
    for r in records:
        if r.family == "cls":
            twins[r.pair_id][str(r.label)] = r
    for r in records:
        if r.family == "cls" and kind == "pair":
            group = twins[r.pair_id]
            if r is not group.get("Yes"):
                if r is group.get("No") and "Yes" not in group:
                    counts["candidates"] += 1
                    counts["no_twin"] += 1
                continue
            counts["candidates"] += 1
            if "No" not in group:
                counts["no_twin"] += 1
                continue
            jobs.append((r, [(group["No"].prompt, "Yes", "No", None)]))
            continue
        if r.family == "cls" and r.label != "Yes":
            continue  # context counterfactuals start from the true statement
        counts["candidates"] += 1
        if r.negate:
            counts["negated"] += 1
            continue
        if kind == "pair":
            options = [(p, r.answer, a, None) for p, a in _query_swaps(r)]
        else:
            options = [(p, "Yes" if r.family == "cls" else r.answer, "No" if r.family == "cls" else a, k)
                       for p, a, k in _value_swaps(r)]
        if not options:
            counts["no_distinct_column"] += 1
            continue
        jobs.append((r, options))
    items: list[CFItem] = []
    job_records = [r for r, _ in jobs]
    all_ids = token_ids(tokenizer, [r.prompt for r in job_records], add_special_tokens)
    positions = (batch_token_positions(job_records, tokenizer, prompt=True, add_special_tokens=add_special_tokens)
                 if job_records else [])
    for (r, options), clean_ids, pos in zip(jobs, all_ids, positions):
        reason = None
        for (prompt, clean_answer, corrupt_answer, swapped), cids in zip(
                options, token_ids(tokenizer, [o[0] for o in options], add_special_tokens)):
            if len(cids) != len(clean_ids):
                reason = reason or "unequal_length"
                continue
            if swapped is not None and not _inside(clean_ids, cids, [pos[-1]["V"][0], pos[-1]["V'"][swapped]]):
                reason = reason or "outside_value_spans"
                continue
            tc, tx = next_tokens(tokenizer, [r.prompt, r.prompt], [clean_answer, corrupt_answer],
                                 [clean_ids, clean_ids], add_special_tokens)
            if tc == tx:
                reason = "same_target_token"
                continue
            items.append(CFItem(record_id=r.id, task_id=r.task_id, family=r.family, clean_ids=tuple(clean_ids),
                                corrupt_ids=tuple(cids), clean_target=tc, corrupt_target=tx,
                                role_ids=tuple(token_roles(r, pos, len(clean_ids), schema))))
            break
        else:
            counts[reason or "unequal_length"] += 1
    counts["kept"] = len(items)
    end = schema.roles.index("END")
    bad = [it.record_id for it in items if it.role_ids[-1] != end]
    if bad:
        raise GARDataError(f"record {bad[0]}: the last prompt token is not END under schema {schema.name!r}")
    out = CFSet(kind=kind, items=items, roles=schema.roles, end_role=end,
                pad_token_id=pad_id(tokenizer), counts={"candidates": 0, "kept": 0, **counts})
    if not items:
        raise GARConfigError(f"counterfactual {kind!r} leaves no pair (candidates {out.counts['candidates']}, "
                             f"rejected: {out.rejected or 'none'})")
    return out


def _inside(clean: Sequence[int], corrupt: Sequence[int], ranges: Sequence[TokenRange]) -> bool:
    """Every differing token lies within the token ranges of the two swapped value spans."""
    return all(any(s <= i < e for s, e in ranges) for i, (x, y) in enumerate(zip(clean, corrupt)) if x != y)


# ------------------------------------------------------------------------------------------
# role-mean ablation


class RoleMeans:
    """Per task: the sum ``[S, R, d]`` of every sender's output over the tokens of each role of the
    clean prompts, and the token counts ``[R]`` (plain torch forward hooks on the HF model)."""

    def __init__(self, sums: dict[str, "torch.Tensor"], counts: dict[str, "torch.Tensor"]):
        self.sums, self.counts = sums, counts

    @staticmethod
    def sender_role_sums(model: Any, batch_common: dict[str, Any]) -> "torch.Tensor":
        """``[B, S, R, d]``: each row's per-role sums of every sender's output (one clean forward)."""
        import torch

        from .ports import circuit_shape

        hf = getattr(model, "_module", model)
        s = circuit_shape(hf)
        H, hd, d = s.n_heads, s.head_dim, s.d_model
        ids, roles = batch_common["input_ids"], batch_common["role_ids"]
        R = batch_common["n_roles"]
        oh = torch.nn.functional.one_hot(roles.clamp(min=0), R) * (roles >= 0)[..., None]
        caps: dict[Any, Any] = {}
        hooks = [hf.get_submodule(s.path("embed")).register_forward_hook(lambda m, a, o: caps.__setitem__("emb", o))]
        for layer in range(s.n_layers):
            hooks.append(hf.get_submodule(s.path("o", layer)).register_forward_pre_hook(
                lambda m, a, i=layer: caps.__setitem__(("z", i), a[0])))
            hooks.append(hf.get_submodule(s.path("mlp", layer)).register_forward_hook(
                lambda m, a, o, i=layer: caps.__setitem__(("mlp", i), o)))
        mask, pos = batch_common["attention_mask"], batch_common["position_ids"]
        # transformers' eager float64 attention gives NaN on fully masked (left-padded) rows, and
        # the NaN reaches real positions: run float64 rows one at a time, unpadded
        split = hf.dtype == torch.float64 and not bool(mask.all())
        rows = [(b, mask[b].bool()) for b in range(len(ids))] if split else [(None, None)]
        got: dict[Any, list] = defaultdict(list)
        try:
            with torch.no_grad():
                for b, keep in rows:
                    if keep is None:
                        hf(input_ids=ids, attention_mask=mask, position_ids=pos)
                    else:
                        hf(input_ids=ids[b, keep][None], position_ids=pos[b, keep][None])
                        caps = {k: torch.zeros((1, len(keep), *v.shape[2:]), dtype=v.dtype).index_copy(
                            1, keep.nonzero()[:, 0], v) for k, v in caps.items()}
                    for k, v in caps.items():
                        got[k].append(v)
        finally:
            for h in hooks:
                h.remove()
        caps = {k: torch.cat(v) for k, v in got.items()}
        dt = caps["emb"].dtype
        oh = oh.to(dt)
        with torch.no_grad():
            parts = [torch.einsum("btd,btr->brd", caps["emb"], oh)[:, None]]
            for layer in range(s.n_layers):
                wo = hf.get_submodule(s.path("o", layer)).weight.view(d, H, hd)
                z = caps[("z", layer)].view(*ids.shape, H, hd)
                parts.append(torch.einsum("bthe,dhe,btr->bhrd", z, wo, oh))
                parts.append(torch.einsum("btd,btr->brd", caps[("mlp", layer)], oh)[:, None])
            return torch.cat(parts, 1)

    @classmethod
    def fit(cls, model: Any, cfset: CFSet, batch_size: int = 8) -> "RoleMeans":
        """Sums and counts per task over every item's clean prompt."""
        import torch

        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        for idx in cfset.batch_indices(batch_size):
            batch = cfset.batch(idx)
            common = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                      "position_ids": batch.position_ids, "role_ids": batch.role_ids, "n_roles": batch.n_roles}
            per_row = cls.sender_role_sums(model, common)
            oh = batch.role_onehot(torch.float64).sum(1)  # [B, R]
            for b, i in enumerate(idx):
                task = cfset.items[i].task_id
                sums[task] = sums.get(task, 0) + per_row[b]
                counts[task] = counts.get(task, 0) + oh[b]
        return cls(sums, counts)

    def excluding(self, model: Any, items: Sequence[CFItem], batch_common: dict[str, Any]) -> "torch.Tensor":
        """``[B, S, R, d]`` role means of each row's task without the row itself (leave-one-out);
        a role no other record of the task has keeps mean 0."""
        import torch

        own = self.sender_role_sums(model, batch_common)
        own_counts = torch.nn.functional.one_hot(batch_common["role_ids"].clamp(min=0), batch_common["n_roles"])
        own_counts = (own_counts * (batch_common["role_ids"] >= 0)[..., None]).sum(1).double()
        out = []
        for b, it in enumerate(items):
            if it.task_id not in self.sums:
                raise GARConfigError(f"no role means for task {it.task_id} (fit them on the same items)")
            n = (self.counts[it.task_id] - own_counts[b]).to(own.dtype)
            total = self.sums[it.task_id] - own[b]
            out.append(torch.where(n[None, :, None] > 0, total / n.clamp(min=1)[None, :, None], torch.zeros_like(total)))
        return torch.stack(out)


__all__ = ["CFItem", "CFSet", "KINDS", "RoleMeans", "make_counterfactuals"]
