"""Relational schemas (vocabularies) and their relations, built from the package data files.

A *schema* is a vocabulary with structure: a tree (categories -> members) or the symmetric
adjective schema (antonym pairs of synonym groups). A *relation* maps an element to a list of
elements; its order matters because the generator draws from these lists with CPython's
``random`` and must reproduce the published data byte for byte (GAR_SPEC sections 2-3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .errors import GARConfigError, GARDataError

TREE_RELATIONS = ("equal", "child", "parent", "sibling")
SYM_RELATIONS = ("equal", "similar", "opposite", "sibling")


def _dedup(items: Sequence[str]) -> list[str]:
    """Keep the first occurrence of each string, in order."""
    return list(dict.fromkeys(items))


@dataclass(frozen=True)
class Relation:
    """A relation with ordered domain and codomain; ``f(x)`` and ``inv(y)`` return ordered lists."""

    name: str
    domain: tuple[str, ...]
    codomain: tuple[str, ...]
    _f: Callable[[str], list[str]] = field(repr=False, compare=False)
    _inv: Callable[[str], list[str]] = field(repr=False, compare=False)

    def __call__(self, x: str) -> list[str]:
        return self._f(x)

    def inv(self, y: str) -> list[str]:
        return self._inv(y)

    @property
    def base(self) -> str:
        """The relation name without its ``neg_`` prefix."""
        return self.name[4:] if self.name.startswith("neg_") else self.name

    @property
    def negated(self) -> bool:
        return self.name.startswith("neg_")

    def negate(self) -> "Relation":
        """``neg_R``: x -> every codomain element not in R(x) (GAR_SPEC 3.3)."""
        if self.negated:
            raise GARConfigError(f"relation {self.name} is already negated")
        codomain, domain, f, inv = self.codomain, self.domain, self._f, self._inv

        def nf(x: str) -> list[str]:
            pos = set(f(x))
            return [y for y in codomain if y not in pos]

        def ninv(y: str) -> list[str]:
            pos = set(inv(y))
            return [x for x in domain if x not in pos]

        return Relation("neg_" + self.name, domain, codomain, nf, ninv)


@dataclass(frozen=True)
class SchemaMeta:
    """Presentation attributes of a schema (GAR_SPEC 2.1, ``schema_meta.json``)."""

    set_type: str
    name: str | None
    wh: str | None
    sub_wh: str | None
    bos: Mapping[str, str]
    verbalizers: Mapping[str, str]


class Schema:
    """A vocabulary and the relations defined on it."""

    id: str
    meta: SchemaMeta

    @property
    def is_person(self) -> bool:
        return self.id in PERSON_SCHEMAS

    def relation(self, name: str) -> Relation:
        """The named relation; ``neg_R`` is the complement of ``R`` (cached per schema)."""
        if not name.startswith("neg_"):
            return self._relation(name)
        cache: dict[str, Relation] = self.__dict__.setdefault("_neg_cache", {})
        if name not in cache:
            cache[name] = self._relation(name[4:]).negate()
        return cache[name]

    def _relation(self, name: str) -> Relation:  # pragma: no cover - abstract
        raise NotImplementedError

    def verbalizer(self, relation: str) -> str:
        """' a city of' for child-like relations with a non-empty verbaliser, else ''."""
        base = relation[4:] if relation.startswith("neg_") else relation
        if base in ("child", "sibling"):
            v = self.meta.verbalizers.get(base, "")
            if v:
                return " " + v
        return ""

    @property
    def wh(self) -> str:
        return self.meta.wh or "which"


class TreeSchema(Schema):
    """Categories -> members; every member in exactly one category."""

    def __init__(self, schema_id: str, meta: SchemaMeta, tree: Mapping[str, Sequence[str]]):
        self.id, self.meta = schema_id, meta
        self.categories: tuple[str, ...] = tuple(tree)
        self.members_of: dict[str, tuple[str, ...]] = {c: tuple(ms) for c, ms in tree.items()}
        self.members: tuple[str, ...] = tuple(m for c in self.categories for m in self.members_of[c])
        self.category_of: dict[str, str] = {}
        for c in self.categories:
            if not self.members_of[c]:
                raise GARDataError(f"schema {schema_id}: category {c!r} has no members")
            for m in self.members_of[c]:
                if m in self.category_of:
                    raise GARDataError(f"schema {schema_id}: member {m!r} listed twice")
                self.category_of[m] = c
        self._cache: dict[str, Relation] = {}

    def _relation(self, name: str) -> Relation:
        if name in self._cache:
            return self._cache[name]
        M, C, mo, co = self.members, self.categories, self.members_of, self.category_of
        if name == "equal":
            rel = Relation(name, M, M, lambda x: [x], lambda y: [y])
        elif name == "child":
            rel = Relation(name, C, M, lambda c: list(mo[c]), lambda m: [co[m]])
        elif name == "parent":
            rel = Relation(name, M, tuple(_dedup([co[m] for m in M])), lambda m: [co[m]],
                           lambda c: list(mo[c]))
        elif name == "sibling":
            sib = lambda m: [x for x in mo[co[m]] if x != m]  # noqa: E731
            rel = Relation(name, M, M, sib, sib)
        else:
            raise GARConfigError(
                f"schema {self.id} has no relation {name!r} (tree relations: {', '.join(TREE_RELATIONS)})")
        self._cache[name] = rel
        return rel

    def siblings(self, m: str) -> list[str]:
        return [x for x in self.members_of[self.category_of[m]] if x != m]


class SymSchema(Schema):
    """Antonym pairs of synonym groups (``person_adjs``)."""

    def __init__(self, schema_id: str, meta: SchemaMeta, pairs: Sequence[Mapping[str, Sequence[str]]]):
        self.id, self.meta = schema_id, meta
        self.group_of: dict[str, tuple[str, ...]] = {}
        self.antonyms_of: dict[str, tuple[str, ...]] = {}
        words: list[str] = []
        for i, pair in enumerate(pairs):
            if set(pair) != {"a", "b"}:
                raise GARDataError(f"schema {schema_id}: pair {i} must have exactly the keys 'a' and 'b'")
            a, b = tuple(pair["a"]), tuple(pair["b"])
            for g, h in ((a, b), (b, a)):
                if len(g) < 2:
                    raise GARDataError(f"schema {schema_id}: pair {i} has a group of fewer than 2 words")
                for w in g:
                    if w in self.group_of:
                        raise GARDataError(f"schema {schema_id}: word {w!r} listed twice")
                    self.group_of[w], self.antonyms_of[w] = g, h
            words += list(a) + list(b)
        self.words: tuple[str, ...] = tuple(words)
        self.members = self.words
        self._cache: dict[str, Relation] = {}

    def _relation(self, name: str) -> Relation:
        if name in self._cache:
            return self._cache[name]
        g, h = self.group_of, self.antonyms_of
        if name == "equal":
            f = lambda w: [w]  # noqa: E731
        elif name == "similar":
            f = lambda w: [x for x in g[w] if x != w]  # noqa: E731
        elif name == "opposite":
            f = lambda w: list(h[w])  # noqa: E731
        elif name == "sibling":
            f = lambda w: [x for x in g[w] if x != w] + list(h[w])  # noqa: E731
        else:
            raise GARConfigError(
                f"schema {self.id} has no relation {name!r} (symmetric relations: {', '.join(SYM_RELATIONS)})")
        codomain = tuple(_dedup([y for w in self.words for y in f(w)]))
        rel = Relation(name, self.words, codomain, f, f)
        self._cache[name] = rel
        return rel


PERSON_SCHEMAS = ("genders_of_persons", "occupations_Of_Persons")


@dataclass(frozen=True)
class Vocabulary:
    """All schemas of one profile, keyed by schema id."""

    schemas: Mapping[str, Schema]

    def __getitem__(self, schema_id: str) -> Schema:
        try:
            return self.schemas[schema_id]
        except KeyError:
            raise GARConfigError(
                f"unknown schema {schema_id!r}; known: {', '.join(sorted(self.schemas))}") from None


def build_vocabulary(meta: Mapping[str, Mapping], files: Mapping[str, object]) -> Vocabulary:
    """Build schemas from the meta table and the parsed vocabulary files (pure; validates)."""
    schemas: dict[str, Schema] = {}
    for sid, m in meta.items():
        try:
            sm = SchemaMeta(m["set_type"], m["name"], m["wh"], m["sub_wh"], dict(m["bos"] or {}),
                            dict(m["verbalizers"] or {}))
            data = files[m["file"]]
        except (KeyError, TypeError) as e:
            raise GARDataError(f"schema_meta.json: schema {sid!r} lacks field {e}") from None
        if sm.set_type == "TreeSet":
            if not isinstance(data, dict) or not all(
                    isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()):
                raise GARDataError(f"{m['file']}: expected an object of category -> list of strings")
            schemas[sid] = TreeSchema(sid, sm, data)
        elif sm.set_type == "SymSet":
            pairs = data.get("antonym_pairs") if isinstance(data, dict) else None
            if not isinstance(pairs, list):
                raise GARDataError(f"{m['file']}: expected an object with an 'antonym_pairs' list")
            schemas[sid] = SymSchema(sid, sm, pairs)
        else:
            raise GARDataError(f"schema_meta.json: schema {sid!r} has unknown set_type {sm.set_type!r}")
    return Vocabulary(schemas)
