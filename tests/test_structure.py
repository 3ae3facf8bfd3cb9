"""The package structure, checked mechanically over the source files (ast, no import):
``gar_tasks`` library modules import nothing from ``interp``; no module imports another module's
underscore names; the import graph of our modules has no cycle; every test module declares its tier
markers; the interp commands reach ``gar`` through the entry-point group; the circuit package
encodes prompts with the core encoder, its errors name no flags, and ``gar circuit`` is a thin
command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gar_tasks", "interp")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(module imported, [names taken from it])`` for every import statement, anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names]))
    return out


MODULES = _modules()


def _ours(mod: str) -> str | None:
    """The module of ours an import names (``a.b.c`` -> the longest known prefix)."""
    parts = mod.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


def test_gar_tasks_never_imports_interp():
    bad = [(name, mod) for name, path in MODULES.items() if name.startswith("gar_tasks")
           for mod, _ in _imports(name, path) if mod == "interp" or mod.startswith("interp.")]
    assert bad == []


def test_no_underscore_names_across_modules():
    bad = []
    for name, path in MODULES.items():
        for mod, names in _imports(name, path):
            target = _ours(mod)
            if target is None or target == name:
                continue
            bad += [(name, f"{mod}.{n}") for n in names if n.startswith("_") and n != "__version__"]
            bad += [(name, mod) for part in mod.split(".") if part.startswith("_") and part != "__init__"]
    assert bad == []


def test_no_import_cycles():
    import networkx as nx

    g = nx.DiGraph()
    for name, path in MODULES.items():
        g.add_node(name)
        for mod, names in _imports(name, path):
            targets = {_ours(mod)} | {_ours(f"{mod}.{n}") for n in names}
            for t in targets - {None, name}:
                if not name.startswith(t + "."):  # a module importing its own package's __init__ is no cycle
                    g.add_edge(name, t)
    cycles = list(nx.simple_cycles(g))
    assert cycles == []


def test_every_test_module_declares_its_tiers():
    """A module-level ``pytestmark`` tier, or (modules mixing tiers) a tier on every test function;
    conftest.py checks at collection that each test ends up with exactly one."""
    tiers = {"unit", "integration", "e2e"}

    def tier_of(decorators) -> set[str]:
        names = set()
        for d in decorators:
            d = d.func if isinstance(d, ast.Call) else d
            if isinstance(d, ast.Attribute) and isinstance(d.value, ast.Attribute) and d.value.attr == "mark":
                names.add(d.attr)
        return names & tiers

    missing = []
    for f in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(f.read_text())
        module = [n for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)]
        module_tiers = {n.attr for m in module for n in ast.walk(m) if isinstance(n, ast.Attribute)} & tiers
        tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        if len(module_tiers) == 1:
            continue
        untiered = [t.name for t in tests if len(tier_of(t.decorator_list)) != 1]
        if module_tiers or untiered:
            missing.append((f.name, untiered[:3]))
    assert missing == []


def test_interp_commands_come_through_entry_points():
    from importlib.metadata import entry_points

    from gar_tasks.cli import ENTRY_POINT_GROUP, build_parser
    from interp.commands import COMMANDS

    eps = {e.name: e.value for e in entry_points(group=ENTRY_POINT_GROUP)}
    assert set(eps) == set(COMMANDS) and all(v.startswith("interp.commands.") for v in eps.values())
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


# the one encoder of prompts (interp/core/encode.py) and the names a private copy of it would take
ENCODER = ("pad_id", "token_ids", "left_pad", "next_tokens")
ENCODER_COPIES = {*ENCODER, *(f"_{n}" for n in ENCODER), "next_token", "_next_token", "_ids"}


def _defined(path: Path) -> dict[str, ast.AST]:
    """Every function and class a module defines, at any depth (methods and nested ones too)."""
    return {n.name: n for n in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def test_circuit_modules_use_the_core_encoder():
    """interp/circuit encodes prompts with interp.core.encode: no module keeps its own pad id, token
    ids, left padding or answer token, and the counterfactuals import the core's."""
    core = {n.name for n in ast.parse(MODULES["interp.core.encode"].read_text()).body if isinstance(n, ast.FunctionDef)}
    assert set(ENCODER) <= core
    copies = sorted((name, f) for name, path in MODULES.items() if name.startswith("interp.circuit.")
                    for f in _defined(path) if f in ENCODER_COPIES)
    assert copies == []
    taken = {n for mod, names in _imports("interp.circuit.counterfactual", MODULES["interp.circuit.counterfactual"])
             if mod == "interp.core.encode" for n in names}
    assert {"token_ids", "next_tokens", "pad_id", "left_pad"} <= taken


def test_circuit_command_is_thin():
    """gar circuit parses, calls the library and writes: the only classes of the command module are
    its arguments' dataclasses (the run's state lives in interp.circuit.run)."""
    tree = ast.parse(MODULES["interp.commands.circuit"].read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes, "the command keeps its args dataclasses"

    def is_dataclass(c: ast.ClassDef) -> bool:
        return any(getattr(d.func if isinstance(d, ast.Call) else d, "id", None) == "dataclass"
                   for d in c.decorator_list)

    assert [c.name for c in classes if not (c.name.endswith("Args") and is_dataclass(c))] == []


def test_circuit_library_errors_name_no_flags():
    """A library error says what is wrong, not which flag to pass (the command adds that)."""
    import re

    flag = re.compile(r"(?<![\w-])--[a-z]")
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("interp.circuit."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                bad += [(name, node.lineno) for c in ast.walk(node.exc)
                        if isinstance(c, ast.Constant) and isinstance(c.value, str) and flag.search(c.value)]
    assert bad == []


#: config attributes that hold a model's sizes: read once, in core.sites.head_sites
SIZE_KEYS = {"num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "n_layer", "n_head",
             "n_embd"}


def test_circuit_shapes_come_from_the_core():
    """One shape: the circuit engine's layer, head, group and width counts come from the core's
    HeadSites (interp.core.sites.head_sites), never from the config directly; the compiled fixtures
    (groundtruth), which build configs, are the exception. And the engine's shape is the graph's."""
    readers = []
    for name, path in MODULES.items():
        if not name.startswith("interp.circuit.") or name == "interp.circuit.groundtruth":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in SIZE_KEYS:
                readers.append((name, node.lineno, node.attr))
            if isinstance(node, ast.Constant) and node.value in SIZE_KEYS:
                readers.append((name, node.lineno, node.value))
    assert readers == []
    taken = {n for mod, names in _imports("interp.circuit.ports", MODULES["interp.circuit.ports"])
             if mod == "interp.core.sites" for n in names}
    assert "head_sites" in taken
    ports = ast.parse(MODULES["interp.circuit.ports"].read_text())
    shape = next(n for n in ports.body if isinstance(n, ast.ClassDef) and n.name == "CircuitShape")
    assert [getattr(b, "id", None) for b in shape.bases] == ["ModelShape"]
