"""The ``gar`` command line: generate (jsonl/parquet), validate, and every bad-input path.

Most tests call ``main([...])`` in-process; ``test_console_script`` runs the installed ``gar``.
Every failing command must exit 2 with one ``gar: error: ...`` line, no traceback, and leave the
output directory exactly as it was (no output file, no temporary file).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gar_tasks import profiles
from gar_tasks.cli import main
from gar_tasks.errors import GARDataError
from gar_tasks.generate import GeneratorConfig
from gar_tasks.io import read_records
from gar_tasks.records import GARRecord, features

pytestmark = pytest.mark.integration


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_gar_error(rc: int, out: str, err: str, *needles: str) -> None:
    assert rc == 2, (rc, out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gar: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture(scope="module")
def paper_records() -> list[GARRecord]:
    return GeneratorConfig().build()


@pytest.fixture
def fresh_profiles():
    profiles.load_profile.cache_clear()
    yield
    profiles.load_profile.cache_clear()


# ---------------------------------------------------------------------------------------------
# successful runs

def test_generate_paper_jsonl(tmp_path, capsys, paper_records):
    out = tmp_path / "paper.jsonl"
    rc, stdout, err = run(capsys, "generate", "--profile", "paper", "--out", str(out))
    assert rc == 0, err
    assert stdout.strip() == f"wrote 4608 records to {out}"
    assert err == ""  # no progress bar: stderr is not a TTY
    assert listing(tmp_path) == ["paper.jsonl"]  # no temporary file left
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4608
    got = [json.loads(line) for line in lines]
    assert [d["text"] for d in got] == [r.text for r in paper_records]
    assert [d["task_id"] for d in got] == [r.task_id for r in paper_records]
    assert [r.to_dict() for r in read_records(out)] == [r.to_dict() for r in paper_records]


def test_generate_parquet_roundtrip(tmp_path, capsys):
    import datasets

    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "v1.parquet"
    rc, stdout, err = run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", str(out))
    assert rc == 0, err
    expected = [r.to_dict() for r in GeneratorConfig(profile="v1", n_per_task=1).build()]
    assert stdout.strip() == f"wrote {len(expected)} records to {out}"
    assert listing(outdir) == ["v1.parquet"]
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.features == features()
    assert ds.to_list() == expected
    assert [r.to_dict() for r in read_records(out)] == expected


def test_format_flag_overrides_suffix(tmp_path, capsys):
    out = tmp_path / "records.txt"
    rc, _, err = run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--format", "jsonl",
                     "--out", str(out))
    assert rc == 0, err
    assert len(read_records(out, "jsonl")) == GeneratorConfig(profile="v1", n_per_task=1).n_records()


@pytest.mark.parametrize("argv, kw", [
    (["--cxt-len", "4", "--demos", "0", "--per-task", "2", "--seed", "7"],
     dict(cxt_len=4, n_demos=0, n_per_task=2, seed=7)),
    (["--demos", "3", "--per-task", "1", "--split", "validation"],
     dict(n_demos=3, n_per_task=1, split="validation")),
])
def test_generate_v1_knobs(tmp_path, capsys, argv, kw):
    out = tmp_path / "v1.jsonl"
    rc, stdout, err = run(capsys, "generate", "--profile", "v1", *argv, "--out", str(out), "--quiet")
    assert rc == 0, err
    cfg = GeneratorConfig(profile="v1", **kw)
    recs = read_records(out)
    assert len(recs) == cfg.n_records() == len(out.read_text(encoding="utf-8").splitlines())
    assert f"wrote {cfg.n_records()} records" in stdout
    assert {(r.profile, r.split) for r in recs} == {("v1", cfg.split)}
    assert {len(r.rows) for r in recs} == {cfg.n_demos + 1}
    assert {len(row.keys) for r in recs for row in r.rows} == {cfg.cxt_len}


def test_overwrites_existing_file(tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    out.write_text("old\n")
    rc, _, err = run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", str(out))
    assert rc == 0, err
    assert listing(tmp_path) == ["x.jsonl"]
    assert len(read_records(out)) == GeneratorConfig(profile="v1", n_per_task=1).n_records()


# ---------------------------------------------------------------------------------------------
# bad input: exit 2, one line, nothing written

@pytest.mark.parametrize("args, needles", [
    (["--profile", "foo"], ["unknown profile 'foo'", "paper, v1"]),
    (["--profile", "v1", "--split", "dev"], ["unknown split 'dev'", "test, validation, train"]),
    (["--profile", "v1", "--cxt-len", "1"], ["--cxt-len must be at least 2", "(2..8)", "got 1"]),
    (["--profile", "v1", "--cxt-len", "9"], ["--cxt-len must be at most 8", "(2..8)", "got 9"]),
    (["--profile", "v1", "--demos", "5"], ["--demos must be at most 4", "(0..4)", "got 5"]),
    (["--profile", "v1", "--per-task", "0"], ["--per-task must be at least 1", "(1..10,000)", "got 0"]),
    (["--profile", "v1", "--per-task", "10001"], ["--per-task must be at most 10,000", "got 10001"]),
    (["--profile", "v1", "--seed", "-1"], ["--seed must be at least 0", "got -1"]),
    (["--profile", "v1", "--seed", "4294967296"], ["--seed must be at most 4,294,967,295", "got 4294967296"]),
    (["--profile", "paper", "--demos", "2"], ["'paper'", "takes no knobs", "--demos=2", "--profile v1"]),
    (["--profile", "paper", "--split", "validation"], ["takes no knobs", "split='validation'"]),
])
def test_bad_config(tmp_path, capsys, args, needles):
    rc, out, err = run(capsys, "generate", *args, "--out", str(tmp_path / "x.jsonl"))
    assert_gar_error(rc, out, err, *needles)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("args, needles", [
    (["--format", "csv"], ["--format", "invalid choice: 'csv'", "jsonl", "parquet"]),
    (["--cxt-len", "abc"], ["--cxt-len must be an integer in 2..8, got 'abc'"]),
    ([], ["--profile"]),  # --profile is required
])
def test_usage_errors(tmp_path, capsys, args, needles):
    argv = ["generate", "--out", str(tmp_path / "x.jsonl"), *args]
    if args:
        argv[1:1] = ["--profile", "v1"]
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("gar: error: ") and err.count("\n") == 1  # one line, no usage block
    for n in needles:
        assert n in err
    assert listing(tmp_path) == []


def test_no_command(capsys):
    rc, out, err = run(capsys)
    assert rc == 2 and err.startswith("gar: error: ") and "COMMAND" in err and err.count("\n") == 1


def test_help(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "generate" in out and "validate" in out
    rc, out, _ = run(capsys, "generate", "--help")
    assert rc == 0 and "--per-task" in out and "--format" in out


def test_unknown_suffix(tmp_path, capsys):
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(tmp_path / "x.csv"))
    assert_gar_error(rc, out, err, "x.csv", "'.csv'", ".jsonl", ".parquet")
    assert listing(tmp_path) == []


def test_missing_directory(tmp_path, capsys):
    target = tmp_path / "nope" / "x.jsonl"
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(target))
    assert_gar_error(rc, out, err, str(target), "does not exist")
    assert listing(tmp_path) == []


def test_out_is_directory(tmp_path, capsys):
    d = tmp_path / "d.jsonl"
    d.mkdir()
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(d))
    assert_gar_error(rc, out, err, str(d), "is a directory")
    assert listing(tmp_path) == ["d.jsonl"] and listing(d) == []


def test_parent_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(tmp_path / "f" / "x.jsonl"))
    assert_gar_error(rc, out, err, "not a directory")
    assert listing(tmp_path) == ["f"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root: chmod does not stop root from writing")
def test_read_only_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(ro / "x.jsonl"))
        assert_gar_error(rc, out, err, str(ro / "x.jsonl"), "not writable")
        assert listing(ro) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_directory_simulated(tmp_path, capsys, monkeypatch):
    """The read-only case without chmod (which root ignores): os.access says no."""
    import gar_tasks.io as gio

    real = os.access
    monkeypatch.setattr(gio.os, "access", lambda p, mode, **k: False if Path(p) == tmp_path else real(p, mode, **k))
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(tmp_path / "x.jsonl"))
    assert_gar_error(rc, out, err, str(tmp_path / "x.jsonl"), "not writable")
    assert listing(tmp_path) == []


def test_malformed_vocabulary(tmp_path, capsys, monkeypatch, fresh_profiles):
    real = profiles._data

    def bad(name):
        return ["not", "an", "object"] if name == "vocab/genders_of_persons.json" else real(name)

    monkeypatch.setattr(profiles, "_data", bad)
    rc, out, err = run(capsys, "generate", "--profile", "paper", "--out", str(tmp_path / "x.jsonl"))
    assert_gar_error(rc, out, err, "genders_of_persons.json", "expected an object")
    assert listing(tmp_path) == []


def test_vocabulary_not_json(tmp_path, capsys, monkeypatch, fresh_profiles):
    def bad_loads(text, *a, **k):
        raise json.JSONDecodeError("Expecting value", text, 0)

    # replace the module's json (not json.loads itself, which everyone shares)
    monkeypatch.setattr(profiles, "json", SimpleNamespace(loads=bad_loads, JSONDecodeError=json.JSONDecodeError))
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(tmp_path / "x.parquet"))
    assert_gar_error(rc, out, err, "schema_meta.json", "not valid JSON")
    assert listing(tmp_path) == []


def _failing_iter(monkeypatch, after: int, exc: BaseException):
    real = GeneratorConfig.iter_records

    def iter_records(self, seed=None, progress=None):
        for i, r in enumerate(real(self, seed, progress)):
            if i == after:
                raise exc
            yield r

    monkeypatch.setattr(GeneratorConfig, "iter_records", iter_records)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_failure_mid_generation(tmp_path, capsys, monkeypatch, suffix):
    _failing_iter(monkeypatch, 100, GARDataError("boom in the middle"))
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--per-task", "2", "--out",
                       str(tmp_path / f"x{suffix}"))
    assert_gar_error(rc, out, err, "boom in the middle")
    assert listing(tmp_path) == []


def test_failure_keeps_existing_file(tmp_path, capsys, monkeypatch):
    target = tmp_path / "x.jsonl"
    target.write_text("precious\n")
    _failing_iter(monkeypatch, 10, GARDataError("boom"))
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(target))
    assert_gar_error(rc, out, err, "boom")
    assert listing(tmp_path) == ["x.jsonl"] and target.read_text() == "precious\n"


def test_write_error_mid_file(tmp_path, capsys, monkeypatch):
    """An OSError while writing (disk full) names the path; the temporary file is removed."""
    real, calls = GARRecord.to_dict, []

    def to_dict(self):
        calls.append(1)
        if len(calls) > 50:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self)

    monkeypatch.setattr(GARRecord, "to_dict", to_dict)
    target = tmp_path / "x.jsonl"
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(target))
    assert_gar_error(rc, out, err, str(target), "No space left on device")
    assert listing(tmp_path) == []


def test_keyboard_interrupt(tmp_path, capsys, monkeypatch):
    _failing_iter(monkeypatch, 20, KeyboardInterrupt())
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--out", str(tmp_path / "x.jsonl"))
    assert rc == 130 and out == "" and "Traceback" not in err
    assert listing(tmp_path) == []


def test_read_records_malformed_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    good = json.dumps(GeneratorConfig(profile="v1", n_per_task=1).build()[0].to_dict())
    p.write_text(good + "\n" + good + "\n{not json\n")
    with pytest.raises(GARDataError, match="line 3"):
        read_records(p)
    p.write_text(good + "\n" + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(GARDataError, match="line 2.*missing field"):
        read_records(p)


# ---------------------------------------------------------------------------------------------
# gar validate

def test_validate_missing_file(tmp_path, capsys):
    rc, out, err = run(capsys, "validate", str(tmp_path / "nope.jsonl"))
    assert_gar_error(rc, out, err, "nope.jsonl", "no such file")


def test_validate_module_unavailable(tmp_path, capsys, monkeypatch):
    p = tmp_path / "x.jsonl"
    p.write_text("")
    monkeypatch.setitem(sys.modules, "gar_tasks.validate", None)
    rc, out, err = run(capsys, "validate", str(p))
    assert_gar_error(rc, out, err, "gar validate", "unavailable")


def test_validate(tmp_path, capsys):
    p = tmp_path / "v1.jsonl"
    assert run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", str(p))[0] == 0
    n = GeneratorConfig(profile="v1", n_per_task=1).n_records()

    rc, out, err = run(capsys, "validate", str(p))
    assert rc == 0, out + err
    assert out.strip()

    rc, out, err = run(capsys, "validate", str(p), "--json")
    assert rc == 0, out + err
    rep = json.loads(out)
    assert rep["ok"] is True and rep["n_records"] == n

    recs = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    recs[0]["text"] = recs[0]["text"] + "garbage"  # breaks text == prompt + " " + answer + "\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    rc, out, err = run(capsys, "validate", str(bad), "--json")
    assert rc == 1, out + err
    assert json.loads(out)["ok"] is False


# ---------------------------------------------------------------------------------------------
# the installed console script

def _gar_script() -> str:
    here = Path(sys.executable).parent / "gar"
    found = str(here) if here.exists() else shutil.which("gar")
    if not found:
        pytest.skip("the 'gar' console script is not installed")
    return found


def test_console_script(tmp_path):
    gar = _gar_script()
    out = tmp_path / "v1.jsonl"
    p = subprocess.run([gar, "generate", "--profile", "v1", "--per-task", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    n = GeneratorConfig(profile="v1", n_per_task=1).n_records()
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"wrote {n} records to {out}"
    assert p.stderr == ""  # stderr is a pipe: no progress bar
    assert len(read_records(out)) == n

    bad = tmp_path / "bad.jsonl"
    p = subprocess.run([gar, "generate", "--profile", "v1", "--cxt-len", "9", "--out", str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert_gar_error(p.returncode, p.stdout, p.stderr, "--cxt-len", "2..8")
    assert listing(tmp_path) == ["v1.jsonl"]

    p = subprocess.run([sys.executable, "-m", "gar_tasks", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "generate" in p.stdout and "validate" in p.stdout


def test_help_imports_nothing_heavy():
    code = ("import sys, gar_tasks.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('datasets', 'tqdm', 'torch', 'transformers', 'pyarrow', 'numpy')"
            " if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
