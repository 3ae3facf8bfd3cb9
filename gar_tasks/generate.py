"""The GAR generator: rows and instances from a grid cell and a ``random.Random``.

``GeneratorConfig(...).build(seed)`` is the one entry point. Every function below is pure given
its ``random.Random``; nothing touches the global ``random`` state. For the ``paper`` profile the
draw order is the reference's (GAR_SPEC 12.2), so the published 4608 texts come out byte for byte.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from .errors import GARConfigError, GARDataError
from .grid import Cell, iter_cells
from .knobs import GENERATOR_RANGES
from .profiles import PROFILES, Profile, load_profile
from .records import DELIMITER, TERMINATOR, GARRecord, RowInfo
from .render import DRAW_PREAMBLE, render_instance
from .schemas import Relation, Schema, TreeSchema

SPLITS = ("test", "validation", "train")  # train: the organism's training data (scripts/train_organism.py)
PAPER_SEED = 42
KNOB_RANGES = GENERATOR_RANGES  # (lo, hi) per knob; the CLI shows and checks the same


# ---------------------------------------------------------------------------------------------
# sampling (GAR_SPEC 4)

def sample_hop(rng: random.Random, schema: Schema, rel: Relation, k: int,
               fix_similar: bool = False, unique_answer: bool = False) -> tuple[list[str], list[str]]:
    """Distractive sampling of one hop: (query column, target column), position 0 = true pair.

    ``unique_answer`` (v1, hop 1): draw a ``similar`` query only among words with exactly one
    synonym, so that the value shown leads back to exactly one answer.
    """
    domain = rel.domain
    if unique_answer and rel.name == "similar":
        domain = tuple(w for w in domain if len(rel(w)) == 1)
    query = rng.choice(domain)
    answers = rel(query)
    if rel.name == "neg_equal" and isinstance(schema, TreeSchema):
        siblings = set(schema.siblings(query))
        answers = [a for a in answers if a not in siblings]
    if fix_similar and rel.name == "neg_similar":
        answers = [a for a in answers if a != query]
    answer = rng.sample(answers, 1)[0]
    positive = set(rel(query))
    pool = [y for y in rel.codomain if y not in positive]
    if fix_similar and rel.name == "similar":
        pool = [y for y in pool if y != query]
    if not pool:
        raise GARDataError(f"relation {rel.name} of {schema.id}: no distractor for {query!r}")
    if len(pool) >= k:
        distractors = rng.sample(pool, k)
    elif len(pool) == 1:
        distractors = pool * k  # the reference repeats a single candidate without drawing
    else:
        distractors = rng.sample(pool, len(pool)) + [rng.choice(pool) for _ in range(k - len(pool))]
    return [query] + [rng.choice(rel.inv(d)) for d in distractors], [answer] + distractors


def sample_row(rng: random.Random, cell: Cell, profile: Profile, cxt_len: int,
               position: int | None = None) -> RowInfo:
    """One row (GAR_SPEC 4.3): hop 0 gives queries/keys, hop 1 (crosswise) values/answers."""
    (s0, r0), (s1, r1) = cell.hop0, cell.hop1
    h0, h1 = profile.vocab[s0], profile.vocab[s1]
    queries, keys = sample_hop(rng, h0, h0.relation(r0), cxt_len - 1, profile.fix_similar)
    answers, values = sample_hop(rng, h1, h1.relation(r1), cxt_len - 1, profile.fix_similar,
                                 unique_answer=profile.fix_similar)
    order = list(range(cxt_len))
    rng.shuffle(order)  # the same draws as shuffling the tuples themselves
    if position is not None:  # balancing: move the true tuple to the requested position
        i = order.index(0)
        order[i], order[position] = order[position], order[i]
    pick = lambda col: tuple(col[j] for j in order)  # noqa: E731
    t = order.index(0)
    return RowInfo(pick(keys), pick(values), pick(answers), pick(queries), t, t)


def _row_key(row: RowInfo) -> tuple:
    return (row.keys, row.values, row.query, row.true_index, row.true_answer)


def _unbalanced(rows: list[RowInfo]) -> bool:
    """The reference's answer-distribution rules (GAR_SPEC 7.3) plus 'not all rows the same
    answer' for any number of rows; positions are balanced per task instead (see build)."""
    answers = [r.true_answer for r in rows]
    counts = sorted((answers.count(a) for a in set(answers)), reverse=True)
    if len(rows) >= 2 and len(counts) == 1:
        return True
    if len(rows) >= 4:
        if len(counts) > 2 and counts[0] > max(2, len(rows) / 3):
            return True
        if len(counts) == 2 and counts[0] > 2 * counts[1]:
            return True
    return False


