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
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
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


# ---------------------------------------------------------------------------------------------
# the task card (yaml_tasks/gar/README.md, lm-eval's task README template), written beside the YAML

TASK_README = "README.md"
# metadata.version of the task YAMLs -> what that version changed; every version a template or a
# group carries needs its line here, so the card's changelog cannot miss a version bump
TASK_CHANGELOG = {
    "1.0": "first version: the `gar`, `gar_v1`, chat, sub-question and free-generation trees; `paper` "
           "reproduces the published 4,608 instances byte for byte.",
}
_VERSION_LINE = re.compile(r"^metadata:\s*\n\s+version:\s*([^\s#]+)", re.MULTILINE)
_FAMILY_WORDS = {"gen": "generation", "cls": "classification"}


def template_versions(folder: Path) -> dict[str, str]:
    """``metadata.version`` of every leaf template (``_template_*``) in ``folder``."""
    out = {}
    for path in sorted(folder.glob("_template_*")):
        found = _VERSION_LINE.search(path.read_text(encoding="utf-8"))
        if found is None:
            raise GARConfigError(f"{path.name} has no metadata.version")
        out[path.name] = found.group(1)
    return out


def _groups_top_down(tree: TaskTree) -> list[tuple[Group, Leaf]]:
    """Every group, each root followed by its subgroups depth first, with one of its leaves."""
    groups = {g.name: g for g in tree.groups}
    leaves = {leaf.name: leaf for leaf in tree.leaves}
    children = {t for g in tree.groups for t in g.tasks}

    def first_leaf(name: str) -> Leaf:
        return leaves[name] if name in leaves else first_leaf(groups[name].tasks[0])

    out: list[tuple[Group, Leaf]] = []

    def walk(name: str) -> None:
        if name in groups:
            out.append((groups[name], first_leaf(name)))
            for t in groups[name].tasks:
                walk(t)

    for g in tree.groups:
        if g.name not in children:
            walk(g.name)
    return out


def _group_line(group: Group, leaf: Leaf, tree: TaskTree) -> str:
    route = "chat" if "chat" in leaf.template else "log-likelihood"
    members = [t for t in group.tasks if t in {x.name for x in tree.leaves}]
    if leaf.n_r is None:
        what = "compositionality sub-questions"
    elif members:
        what = f"{_FAMILY_WORDS[leaf.family]}, n_r = {leaf.n_r}"
    elif group.name.endswith("_" + leaf.family):
        what = f"{_FAMILY_WORDS[leaf.family]}, every n_r"
    else:
        what = "generation + classification"
    kind = "tasks" if members else "groups"
    return (f"* `{group.name}`: {what}; config `{leaf.config}`, {route}, metric `{group.metric}` "
            f"({len(group.tasks)} {kind}: {', '.join(f'`{t}`' for t in group.tasks) if not members else 'below'})")


def _task_tables(tree: TaskTree) -> str:
    """One compact table per benchmark tree (schema pair x family x n_r) plus the other tasks."""
    grid = [leaf for leaf in tree.leaves if leaf.n_r is not None]
    prefixes = sorted({leaf.name.split(f"_{leaf.family}_nr")[0] for leaf in grid}, key=lambda p: (len(p), p))
    cols = sorted({(leaf.family, leaf.n_r) for leaf in grid}, key=lambda c: (FAMILIES.index(c[0]), c[1]))
    pairs = sorted({leaf.pair for leaf in grid})
    have = {leaf.name for leaf in tree.leaves}
    lines = []
    for prefix in prefixes:
        lines += [f"`{prefix}`: leaf `{prefix}_{{family}}_nr{{n_r}}_{{pair}}` (x = the leaf exists), "
                  f"tag `{prefix}_pair_{{pair}}`", "",
                  "| pair | " + " | ".join(f"{fam} nr{n}" for fam, n in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for pair in pairs:
            marks = ["x" if f"{prefix}_{fam}_nr{n}_{pair}" in have else "" for fam, n in cols]
            lines.append(f"| `{pair}` | " + " | ".join(marks) + " |")
        lines.append("")
    for leaf in tree.leaves:
        if leaf.n_r is None:
            route = "chat" if "chat" in leaf.template else "log-likelihood"
            what = ("free generation, exact match of the first line" if "greedy" in leaf.template
                    else f"sub-question `{leaf.family}`")
            lines.append(f"* `{leaf.name}`: {what}; config `{leaf.config}`, {route}")
    return "\n".join(lines)


def render_task_readme(folder: Path | None = None) -> str:
    """The task card of ``yaml_tasks/gar/`` in lm-eval's task README template, from the task tree,
    the templates' ``metadata.version`` and :data:`TASK_CHANGELOG`."""
    import string
    from importlib import resources

    from .lm_eval_hook import tasks_dir

    folder = folder or tasks_dir() / "gar"
    tree = task_tree()
    versions = template_versions(folder)
    by_version: dict[str, list[str]] = {}
    for name, version in versions.items():
        by_version.setdefault(version, []).append(f"`{name}`")
    for group in tree.groups:
        by_version.setdefault(str(group.yaml_dict()["metadata"]["version"]), []).append("groups")
    missing = sorted(set(by_version) - set(TASK_CHANGELOG))
    if missing:
        raise GARConfigError(f"task metadata.version {', '.join(missing)} has no TASK_CHANGELOG entry")
    changelog = "\n".join(
        f"* version {v} ({', '.join(sorted(set(by_version[v])))}): {TASK_CHANGELOG[v]}"
        for v in sorted(by_version, key=lambda v: tuple(int(x) for x in v.split(".")), reverse=True))
    tag_lines = []
    for tag in sorted(tree.tags, key=lambda t: (len(t.rsplit('_pair_', 1)[0]), t)):
        members = [leaf.name for leaf in tree.leaves if tag in leaf.tags]
        tag_lines.append(f"* `{tag}`: the `{tag.rsplit('_pair_', 1)[1]}` leaves of "
                         f"`{tag.rsplit('_pair_', 1)[0]}` ({len(members)} tasks)")
    body = resources.files("gar_tasks").joinpath("data", "task_readme.md").read_text(encoding="utf-8")
    return string.Template(body).substitute(
        generated_note="<!-- " + GENERATED_HEADER.strip("# \n") + " -->",
        groups="\n".join(_group_line(g, leaf, tree) for g, leaf in _groups_top_down(tree)),
        tags="\n".join(tag_lines), tasks=_task_tables(tree), changelog=changelog)
