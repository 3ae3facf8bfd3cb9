"""The one record selector: a task selector grammar shared by every command, and the seeded choosers.

Selector grammar (``--tasks``): a comma list of terms, the union of what each selects, within the
chosen dataset config (``paper`` or ``v1``):

* ``all``, or the config's group name (``gar`` / ``gar_v1``): every task;
* a family: ``cls`` or ``gen``; an n_r: ``nr0``, ``nr1``, ``nr2``; both: ``cls_nr1``;
* a schema pair name: ``gender_city``, ``occupation_kind``, ... (``lm_eval_glue.pair_name``);
* any lm-eval leaf or group name of that config's ``gar`` tree: ``gar_cls``, ``gar_cls_nr1``,
  ``gar_cls_nr1_gender_city`` (``gar_v1_...`` with ``--config v1``).

A :class:`Slice` is one (family, n_r, pair) task. :func:`slice_records` gives the records of each
selected slice (record order); the choosers pick ``n`` of them with a seed:

* :func:`sample_indices`: ``k`` of ``n`` items, sorted (``gar patch`` per family of pairs);
* :func:`choose_twins`: whole Yes/No twin pairs per slice (``gar heads``: balanced labels, AtP pairs);
* :func:`choose_balanced`: ``ceil(n/2)`` Yes and ``floor(n/2)`` No per slice (``gar intervene``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from gar_tasks.errors import GARConfigError

if TYPE_CHECKING:  # pragma: no cover
    from gar_tasks.records import GARRecord

SELECTOR_HELP = ("valid forms: all | gar | cls | gen | nr0..nr2 | cls_nr1 | a pair name (e.g. gender_city) | "
                 "an lm-eval leaf or group name of the config (e.g. gar_cls, gar_cls_nr1, "
                 "gar_cls_nr1_gender_city); comma-separate several")


@dataclass(frozen=True)
class Slice:
    """One GAR task: a family, a number of relations, a schema pair."""

    family: str
    n_r: int
    pair: str

    @property
    def short_name(self) -> str:
        """``cls_nr1_gender_city`` (config-free)."""
        return f"{self.family}_nr{self.n_r}_{self.pair}"

    def task_name(self, config: str = "paper") -> str:
        """The lm-eval leaf name, e.g. ``gar_cls_nr1_gender_city`` (``gar_v1_...`` for v1)."""
        from gar_tasks.lm_eval_glue import TASK_PREFIX

        return f"{TASK_PREFIX[config]}_{self.short_name}"


@dataclass(frozen=True)
class Selection:
    """Chosen records, the task index of each, and the task names."""

    records: list[Any]
    task_index: list[int]
    tasks: list[str]


def _leaves(config: str) -> tuple[list[Slice], dict[str, list[Slice]]]:
    """Every (family, n_r, pair) slice of ``config`` and the lm-eval names selecting them."""
    from gar_tasks.lm_eval_glue import TASK_PREFIX, task_tree

    if config not in TASK_PREFIX:
        raise GARConfigError(f"unknown config {config!r}; choose from {', '.join(TASK_PREFIX)}")
    tree = task_tree()
    names: dict[str, list[Slice]] = {}
    slices = []
    for leaf in tree.leaves:
        if leaf.config == config and leaf.n_r is not None and leaf.pair is not None:
            s = Slice(leaf.family, leaf.n_r, leaf.pair)
            slices.append(s)
            names[leaf.name] = [s]
    groups = {g.name: g.tasks for g in tree.groups}

    def expand(name: str) -> list[Slice]:
        if name in names:
            return names[name]
        return [s for t in groups.get(name, ()) for s in expand(t)]

    for g in groups:
        got = expand(g)
        if got:
            names[g] = got
    return slices, names


def select_slices(selector: str, config: str = "paper") -> list[Slice]:
    """The slices a selector names (see the module docstring); unknown terms are an error."""
    slices, names = _leaves(config)
    terms = [t.strip() for t in str(selector).split(",") if t.strip()]
    if not terms:
        raise GARConfigError(f"empty task selector; {SELECTOR_HELP}")
    pairs = {s.pair for s in slices}
    chosen: set[Slice] = set()
    for term in terms:
        m = re.fullmatch(r"(?:(cls|gen)_)?nr(\d+)|(cls|gen)", term)
        if term == "all":
            got = slices
        elif term in names:
            got = names[term]
        elif term in pairs:
            got = [s for s in slices if s.pair == term]
        elif m:
            fam = m.group(1) or m.group(3)
            n_r = None if m.group(2) is None else int(m.group(2))
            got = [s for s in slices if (fam is None or s.family == fam) and (n_r is None or s.n_r == n_r)]
        else:
            got = []
        if not got:
            raise GARConfigError(f"unknown task selector {term!r} for config {config!r}; {SELECTOR_HELP}")
        chosen.update(got)
    return sorted(chosen, key=lambda s: (s.family, s.n_r, s.pair))


def _slice_of() -> Any:
    """A function record -> its :class:`Slice`."""
    from gar_tasks.grid import load_task_rows
    from gar_tasks.lm_eval_glue import pair_name

    rows = [pair_name(r.person_schema, r.thing_schema) for r in load_task_rows()]
    return lambda r: Slice(r.family, r.n_r, rows[r.task_row])


def slice_records(records: Sequence["GARRecord"], slices: Sequence[Slice]) -> dict[Slice, list["GARRecord"]]:
    """The records of each slice (slices in the given order, records in their order)."""
    slice_of = _slice_of()
    out: dict[Slice, list[Any]] = {s: [] for s in slices}
    for r in records:
        s = slice_of(r)
        if s in out:
            out[s].append(r)
    return out


def filter_records(records: Sequence["GARRecord"], slices: Sequence[Slice]) -> list["GARRecord"]:
    """The records of any of ``slices``, in record order."""
    slice_of, wanted = _slice_of(), set(slices)
    return [r for r in records if slice_of(r) in wanted]


def load_records(config: str) -> list["GARRecord"]:
    """Every record of a dataset config (``gar_tasks.load.load_records``)."""
    from gar_tasks.load import load_records as load

    return list(load(config))


def check_n(n: int) -> None:
    if n < 1:
        raise GARConfigError(f"--n must be at least 1, got {n}")


def sample_indices(rng: Any, n_total: int, k: int) -> list[int]:
    """``min(k, n_total)`` distinct indices of ``range(n_total)`` drawn with ``rng``, sorted."""
    return sorted(int(i) for i in rng.choice(n_total, size=min(k, n_total), replace=False))


def choose_twins(records: Sequence["GARRecord"], slices: Sequence[Slice], n: int, seed: int) -> Selection:
    """At most ``n`` cls records per slice, chosen with ``seed``: whole twin pairs (same ``pair_id``,
    one Yes and one No) so labels stay balanced and AtP can use the pairs; an odd ``n`` adds one
    record of a further pair. Tasks are named :attr:`Slice.short_name`; slices without records are
    left out of the task list."""
    import numpy as np

    check_n(n)
    cls_slices = sorted({s for s in slices if s.family == "cls"}, key=lambda s: (s.n_r, s.pair))
    by_slice = slice_records(records, cls_slices)
    rng = np.random.default_rng(seed)
    sel = Selection([], [], [])
    for s in cls_slices:
        groups: dict[str, list[Any]] = {}
        for r in by_slice[s]:
            groups.setdefault(r.pair_id, []).append(r)
        if not groups:
            continue
        group_list = list(groups.values())
        for g in group_list:  # Yes first: a lone extra record is then a Yes, a whole group stays balanced
            g.sort(key=lambda r: (str(r.label) != "Yes", r.id))
        chosen: list[Any] = []
        for i in rng.permutation(len(group_list)):
            room = n - len(chosen)
            if room <= 0:
                break
            chosen.extend(group_list[int(i)][:room])
        sel.task_index.extend([len(sel.tasks)] * len(chosen))
        sel.tasks.append(s.short_name)
        sel.records.extend(chosen)
    return sel


def choose_balanced(records: Sequence["GARRecord"], slices: Sequence[Slice], n: int, seed: int,
                    config: str = "paper") -> Selection:
    """``ceil(n/2)`` Yes and ``floor(n/2)`` No cls records per slice (fewer when a slice has fewer),
    each slice drawn with a fresh generator seeded ``seed``. Tasks are named by their lm-eval leaf."""
    import numpy as np

    check_n(n)
    cls_slices = [s for s in slices if s.family == "cls"]
    by_slice = slice_records(records, cls_slices)
    sel = Selection([], [], [])
    for s, recs in by_slice.items():
        rng = np.random.default_rng(seed)
        chosen = []
        for label, k in (("Yes", n - n // 2), ("No", n // 2)):
            pool = [r for r in recs if str(r.label) == label]
            chosen += [pool[i] for i in sample_indices(rng, len(pool), k)]
        if not chosen:
            raise GARConfigError(f"no cls records for {s.task_name(config)}")
        sel.task_index.extend([len(sel.tasks)] * len(chosen))
        sel.tasks.append(s.task_name(config))
        sel.records.extend(chosen)
    return sel


__all__ = ["SELECTOR_HELP", "Selection", "Slice", "check_n", "choose_balanced", "choose_twins", "filter_records", "load_records",
           "sample_indices", "select_slices", "slice_records"]
