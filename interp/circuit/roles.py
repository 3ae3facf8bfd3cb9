"""Role schemas: one role id for every prompt token of every row (the circuit graph's positions).

GAR roles are not contiguous and interleave differently per record, so a circuit's "position"
is a *role*, and a batch carries a per-token role-id vector (Haklay et al. 2025's dataset schema
with GAR's spans as the schema). A schema is data (``interp/circuit/schemas/*.json`` or a user
JSON file) with these fields:

* ``roles``: the role names, in drawing order (``x`` axis of the circuit figure);
* ``test`` / ``demo``: span role of the test row / of a demonstration row -> schema role
  (span roles are those of :mod:`gar_tasks.records`: K, V, K', V', Q, R, A, END);
  a span role absent from the mapping is not labelled by it;
* ``precedence``: span roles in the order they win when spans overlap (``END`` first: the
  prediction position must be END; R and END overlap in some negated rows);
* ``before``: the role of tokens before the first row (the preamble, a BOS);
* ``unlabelled``: the role of every other token in no mapped span.

Padding gets role id ``-1`` (:data:`PAD_ROLE`; rows are left-padded with
:func:`interp.core.encode.left_pad` like the token ids). Token positions come from the record's
character spans through the tokenizer's offsets (:func:`gar_tasks.tokens.record_token_positions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from gar_tasks.errors import GARConfigError, GARDataError
from gar_tasks.records import ROLES as SPAN_ROLES, GARRecord
from gar_tasks.tokens import batch_token_positions

from ..core.encode import token_ids

SCHEMA_DIR = Path(__file__).parent / "schemas"
PAD_ROLE = -1
_LABEL_ROLES = tuple(r for r in SPAN_ROLES if r != "row")
_FIELDS = ("name", "roles", "test", "demo", "precedence", "before", "unlabelled")


@dataclass(frozen=True)
class RoleSchema:
    """A validated role schema (see the module docstring)."""

    name: str
    roles: tuple[str, ...]
    test: Mapping[str, str]
    demo: Mapping[str, str]
    precedence: tuple[str, ...]
    before: str
    unlabelled: str
    description: str = ""

    def index(self, role: str) -> int:
        """The id of ``role`` (its index in :attr:`roles`)."""
        try:
            return self.roles.index(role)
        except ValueError:
            raise GARConfigError(f"role {role!r} is not in schema {self.name!r} "
                                 f"(roles: {', '.join(self.roles)})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "roles": list(self.roles),
                "test": dict(self.test), "demo": dict(self.demo), "precedence": list(self.precedence),
                "before": self.before, "unlabelled": self.unlabelled}


def schema_from_dict(d: Mapping[str, Any], source: str = "schema") -> RoleSchema:
    """Validate a schema dict: every named role must exist, span roles must be GAR's."""
    if not isinstance(d, Mapping):
        raise GARConfigError(f"{source}: a role schema is a JSON object, got {type(d).__name__}")
    missing = [f for f in _FIELDS if f not in d]
    if missing:
        raise GARConfigError(f"{source}: role schema lacks {', '.join(missing)}")
    roles = tuple(d["roles"])
    name = str(d["name"])
    if not roles or not all(isinstance(r, str) and r for r in roles):
        raise GARConfigError(f"{source}: 'roles' must be a non-empty list of names")
    if len(set(roles)) != len(roles):
        raise GARConfigError(f"{source}: 'roles' lists a role twice")
    for key in ("test", "demo"):
        if not isinstance(d[key], Mapping):
            raise GARConfigError(f"{source}: {key!r} must map span roles to schema roles")
        for span_role, role in d[key].items():
            if span_role not in _LABEL_ROLES:
                raise GARConfigError(f"{source}: {key!r} maps unknown span role {span_role!r} "
                                     f"(span roles: {', '.join(_LABEL_ROLES)})")
            if role not in roles:
                raise GARConfigError(f"{source}: {key!r} maps {span_role} to unknown role {role!r} "
                                     f"(roles: {', '.join(roles)})")
    precedence = tuple(d["precedence"])
    bad = [r for r in precedence if r not in _LABEL_ROLES]
    if bad or len(set(precedence)) != len(precedence):
        raise GARConfigError(f"{source}: 'precedence' must list distinct span roles, got {list(precedence)}")
    used = set(d["test"]) | set(d["demo"])
    if not used <= set(precedence):
        raise GARConfigError(f"{source}: 'precedence' lacks mapped span roles {sorted(used - set(precedence))}")
    for key in ("before", "unlabelled"):
        if d[key] not in roles:
            raise GARConfigError(f"{source}: {key!r} names unknown role {d[key]!r} (roles: {', '.join(roles)})")
    return RoleSchema(name=name, roles=roles, test=dict(d["test"]), demo=dict(d["demo"]),
                      precedence=precedence, before=str(d["before"]), unlabelled=str(d["unlabelled"]),
                      description=str(d.get("description", "")))


