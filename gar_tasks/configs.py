"""The registry of dataset configs: the single source for the Hub card, the Hub folder builder,
the loader and the ``dataset_name`` of the lm-eval tasks.

A config maps each of its splits to a ``GeneratorConfig``; every split is generated in-process
(offline) or read from a Hub folder built from the same registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from .errors import GARConfigError
from .generate import GeneratorConfig
from .records import GARRecord


@dataclass(frozen=True)
class DatasetConfig:
    """One Hub dataset config: a name, a one-line description and its splits."""

    name: str
    description: str
    splits: Mapping[str, Callable[[], list[GARRecord]]]
    default: bool = False


def _gen(**kw) -> Callable[[], list[GARRecord]]:
    cfg = GeneratorConfig(**kw)
    return cfg.build


def _sub(parent: str) -> Callable[[], list[GARRecord]]:
    """The compositionality sub-questions of the test split of the ``parent`` config."""
    def build() -> list[GARRecord]:
        from .subq import sub_records

        return sub_records(CONFIGS[parent].splits["test"]())
    return build


# in alphabetical order: the order in which the Hub card lists them (`datasets` sorts them)
CONFIGS: dict[str, DatasetConfig] = {c.name: c for c in (
    DatasetConfig("paper", "The published GAR benchmark (4608 instances), byte-identical to the "
                  "paper's GAR_data.jsonl, quirks kept.", {"test": _gen()}, default=True),
    DatasetConfig("sub", "Compositionality sub-questions of the paper config's generation records: each hop "
                  "of the test row asked alone (family sub_assoc, sub_hop0, sub_hop1; pair_id = the "
                  "parent's id).", {"test": _sub("paper")}),
    DatasetConfig("v1", "The same grid and templates with the published quirks fixed, answers and "
                  "answer positions balanced; a validation split from disjoint seeds is the few-shot pool.",
                  {"test": _gen(profile="v1"), "validation": _gen(profile="v1", split="validation")}),
    DatasetConfig("v1_sub", "Compositionality sub-questions of the v1 config's test generation records "
                  "(as in sub).", {"test": _sub("v1")}),
)}


def get_config(name: str) -> DatasetConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise GARConfigError(f"unknown dataset config {name!r}; known: {', '.join(CONFIGS)}") from None
