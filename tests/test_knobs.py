"""Every numeric knob of every ``gar`` command has a bound: shown in --help, checked while the
command line is parsed (one ``gar: error:`` line, exit 2, nothing written, no model loaded)."""

from __future__ import annotations

import argparse

import pytest

from cli_helpers import assert_error, run
from gar_tasks.cli import build_parser
from gar_tasks.knobs import Bound, BoundList

pytestmark = pytest.mark.unit


def _commands(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its name: ``circuit``, ``organism train``, ..."""
    parser = parser or build_parser()
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                out[prefix + name] = p
                out |= _commands(p, f"{prefix}{name} ")
    return out


def _numeric(action: argparse.Action) -> bool:
    """An option that takes a number: a numeric type or a numeric default."""
    if action.nargs == 0 or action.choices is not None:  # flags (store_true, help); a choice list is its own bound
        return False
    typ = action.type
    return typ in (int, float) or isinstance(typ, (Bound, BoundList)) or (
        isinstance(action.default, (int, float)) and not isinstance(action.default, bool))


def test_every_numeric_option_of_every_command_is_bounded_and_shows_its_bound():
    commands = _commands()
    assert {"generate", "circuit", "circuit-overlap", "heads", "intervene", "patch", "probe", "organism train",
            "organism eval"} <= set(commands)
    seen = []
    for name, p in commands.items():
        for a in p._actions:
            if not _numeric(a):
                continue
            flag = a.option_strings[0] if a.option_strings else a.dest
            seen.append(f"{name} {flag}")
            assert isinstance(a.type, (Bound, BoundList)), f"gar {name} {flag} has no bound"
            assert a.type.range in " ".join((a.help or "").split()), f"gar {name} {flag}: --help lacks the bound"
    # the knobs named as unbounded before, and one of each command
    for knob in ("circuit --random", "circuit --spot", "circuit --n", "circuit --batch-size", "circuit --ig-steps",
                 "circuit --curve", "circuit-overlap --core-fraction", "heads --top", "intervene --factor",
                 "patch --verify-top", "probe --runs", "probe --limit", "generate --per-task", "generate --seed",
                 "organism train --steps", "organism train --lr", "organism eval --n"):
        assert knob in seen


def test_help_shows_the_range(capsys):
    rc, out, _ = run(capsys, "circuit", "--help")
    assert rc == 0
    text = " ".join(out.split())
    assert "random circuits per size (0..1000, default 5)" in text
    assert "(0..1000, default 10)" in text  # --spot


OUT = "never_created"


@pytest.mark.parametrize("argv, needle", [
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--random", "1000000000"],
     "--random must be at most 1000 (0..1000), got 1000000000"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--spot", "100000"],
     "--spot must be at most 1000 (0..1000), got 100000"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--n", "1000001"], "--n must be at most 100,000"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--batch-size", "99999"], "--batch-size must be at most"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--ig-steps", "5000"], "--ig-steps must be at most 100"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--threads", "100000"], "--threads must be at most"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--seed", "1" + "0" * 40], "--seed must be at most"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--curve", "1", "nan"], "--curve must be a finite"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--curve", "0"], "--curve must be above 0"),
    (["circuit", "--model", "absent_model", "--tasks", "cls", "--size", "99999999999"], "--size must be at most"),
    (["circuit-overlap", "a", "b", "--random", "5000"], "--random must be at most 1000"),
    (["circuit-overlap", "a", "b", "--core-fraction", "1.5"], "--core-fraction must be above 0 and at most 1"),
    (["heads", "--model", "absent_model", "--top", "100000"], "--top must be at most 10,000"),
    (["heads", "--model", "absent_model", "--min-consistency", "2"], "--min-consistency must be between 0 and 1"),
    (["intervene", "--model", "absent_model", "--mode", "scale", "--heads", "0:0", "--factor", "1e9"],
     "--factor must be between -1000 and 1000"),
    (["intervene", "--model", "absent_model", "--mode", "ablate", "--heads", "0:0", "--random-draws", "100000"],
     "--random-draws must be at most 1000"),
    (["patch", "--model", "absent_model", "--tasks", "cls", "--verify-top", "100000"], "--verify-top must be at most"),
    (["probe", "--model", "absent_model", "--heads", "absent", "--runs", "100000"], "--runs must be at most 100"),
    (["probe", "--model", "absent_model", "--heads", "absent", "--limit", "10000000000"], "--limit must be at most"),
    (["probe", "--model", "absent_model", "--heads", "absent", "--k", "4,99999"], "--k must be a comma list of values each 1..10,000, got '4,99999'"),
    (["generate", "--profile", "v1", "--per-task", "100000"], "--per-task must be at most 10,000"),
])
def test_a_knob_past_its_bound_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / OUT
    assert_error(*run(capsys, *argv, "--out", str(out / "x.jsonl") if argv[0] == "generate" else str(out)),
                 needle, f"gar {argv[0]} --help")
    assert list(tmp_path.iterdir()) == []  # nothing written, no output folder made


def test_bounds_accept_their_ends():
    b = Bound(0, 1000)
    assert b("0") == 0 and b("1000") == 1000
    f = Bound(0.0, 1.0, float, lo_open=True)
    assert f("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match="above 0"):
        f("0")
    assert BoundList(Bound(1, 10))("4,8") == "4,8"