def builtin_schemas() -> list[str]:
    """Names of the schemas shipped as data."""
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.json"))


def load_schema(name_or_path: "str | Path | Mapping[str, Any]" = "default") -> RoleSchema:
    """A built-in schema by name, a user schema from a JSON file, or a dict."""
    if isinstance(name_or_path, Mapping):
        return schema_from_dict(name_or_path)
    text = str(name_or_path)
    path = SCHEMA_DIR / f"{text}.json" if text in builtin_schemas() else Path(text).expanduser()
    if not path.is_file():
        raise GARConfigError(f"role schema {text!r} is neither a built-in schema "
                             f"({', '.join(builtin_schemas())}) nor a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GARConfigError(f"role schema {path}: invalid JSON ({e})") from None
    return schema_from_dict(data, source=str(path))


def _label_row(ids: list[int], row: Mapping[str, list[tuple[int, int]]], mapping: Mapping[str, str],
               schema: RoleSchema) -> None:
    """Label one row's spans into ``ids`` (lowest precedence first, so the winner writes last)."""
    for span_role in reversed(schema.precedence):
        role = mapping.get(span_role)
        if role is None:
            continue
        rid = schema.roles.index(role)
        for s, e in row.get(span_role, []):
            ids[s:e] = [rid] * (e - s)


def token_roles(record: GARRecord, positions: Sequence[Mapping[str, list[tuple[int, int]]]], n_tokens: int,
                schema: RoleSchema) -> list[int]:
    """Role ids of the ``n_tokens`` tokens of a record's prompt, from its per-row token ranges
    (``gar_tasks.tokens.record_token_positions(record, tok, text=record.prompt)``)."""
    if len(positions) != len(record.spans):
        raise GARDataError(f"record {record.id}: {len(record.spans)} rows but {len(positions)} in the prompt")
    ids = [schema.roles.index(schema.unlabelled)] * n_tokens
    first = min((s for s, _ in positions[0].get("row", [])), default=0) if positions else 0
    ids[:first] = [schema.roles.index(schema.before)] * first
    for k, row in enumerate(positions):
        _label_row(ids, row, schema.test if k == len(positions) - 1 else schema.demo, schema)
    return ids


def batch_token_roles(records: Sequence[GARRecord], tokenizer: Any, schema: RoleSchema, *,
                      add_special_tokens: bool = True) -> list[list[int]]:
    """Role ids of every prompt token of each record (one batched tokenizer call)."""
    positions = batch_token_positions(records, tokenizer, prompt=True, add_special_tokens=add_special_tokens)
    lengths = [len(x) for x in token_ids(tokenizer, [r.prompt for r in records], add_special_tokens)]
    return [token_roles(r, p, n, schema) for r, p, n in zip(records, positions, lengths)]


__all__ = ["PAD_ROLE", "RoleSchema", "SCHEMA_DIR", "batch_token_roles", "builtin_schemas", "load_schema",
           "schema_from_dict", "token_roles"]
