"""lm-eval glue: the task tree as data, the ``custom_dataset`` loader and the doc functions.

The YAML files under ``yaml_tasks/gar/`` are written from ``task_tree()`` by
``scripts/make_yaml_tasks.py`` (a test checks they are up to date). Every leaf is one
(config, family, n_r, schema pair) slice of a dataset config; ``load_docs`` (the leaves'
``custom_dataset``) returns that slice through the one loader, offline by default.

The sub-question configs (``sub``, ``v1_sub``; see ``gar_tasks.subq``) have one leaf per kind
(``gar_sub_assoc``, ``gar_sub_hop0``, ``gar_sub_hop1``) under their own groups ``gar_sub`` and
``gar_v1_sub``; they are not part of the ``gar``/``gar_v1`` benchmark groups.

Data source: ``--metadata '{"gar_source": "ORG/NAME"}'`` (a Hub id) or a local folder built by
``gar push --dry-run --out DIR`` switches every GAR task without editing YAML; the environment
variable ``GAR_SOURCE`` does the same. ``gar_revision`` picks a Hub revision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .configs import CONFIGS
from .errors import GARConfigError
from .grid import iter_cells
from .records import DELIMITER
from .subq import KINDS as SUB_FAMILIES

FAMILIES = ("gen", "cls")
SCHEMA_SHORT = {
    "genders_of_persons": "gender", "occupations_Of_Persons": "occupation",
    "countries_of_cities": "city", "countries_of_landmarks": "landmark",
    "kinds_of_things": "kind", "capabilities_of_things": "usage", "person_adjs": "adj",
}
# dataset config -> task-name prefix; the paper config owns the bare `gar` names
TASK_PREFIX = {"paper": "gar", "v1": "gar_v1"}
# sub-question config -> task-name prefix: groups of their own, outside the benchmark groups
SUB_TASK_PREFIX = {"sub": "gar_sub", "v1_sub": "gar_v1_sub"}
# benchmark config -> the config of its compositionality sub-questions
SUB_CONFIG_OF = {"paper": "sub", "v1": "v1_sub"}
# the chat / API route (generate_until, answers extracted by lm-eval filters): same tree shapes
CHAT_TASK_PREFIX = {"paper": "gar_chat", "v1": "gar_v1_chat"}
CHAT_SUB_TASK_PREFIX = {"sub": "gar_chat_sub", "v1_sub": "gar_v1_chat_sub"}
CHAT_TEMPLATES = {"gen": "_template_chat_gen", "cls": "_template_chat_cls"}
CHAT_METRIC = "exact_match"
CHAT_FILTER = "answer"  # the filter pipeline's name in the chat templates: results key exact_match,answer
# The instruction put before the GAR prompt (demonstration rows included) in the user message.
# Sub-questions are generation questions. A system prompt is lm-eval's --system_instruction.
CHAT_INSTRUCTIONS = {
    "gen": "Complete the last line of the text below. Reply with the missing word or phrase only.",
    "cls": "Answer the last question of the text below with Yes or No only.",
}


def pair_name(person_schema: str, thing_schema: str) -> str:
    return f"{SCHEMA_SHORT[person_schema]}_{SCHEMA_SHORT[thing_schema]}"


@dataclass(frozen=True)
class Leaf:
    """One leaf task: a slice of a dataset config."""

    name: str
    config: str
    family: str
    n_r: int | None
    pair: str | None
    template: str
    tags: tuple[str, ...] = ()

    def yaml_dict(self) -> dict[str, Any]:
        kwargs = {"gar_config": self.config, "family": self.family}
        if self.n_r is not None:
            kwargs["n_r"] = self.n_r
        if self.pair is not None:
            kwargs["pair"] = self.pair
        d: dict[str, Any] = {"include": self.template, "task": self.name}
        if self.tags:
            d["tag"] = list(self.tags)
        d["dataset_name"] = self.config
        d["dataset_kwargs"] = kwargs
        if "validation" in CONFIGS[self.config].splits:
            d["fewshot_split"] = "validation"
        return d


@dataclass(frozen=True)
class Group:
    name: str
    tasks: tuple[str, ...]
    metric: str = "acc"
    filters: tuple[str, ...] | None = None  # lm-eval filter names to aggregate (None: lm-eval's default)

    def yaml_dict(self) -> dict[str, Any]:
        agg: dict[str, Any] = {"metric": self.metric}
        if self.filters is not None:
            agg["filter_list"] = list(self.filters)
        agg.update(aggregation="mean", weight_by_size=True)
        return {"group": self.name, "task": list(self.tasks), "aggregate_metric_list": [agg],
                "metadata": {"version": 1.0}}


@dataclass
class TaskTree:
    leaves: list[Leaf] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)

    @property
    def tags(self) -> set[str]:
        return {t for leaf in self.leaves for t in leaf.tags}


def task_tree() -> TaskTree:
    """Every task, group and tag we ship, derived from the task grid and the config registry."""
    tree = TaskTree()
    slices = sorted({(c.family, c.n_r, c.task_row.row, pair_name(c.task_row.person_schema, c.task_row.thing_schema))
                     for c in iter_cells()})

    def benchmark(config: str, prefix: str, templates: dict[str, str], metric: str,
                  filters: tuple[str, ...] | None) -> None:
        fam_groups = []
        for fam in FAMILIES:
            nr_groups = []
            for n_r in sorted({s[1] for s in slices if s[0] == fam}):
                names = []
                for _, _, _, pair in [s for s in slices if s[0] == fam and s[1] == n_r]:
                    name = f"{prefix}_{fam}_nr{n_r}_{pair}"
                    tree.leaves.append(Leaf(name, config, fam, n_r, pair, templates[fam],
                                            (f"{prefix}_pair_{pair}",)))
                    names.append(name)
                tree.groups.append(Group(f"{prefix}_{fam}_nr{n_r}", tuple(names), metric, filters))
                nr_groups.append(f"{prefix}_{fam}_nr{n_r}")
            tree.groups.append(Group(f"{prefix}_{fam}", tuple(nr_groups), metric, filters))
            fam_groups.append(f"{prefix}_{fam}")
        tree.groups.append(Group(prefix, tuple(fam_groups), metric, filters))

    def sub(config: str, prefix: str, template: str, metric: str, filters: tuple[str, ...] | None) -> None:
        names = []
        for kind in SUB_FAMILIES:
            name = f"{prefix}_{kind.removeprefix('sub_')}"
            tree.leaves.append(Leaf(name, config, kind, None, None, template))
            names.append(name)
        tree.groups.append(Group(prefix, tuple(names), metric, filters))

    for config, prefix in TASK_PREFIX.items():
        benchmark(config, prefix, {"gen": "_template_gen", "cls": "_template_cls"}, "acc", None)
        tree.leaves.append(Leaf(f"{prefix}_gen_greedy", config, "gen", None, None, "_template_gen_greedy"))
    for config, prefix in SUB_TASK_PREFIX.items():
        sub(config, prefix, "_template_sub", "acc", None)
    # chat / API route: generate_until + lm-eval filters, one tree per benchmark config
    for config, prefix in CHAT_TASK_PREFIX.items():
        benchmark(config, prefix, CHAT_TEMPLATES, CHAT_METRIC, (CHAT_FILTER,))
    for config, prefix in CHAT_SUB_TASK_PREFIX.items():
        sub(config, prefix, CHAT_TEMPLATES["gen"], CHAT_METRIC, (CHAT_FILTER,))
    return tree


def quick_samples(per_leaf: int, config: str = "paper", chat: bool = False) -> dict[str, list[int]]:
    """lm-eval ``--samples`` for a quick run that still measures the compositionality gap: the first
    ``per_leaf`` documents of every benchmark leaf of ``config`` (what ``--limit`` takes) and, of its
    sub-question leaves, exactly the sub-questions of those generation documents (``--limit`` would
    take sub-questions of other parents, and the gap would join none)."""
    if config not in SUB_CONFIG_OF:
        raise GARConfigError(f"no sub-question config for {config!r}; known: {', '.join(SUB_CONFIG_OF)}")
    sub_config = SUB_CONFIG_OF[config]
    out: dict[str, list[int]] = {}
    parents: set[str] = set()
    for leaf in task_tree().leaves:
        if "greedy" in leaf.template or ("chat" in leaf.template) != chat:
            continue
        if leaf.config == config:
            ids = load_docs(leaf.config, leaf.family, leaf.n_r, leaf.pair)["test"]["id"]
            out[leaf.name] = list(range(min(per_leaf, len(ids))))
            if leaf.family == "gen":
                parents.update(ids[:per_leaf])
    for leaf in task_tree().leaves:
        if leaf.config == sub_config and ("chat" in leaf.template) == chat:
            pids = load_docs(leaf.config, leaf.family)["test"]["pair_id"]
            out[leaf.name] = [i for i, p in enumerate(pids) if p in parents]
    return out


# ---------------------------------------------------------------------------------------------
# custom_dataset and doc functions (called by lm-eval through yaml_tasks/gar/utils.py)

@lru_cache(maxsize=64)
def _slice_indices(config: str, source: str, revision: str | None, split: str,
                   family: str, n_r: int | None, pair: str | None) -> list[int]:
    from .grid import load_task_rows
    from .load import load

    rows = load_task_rows()
    pairs = [pair_name(r.person_schema, r.thing_schema) for r in rows]
    ds = load(config, source, split, revision)
    cols = ds.select_columns(["family", "n_r", "task_row"]).to_dict()
    return [i for i, (f, n, r) in enumerate(zip(cols["family"], cols["n_r"], cols["task_row"]))
            if f == family and (n_r is None or n == n_r) and (pair is None or pairs[r] == pair)]


def load_docs(gar_config: str = "paper", family: str = "gen", n_r: int | None = None,
              pair: str | None = None, gar_source: str | None = None, gar_revision: str | None = None,
              **_metadata: Any):
    """``custom_dataset`` of every GAR leaf: the leaf's slice of each split of the config."""
    from datasets import DatasetDict

    from .load import GENERATE, load

    if gar_config not in CONFIGS:
        raise GARConfigError(f"unknown GAR dataset config {gar_config!r}; known: {', '.join(CONFIGS)}")
    if family not in FAMILIES + SUB_FAMILIES:
        raise GARConfigError(f"unknown GAR family {family!r}; expected one of {FAMILIES + SUB_FAMILIES}")
    source = gar_source or os.environ.get("GAR_SOURCE") or GENERATE
    dd = load(gar_config, source, None, gar_revision)
    return DatasetDict({split: ds.select(_slice_indices(gar_config, source, gar_revision, split, family,
                                                         None if n_r is None else int(n_r), pair))
                        for split, ds in dd.items()})