def gen_rows(rng: random.Random, cell: Cell, profile: Profile, cxt_len: int, nrows: int,
             position: int | None = None) -> list[RowInfo]:
    """Rows of one generation instance (GAR_SPEC 7.1); the last row is the test row."""
    for _ in range(60):
        rows: list[RowInfo] = []
        for _ in range(2 * nrows):
            pos = position if len(rows) == nrows - 1 else None
            row = sample_row(rng, cell, profile, cxt_len, pos)
            if _row_key(row) not in {_row_key(r) for r in rows}:
                rows.append(row)
            if len(rows) == nrows:
                break
        if len(rows) < nrows:
            raise GARDataError(f"{cell.code}: could not draw {nrows} distinct rows")
        if not (profile.balance and _unbalanced(rows)):
            return rows
    raise GARDataError(f"{cell.code}: could not draw balanced rows in 60 tries")


def cls_rows(rng: random.Random, cell: Cell, profile: Profile, cxt_len: int, nrows: int,
             position: int | None = None,
             demo_labels: list[str] | None = None) -> tuple[list[RowInfo], list[RowInfo]]:
    """Rows of one counter-paired classification pair (GAR_SPEC 7.2): (Yes twin, No twin)."""
    versions = []
    for i in range(nrows):
        row = sample_row(rng, cell, profile, cxt_len, position if i == nrows - 1 else None)
        wrong = [j for j in range(cxt_len)
                 if row.queries[j] != row.query and row.answers[j] != row.true_answer]
        if not wrong:
            raise GARDataError(f"{cell.code}: no column qualifies for a 'No' statement")
        versions.append((replace(row, label="Yes"), replace(row, shown_index=rng.choice(wrong), label="No")))
    if demo_labels is None:
        demos = [rng.choice(v) for v in versions[:-1]]
    else:
        demos = [v[0] if lab == "Yes" else v[1] for v, lab in zip(versions[:-1], demo_labels)]
    return demos + [versions[-1][0]], demos + [versions[-1][1]]


# ---------------------------------------------------------------------------------------------
# the run configuration

@dataclass(frozen=True)
class GeneratorConfig:
    """One generator run. ``paper`` takes no knobs (it is the published benchmark); ``v1`` takes
    context items per row, demonstration rows, instances per task, seed and split."""

    profile: str = "paper"
    cxt_len: int = 3
    n_demos: int = 1
    n_per_task: int = 8  # generation instances, or classification pairs, per task
    seed: int = PAPER_SEED
    split: str = "test"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise GARConfigError(f"unknown profile {self.profile!r}; expected one of: {', '.join(PROFILES)}")
        if self.split not in SPLITS:
            raise GARConfigError(f"unknown split {self.split!r}; expected one of: {', '.join(SPLITS)}")
        for name, (lo, hi) in KNOB_RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise GARConfigError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise GARConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.profile == "paper":
            fixed = {"cxt_len": 3, "n_demos": 1, "n_per_task": 8, "seed": PAPER_SEED, "split": "test"}
            changed = [f"{k}={getattr(self, k)!r}" for k, v in fixed.items() if getattr(self, k) != v]
            if changed:
                raise GARConfigError(f"profile 'paper' is the published benchmark and takes no knobs "
                                     f"({', '.join(changed)}); use --profile v1")

    def cells(self) -> list[Cell]:
        return list(iter_cells())

    def n_records(self) -> int:
        return sum(self.n_per_task * (2 if c.family == "cls" else 1) for c in self.cells())

    def build(self, seed: int | None = None, progress: Callable[[int], None] | None = None) -> list[GARRecord]:
        """All records of the run (``seed`` overrides the config's)."""
        return list(self.iter_records(seed, progress))

    def cell_records(self, cell: Cell, seed: int | None = None) -> list[GARRecord]:
        """The records of one grid cell."""
        cfg = self if seed is None else replace(self, seed=seed)
        return list(_cell_records(cfg, load_profile(cfg.profile), cell))

    def iter_records(self, seed: int | None = None,
                     progress: Callable[[int], None] | None = None) -> Iterator[GARRecord]:
        """The records of the run, lazily (``progress(n)`` after each grid cell's n records)."""
        cfg = self if seed is None else replace(self, seed=seed)
        profile = load_profile(cfg.profile)
        for cell in cfg.cells():  # one record at a time: nothing is held beyond the current one
            k = 0
            for r in _cell_records(cfg, profile, cell):
                k += 1
                yield r
            if progress is not None:
                progress(k)


