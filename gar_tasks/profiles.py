"""Generator profiles: ``paper`` (the published benchmark, quirks kept) and ``v1`` (quirks fixed).

A profile is data plus switches: its vocabulary (v1 applies ``data/v1_fixes.json``), whether the
irreflexive-``similar`` fix, the grammar fixes and answer/position balancing are on, and which
knobs it accepts.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .errors import GARConfigError, GARDataError
from .schemas import Vocabulary, build_vocabulary

PROFILES = ("paper", "v1")


@dataclass(frozen=True)
class Profile:
    """Everything that distinguishes one profile's generator from another's."""

    name: str
    vocab: Vocabulary
    fix_similar: bool  # exclude the query word from similar distractors and neg_similar answers
    fix_grammar: bool  # agreement, 'The T-shirt', 'The boys are not', no 'that In other words'
    balance: bool  # answer and answer-position balancing
    plural_things: frozenset[str] = frozenset()


def _data(name: str) -> object:
    try:
        return json.loads(resources.files("gar_tasks").joinpath("data", name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GARDataError(f"package data file {name} is missing") from None
    except json.JSONDecodeError as e:
        raise GARDataError(f"package data file {name} is not valid JSON: {e}") from None


def _raw_vocab_files() -> tuple[dict, dict]:
    meta = _data("vocab/schema_meta.json")
    if not isinstance(meta, dict):
        raise GARDataError("schema_meta.json: expected an object")
    try:
        files = {m["file"]: _data("vocab/" + m["file"]) for m in meta.values()}
    except (KeyError, TypeError):
        raise GARDataError("schema_meta.json: every schema needs a 'file'") from None
    return meta, files


def apply_fixes(meta: dict, files: dict, fixes: dict) -> dict:
    """Return vocabulary files with the v1 renames and removals applied (pure)."""
    files = copy.deepcopy(files)
    rename, drop = fixes.get("rename", {}), fixes.get("drop_members", {})
    lower = set(fixes.get("drop_lowercase_members", []))
    for sid, m in meta.items():
        data = files[m["file"]]
        ren, dr = rename.get(sid, {}), set(drop.get(sid, []))
        keep = (lambda w: w not in dr and not (sid in lower and w[:1].islower()))  # noqa: E731
        if m["set_type"] == "TreeSet":
            new = {}
            for cat, members in data.items():
                ms = [ren.get(w, w) for w in members if keep(w)]
                if ms:
                    new[ren.get(cat, cat)] = ms
            files[m["file"]] = new
        else:
            for pair in data["antonym_pairs"]:
                for g in ("a", "b"):
                    pair[g] = [ren.get(w, w) for w in pair[g] if keep(w)]
    return files


@lru_cache(maxsize=None)
def load_profile(name: str) -> Profile:
    """The named profile (built once)."""
    if name not in PROFILES:
        raise GARConfigError(f"unknown profile {name!r}; expected one of: {', '.join(PROFILES)}")
    meta, files = _raw_vocab_files()
    if name == "paper":
        return Profile(name, build_vocabulary(meta, files), False, False, False)
    fixes = _data("v1_fixes.json")
    if not isinstance(fixes, dict):
        raise GARDataError("v1_fixes.json: expected an object")
    vocab = build_vocabulary(meta, apply_fixes(meta, files, fixes))
    return Profile(name, vocab, True, True, True, frozenset(fixes.get("plural_things", [])))