def doc_to_text(doc: dict) -> str:
    return doc["prompt"]


def doc_to_target(doc: dict) -> str:
    """Generation target for loglikelihood: lm-eval does not insert a delimiter there."""
    return DELIMITER + doc["answer"]


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def doc_to_label(doc: dict) -> int:
    """Index of the gold choice (``multiple_choice`` adds ``target_delimiter`` itself)."""
    return list(doc["choices"]).index(doc["answer"])


def chat_doc_to_text(doc: dict) -> str:
    """The chat route's user message: a one-line instruction, a blank line, the GAR prompt."""
    return CHAT_INSTRUCTIONS["cls" if doc["family"] == "cls" else "gen"] + "\n\n" + doc["prompt"]


def process_greedy(doc: dict, results: list[str]) -> dict[str, float]:
    """Free generation: exact match of the first line, whitespace stripped."""
    pred = results[0].split("\n", 1)[0].strip()
    return {"exact_match": float(pred == doc["answer"].strip())}


# ---------------------------------------------------------------------------------------------
# the YAML files (written by scripts/make_yaml_tasks.py)

GENERATED_HEADER = "# Generated by scripts/make_yaml_tasks.py from gar_tasks.lm_eval_glue.task_tree(); do not edit.\n"


def render_yaml_files() -> dict[str, str]:
    """File name -> content of every generated YAML file under ``yaml_tasks/gar/``."""
    import yaml

    tree = task_tree()
    files = {}
    for item in [*tree.leaves, *tree.groups]:
        name = item.name
        files[f"{name}.yaml"] = GENERATED_HEADER + yaml.safe_dump(item.yaml_dict(), sort_keys=False, width=120)
    return files