def _test_row_key(rec: GARRecord) -> tuple:
    """What a test row asks (context and query): no other split may ask it again."""
    row = rec.rows[-1]
    return (row.keys, row.values, row.query)


def _cell_rng(cfg: GeneratorConfig, cell: Cell) -> random.Random:
    if cfg.profile == "paper":
        return random.Random(PAPER_SEED)  # the reference re-seeds every cell with 42
    return random.Random(f"gar|{cfg.profile}|{cfg.split}|{cfg.seed}|{cell.code}")


def _balanced(rng: random.Random, n: int, values: list) -> list:
    """``n`` values cycling through ``values``, shuffled: counts differ by at most one."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def _cell_records(cfg: GeneratorConfig, profile: Profile, cell: Cell) -> Iterator[GARRecord]:
    exclude: set[tuple] = set()
    if cfg.split != "test":  # keep other splits disjoint from the test split by construction
        exclude = {_test_row_key(r) for r in _cell_records(replace(cfg, split="test"), profile, cell)}
    rng = _cell_rng(cfg, cell)
    vocab = profile.vocab
    task_id = cell.task_id(vocab, cfg.cxt_len)
    nrows = cfg.n_demos + 1
    positions: list[int | None] = [None] * cfg.n_per_task
    demo_labels: list[list[str] | None] = [None] * cfg.n_per_task
    if profile.balance:
        positions = _balanced(rng, cfg.n_per_task, list(range(cfg.cxt_len)))
        flat = _balanced(rng, cfg.n_per_task * cfg.n_demos, ["Yes", "No"])
        demo_labels = [flat[i * cfg.n_demos:(i + 1) * cfg.n_demos] for i in range(cfg.n_per_task)]
    prefix = f"{cfg.profile}/{cfg.split}/{cell.code}"
    made, tries = 0, 0
    while made < cfg.n_per_task:
        tries += 1
        if tries > 20 * cfg.n_per_task:
            raise GARDataError(f"{cell.code}: too few instances disjoint from the test split")
        if cell.family == "gen":
            groups = [gen_rows(rng, cell, profile, cfg.cxt_len, nrows, positions[made])]
        else:
            groups = list(cls_rows(rng, cell, profile, cfg.cxt_len, nrows, positions[made], demo_labels[made]))
        rendered = []
        for rows in groups:  # v1: the No twin reuses the Yes twin's preamble (they differ in one term)
            shared = rendered[0][4] if rendered and profile.balance else DRAW_PREAMBLE
            rendered.append((rows, *render_instance(rng, cell, profile, rows, shared)))
        meta = dict(profile=cfg.profile, split=cfg.split, task_id=task_id, task_row=cell.task_row.row,
                    family=cell.family, query_schema=cell.hop0[0], answer_schema=cell.hop1[0],
                    rel0=cell.hop0[1], rel1=cell.hop1[1], swap_qa=cell.swap_qa, negate=cell.negate,
                    rev_item2str=cell.rev_item2str, n_r=cell.n_r)
        recs = []
        for j, (rows, text, spans, answer_start, _) in enumerate(rendered):
            final = rows[-1]
            if cell.family == "gen":
                rid = pair_id = f"{prefix}/{made:03d}"
                answer, label, choices = final.true_answer, None, tuple(dict.fromkeys(final.answers))
            else:
                rid, pair_id = f"{prefix}/{2 * made + j:03d}", f"{prefix}/p{made:03d}"
                answer, label, choices = final.label, final.label, ("Yes", "No")
            prompt = text[:answer_start - len(DELIMITER)]
            if text != prompt + DELIMITER + answer + TERMINATOR:
                raise GARDataError(f"{rid}: text does not end with the delimiter, answer and terminator")
            recs.append(GARRecord(id=rid, pair_id=pair_id, prompt=prompt, answer=answer, label=label,
                                  choices=choices, text=text, spans=tuple(spans), rows=tuple(rows), **meta))
        if exclude and _test_row_key(recs[0]) in exclude:
            continue
        made += 1
        yield from recs
