"""A user's files and bad input, data side: the data commands (generate, validate, push, eval's checks) never delete
or overwrite a user's files, answer bad input with one line ``gar: error: ...`` (exit 2) instead of
a traceback, stream records, and clean up on SIGTERM as on Ctrl-C.

CLI-level and seconds each; the push tests build only the ``paper`` config.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

from cli_helpers import assert_error, offline_one_thread, run  # noqa: F401 (autouse fixture)
from gar_tasks import hub, load as load_mod
from gar_tasks.errors import GARDataError
from gar_tasks.generate import GeneratorConfig
from gar_tasks.io import ROW_GROUP, read_records, write_records
from gar_tasks.records import GARRecord

pytestmark = pytest.mark.integration

SECRET = "hf_SECRETtokenThatMustNeverBePrinted0123"
GAR = Path(sys.executable).parent / "gar"


def tree(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


def assert_push_error(rc: int, out: str, err: str, *needles: str) -> None:
    """``assert_error`` after push's progress lines (``building CONFIG/SPLIT``) on stderr."""
    assert_error(rc, out, "\n".join(ln for ln in err.splitlines() if not ln.startswith("building ")), *needles)


def build(capsys, out: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "push", "--repo", "me/gar", "--dry-run", "--out", out, "--config", "paper", *extra)


# ---------------------------------------------------------------------------------------------
# item 1: `gar push --dry-run --out DIR` never deletes a user's files

def test_push_rebuild_keeps_a_clones_own_files(tmp_path, capsys):
    """The issue's scenario: build into `clone`, git init, add LICENSE and extra/notes.ipynb, build
    again: .git, LICENSE and extra/ are kept, our card and parquet files are rewritten."""
    clone = tmp_path / "clone"
    rc, out, err = build(capsys, clone)
    assert rc == 0, err
    ours = tree(clone)
    assert ours == ["README.md", "data", "data/paper", "data/paper/test-00000-of-00001.parquet"]
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(clone)], check=True)
    else:  # pragma: no cover - a stand-in for the repository
        (clone / ".git").mkdir()
        (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (clone / "LICENSE").write_text("MIT\n")
    (clone / "extra").mkdir()
    (clone / "extra" / "notes.ipynb").write_text('{"cells": []}\n')
    (clone / "data" / "mine.txt").write_text("mine\n")
    git_before = tree(clone / ".git")
    parquet = clone / "data/paper/test-00000-of-00001.parquet"
    parquet.write_bytes(b"stale")  # ours: must be rewritten

    rc, out, err = build(capsys, clone)
    assert rc == 0, err
    assert (clone / "LICENSE").read_text() == "MIT\n"
    assert (clone / "extra" / "notes.ipynb").read_text() == '{"cells": []}\n'
    assert (clone / "data" / "mine.txt").read_text() == "mine\n"
    assert tree(clone / ".git") == git_before
    assert parquet.read_bytes()[:4] == b"PAR1"
    assert read_records(parquet) == GeneratorConfig().build()
    assert hub._MARKER in (clone / "README.md").read_text()
    listed = [ln.split()[-1] for ln in out.splitlines()[1:]]
    assert listed == ["README.md", "data/paper/test-00000-of-00001.parquet"]  # only our files
    assert [p.name for p in tmp_path.iterdir()] == ["clone"]  # no temporary folder left


def test_push_refuses_a_folder_without_our_card(tmp_path, capsys):
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "README.md").write_text("# my project\n")
    (user / "sub" / "x.txt").write_text("x")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    assert_error(*build(capsys, user), str(user), "refusing to overwrite")
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user"]


def test_push_rebuild_removes_only_stale_files_of_the_configs_it_builds(tmp_path, capsys):
    out = tmp_path / "out"
    assert build(capsys, out)[0] == 0
    stale = out / "data" / "paper" / "validation-00000-of-00001.parquet"  # paper has no such split now
    shutil.copy(out / "data/paper/test-00000-of-00001.parquet", stale)
    (out / "data" / "paper" / "keep.md").write_text("mine")
    assert build(capsys, out)[0] == 0
    assert not stale.exists() and (out / "data" / "paper" / "keep.md").read_text() == "mine"


def test_push_one_config_keeps_the_other_configs_data_and_card_entry(tmp_path, capsys):
    """A folder built for paper, then `--config v1`: data/paper/ is not v1's to replace; it stays,
    byte for byte, and the card still declares it (the folder loads both configs)."""
    out = tmp_path / "out"
    assert build(capsys, out)[0] == 0
    paper = out / "data/paper/test-00000-of-00001.parquet"
    before = paper.read_bytes()
    rc, _, err = run(capsys, "push", "--repo", "me/gar", "--dry-run", "--out", out, "--config", "v1")
    assert rc == 0, err
    assert paper.read_bytes() == before
    assert (out / "data/v1/test-00000-of-00001.parquet").is_file()
    import yaml

    card = yaml.safe_load((out / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert [c["config_name"] for c in card["configs"]] == ["paper", "v1"]
    import datasets

    assert datasets.load_dataset(str(out), "paper", split="test").num_rows == len(GeneratorConfig().build())


def fake_hub(monkeypatch, upload_folder, token: str) -> None:
    """huggingface_hub's HfApi replaced by one whose upload is ``upload_folder(**kw)``, online, with a token."""
    import huggingface_hub

    class Api:
        def __init__(self, token=None):
            pass

        def create_repo(self, *a, **k):
            pass

        def upload_folder(self, **kw):
            return upload_folder(**kw)

    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_push_uploads_and_deletes_only_the_configs_it_builds(tmp_path, capsys, monkeypatch):
    calls = []
    fake_hub(monkeypatch, lambda **kw: calls.append(kw) or "url", "hf_x")
    assert run(capsys, "push", "--repo", "me/gar", "--out", tmp_path / "o", "--config", "paper")[0] == 0
    assert calls[0]["delete_patterns"] == ["data/paper/**"]  # the Hub's data/v1/ is not this push's


def test_push_out_is_a_symlink_to_a_folder(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    rc, _, err = build(capsys, link)
    assert rc == 0, err
    assert link.is_symlink() and (real / "README.md").is_file()
    rc, _, err = build(capsys, link)  # and again, through the link
    assert rc == 0, err
    assert link.is_symlink() and tree(real) == tree(link)


def test_push_folder_modes_and_fsync(tmp_path, capsys, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd))[1])
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert build(capsys, out)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for p in out.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    assert {Path(s).name for s in synced} >= {"README.md", "test-00000-of-00001.parquet"}


# ---------------------------------------------------------------------------------------------
# item 8: format and suffix must agree

@pytest.mark.parametrize("fmt, name", [("parquet", "x.jsonl"), ("jsonl", "x.parquet")])
def test_generate_format_suffix_mismatch(tmp_path, capsys, fmt, name):
    assert_error(*run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--format", fmt,
                      "--out", tmp_path / name), name, f"format {fmt}")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# push: offline, no network, full disk, --out under a file

def _no_build(monkeypatch):
    monkeypatch.setattr(hub, "records_to_dataset", lambda *a, **k: pytest.fail("built before failing"))


def test_push_offline_mode_fails_fast(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _no_build(monkeypatch)
    rc, out, err = run(capsys, "push", "--repo", "me/gar", "--out", tmp_path / "o", "--config", "paper")
    assert_error(rc, out, err, "me/gar", "offline")
    assert SECRET not in err and list(tmp_path.iterdir()) == []


def test_push_without_network_fails_fast(tmp_path, capsys, monkeypatch):
    """The real Hub client against a closed port: its connection error is one line, in seconds,
    before the folder is built; no temporary folder is left."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    _no_build(monkeypatch)
    t0 = time.monotonic()
    rc, out, err = run(capsys, "push", "--repo", "me/gar", "--config", "paper")
    assert_error(rc, out, err, "me/gar")
    assert time.monotonic() - t0 < 60
    assert SECRET not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [ConnectionError("[Errno 101] Network is unreachable"),
                                 OSError(errno.ETIMEDOUT, "Connection timed out")])
def test_push_upload_connection_errors(tmp_path, capsys, monkeypatch, exc):
    def fail(**kw):
        raise exc

    fake_hub(monkeypatch, fail, SECRET)
    assert_push_error(*run(capsys, "push", "--repo", "me/gar", "--out", tmp_path / "o", "--config", "paper"),
                      "upload to me/gar failed: ")


def test_push_full_disk_names_the_path(tmp_path, capsys, monkeypatch):
    real, calls = GARRecord.to_dict, []

    def to_dict(self):
        calls.append(1)
        if len(calls) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self)

    monkeypatch.setattr(GARRecord, "to_dict", to_dict)
    out = tmp_path / "out"
    assert_push_error(*build(capsys, out), str(out), "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_push_out_under_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("x")
    _no_build(monkeypatch)
    assert_error(*build(capsys, tmp_path / "f" / "sub"), "f/sub", "is a file")
    assert (tmp_path / "f").read_text() == "x"


# ---------------------------------------------------------------------------------------------
# generate: full disk (parquet), symlinks, long names, --out under a file

def test_generate_full_disk_parquet(tmp_path, capsys, monkeypatch):
    real, calls = GARRecord.to_dict, []

    def to_dict(self):
        calls.append(1)
        if len(calls) > ROW_GROUP + 10:  # after the first row group went to disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self)

    monkeypatch.setattr(GARRecord, "to_dict", to_dict)
    target = tmp_path / "x.parquet"
    assert_error(*run(capsys, "generate", "--profile", "v1", "--out", target), str(target), "No space left")
    assert list(tmp_path.iterdir()) == []


def test_generate_fsync_failure_names_the_path(tmp_path, capsys, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "x.jsonl"
    assert_error(*run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", target),
                 str(target), "No space left")
    assert list(tmp_path.iterdir()) == []


def test_generate_through_a_symlink(tmp_path, capsys):
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    rc, _, err = run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", link)
    assert rc == 0, err
    assert link.is_symlink() and len(read_records(target)) == GeneratorConfig(profile="v1", n_per_task=1).n_records()
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "nowhere" / "x.jsonl")
    assert_error(*run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", dangling), "does not exist")
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    assert_error(*run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", loop), "loop.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.jsonl", "link.jsonl", "loop.jsonl", "real.jsonl"]


def test_generate_long_file_names(tmp_path, capsys):
    ok = tmp_path / ("a" * 244 + ".jsonl")  # 250 characters: a valid name, its temporary name must be too
    rc, _, err = run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", ok)
    assert rc == 0, err
    assert ok.is_file()
    too_long = tmp_path / ("b" * 300 + ".jsonl")
    assert_error(*run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", too_long),
                 "File name too long")
    assert [p.name for p in tmp_path.iterdir()] == [ok.name]


def test_generate_out_under_a_file_fails_before_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setattr(GeneratorConfig, "iter_records", lambda *a, **k: pytest.fail("generated first"))
    assert_error(*run(capsys, "generate", "--profile", "v1", "--out", tmp_path / "f" / "x.jsonl"),
                 "is not a directory")


# ---------------------------------------------------------------------------------------------
# validate: nested JSON, /dev/zero, FIFOs, process substitution, internal names

def test_validate_deeply_nested_json(tmp_path, capsys):
    p = tmp_path / "deep.jsonl"
    p.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert_error(*run(capsys, "validate", p), "deep.jsonl", "line 1", "nested too deeply")


def test_validate_dev_zero_is_bounded(capsys):
    t0 = time.monotonic()
    assert_error(*run(capsys, "validate", "/dev/zero"), "/dev/zero", "line 1", "longer than")
    assert time.monotonic() - t0 < 60


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("small") / "v1.jsonl"
    write_records(GeneratorConfig(profile="v1", n_per_task=1).iter_records(), p)
    return p


def test_validate_reads_a_fifo(tmp_path, capsys, small_file):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(small_file.read_bytes()))
    writer.start()
    rc, out, err = run(capsys, "validate", fifo)
    writer.join(timeout=30)
    assert rc == 0, err
    assert f"{GeneratorConfig(profile='v1', n_per_task=1).n_records()} records" in out and "OK" in out


@pytest.mark.skipif(not shutil.which("bash") or not GAR.exists(), reason="needs bash and the installed gar")
def test_validate_process_substitution(small_file, tmp_path):
    gz = tmp_path / "v1.jsonl.gz"
    import gzip
    gz.write_bytes(gzip.compress(small_file.read_bytes()))
    res = subprocess.run(["bash", "-c", f'"{GAR}" validate <(zcat "{gz}")'], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


def test_validate_messages_name_no_python_internals(tmp_path, capsys, small_file):
    d = json.loads(small_file.read_text().splitlines()[0])
    d["rows"][0]["colour"] = "red"
    (p := tmp_path / "x.jsonl").write_text(json.dumps(d) + "\n")
    rc, out, err = run(capsys, "validate", p)
    assert_error(rc, out, err, "line 1", "colour")
    assert "__init__" not in err and "RowInfo" not in err and "at at" not in err


# ---------------------------------------------------------------------------------------------
# messages: argparse in one line, huge numbers, masked tokens

def test_argparse_errors_are_one_line(capsys):
    assert_error(*run(capsys, "generate", "--profile", "v1"), "--out", "gar generate --help")
    assert_error(*run(capsys, "validate"), "FILE")
    assert_error(*run(capsys, "nope"), "invalid choice")


def test_huge_numbers_are_not_printed_in_full(tmp_path, capsys):
    rc, out, err = run(capsys, "generate", "--profile", "v1", "--per-task", "9" * 401, "--out", tmp_path / "x.jsonl")
    assert_error(rc, out, err, "--per-task", "401 digits")
    assert len(err) < 200


# ---------------------------------------------------------------------------------------------
# gar eval: unknown tasks, data source, secrets — all before lm-eval loads a model

@pytest.fixture
def no_lm_eval(monkeypatch):
    import lm_eval.__main__

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: pytest.fail("lm-eval ran"))


def test_eval_unknown_gar_task(capsys, no_lm_eval):
    rc, out, err = run(capsys, "eval", "--model_args", f"pretrained=/x,token={SECRET}",
                       "--tasks", "gar_cls,gar_nonexistent")
    assert_error(rc, out, err, "gar_nonexistent")
    assert SECRET not in err


def test_eval_bad_gar_source_names_it(capsys, no_lm_eval):
    load_mod._load_all.cache_clear()
    rc, out, err = run(capsys, "eval", "--model_args", "pretrained=/x", "--tasks", "gar_cls",
                       "--metadata", '{"gar_source": "not/a-real-repo"}')
    assert_error(rc, out, err, "not/a-real-repo", "failed")
    with pytest.raises(GARDataError, match="'not/a-real-repo'.*failed"):
        load_mod.load("paper", "not/a-real-repo")


def test_eval_lm_eval_unknown_task_is_one_line(capsys, monkeypatch):
    import lm_eval.__main__

    def fake():
        raise ValueError("Tasks not found: hellaswagg")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fake)
    rc, out, err = run(capsys, "eval", "--model_args", "pretrained=/x", "--tasks", "hellaswagg")
    echo, *rest = err.splitlines()  # the lm_eval command line it ran, then the error
    assert echo.startswith("lm_eval run ")
    assert_error(rc, out, "\n".join(rest), "unknown task", "hellaswagg")


def test_eval_masks_tokens_in_everything_printed(capsys, monkeypatch):
    import lm_eval.__main__

    def fake():  # what lm-eval prints: its argv and the model_args dict
        print(" ".join(sys.argv))
        print({"pretrained": "/x", "token": SECRET}, file=sys.stderr)

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fake)
    rc, out, err = run(capsys, "eval", "--model_args", f"pretrained=/x,token={SECRET},api_key=sk-abcdefghijklmnop1234",
                       "--tasks", "gar_cls")
    assert rc == 0, err
    assert SECRET not in out + err and "sk-abcdefghijklmnop1234" not in out + err
    assert "token=***" in err and "pretrained=/x" in out


# ---------------------------------------------------------------------------------------------
# -q silences the libraries' progress bars

def test_quiet_silences_library_progress_bars(tmp_path, capsys, monkeypatch):
    import transformers
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    transformers.utils.logging.enable_progress_bar()
    try:
        rc, _, err = run(capsys, "generate", "--profile", "v1", "--per-task", "1", "-q", "--out", tmp_path / "x.jsonl")
        assert rc == 0, err
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert are_progress_bars_disabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # for libraries imported later
    finally:
        transformers.utils.logging.enable_progress_bar()
        enable_progress_bars()


# ---------------------------------------------------------------------------------------------
# streaming: records are consumed one at a time (memory: scripts/bench_generate.py)

def _tracked(records, alive: list, limit: int):
    """Yield ``records``, asserting that at most ``limit`` earlier ones are still referenced."""
    refs = []  # records have no reference cycles: reference counting frees them at once
    for r in records:
        alive.append(sum(ref() is not None for ref in refs))
        assert alive[-1] <= limit, f"{alive[-1]} records held"
        refs.append(weakref.ref(r))
        refs = [x for x in refs if x() is not None]
        yield r


def test_generation_is_lazy():
    it = GeneratorConfig(profile="v1", n_per_task=2).iter_records()
    assert iter(it) is it and isinstance(next(it), GARRecord)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_write_records_streams(tmp_path, suffix):
    import pyarrow.parquet as pq

    alive: list[int] = []
    out = tmp_path / f"x{suffix}"
    written: list[int] = []

    def recs():
        for i, r in enumerate(GeneratorConfig(profile="v1", n_per_task=3).iter_records()):
            if i == ROW_GROUP + 5:  # the first row group is on disk before the rest is generated
                written.extend(p.stat().st_size for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
            yield r

    n = write_records(_tracked(recs(), alive, 2), out)
    assert len(written) == 1 and written[0] > 100_000, written
    assert n == GeneratorConfig(profile="v1", n_per_task=3).n_records() == len(alive)
    if suffix == ".parquet":
        assert pq.ParquetFile(out).metadata.num_row_groups == -(-n // ROW_GROUP)
        assert read_records(out) == GeneratorConfig(profile="v1", n_per_task=3).build()


def test_validate_streams(tmp_path):
    from gar_tasks.validate import validate_records

    alive: list[int] = []
    cfg = GeneratorConfig(profile="v1", n_per_task=2)
    rep = validate_records(_tracked(cfg.iter_records(), alive, 2))
    assert rep.ok and rep.n_records == cfg.n_records() == len(alive)


# ---------------------------------------------------------------------------------------------
# SIGTERM cleans up as SIGINT does

def _signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"finished before the signal: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("never got ready")
        time.sleep(0.05)
    proc.send_signal(sig)


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal delivers it. A test run started in the background of a
    non-interactive shell (``cmd &``) ignores SIGINT, and children inherit that, so the push
    would finish with 0 and the test would check the shell instead of the product."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


needs_gar = pytest.mark.skipif(not GAR.exists(), reason="needs the installed gar console script")


@needs_gar
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_sigterm_in_generate_leaves_no_temp_file(tmp_path, suffix):
    out = tmp_path / f"x{suffix}"
    proc = subprocess.Popen([str(GAR), "generate", "--profile", "v1", "--per-task", "300", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _signal_when(proc, lambda: any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()),
                 signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@needs_gar
@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_in_push_leaves_no_temp_folder(tmp_path, sig, rc):
    """With --out (the folder's temporary sibling) and without (the temporary folder in TMPDIR)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    for extra in (["--out", str(tmp_path / "out")], []):
        proc = subprocess.Popen([str(GAR), "push", "--repo", "me/gar", "--dry-run", *extra], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)
        _signal_when(proc, lambda: any(p.name.startswith(".") or p.name.startswith("gar-hub-")
                                       for d in (tmp_path, tmp) for p in d.iterdir()), sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == rc and "Traceback" not in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and list(tmp.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# item 6: written files are fsynced before the rename and get mode 0644

@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_generate_fsyncs_before_rename_and_mode_0644(tmp_path, capsys, monkeypatch, suffix):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {a}"), real_replace(a, b))[1])
    old = os.umask(0o022)
    try:
        out = tmp_path / f"x{suffix}"
        rc, _, err = run(capsys, "generate", "--profile", "v1", "--per-task", "1", "--out", out)
    finally:
        os.umask(old)
    assert rc == 0, err
    tmp = events[-1].removeprefix("replace ")
    assert events[-2:] == [f"fsync {tmp}", f"replace {tmp}"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_unexpected_os_error_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    from gar_tasks import validate

    def boom(path, profile=None):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(validate, "validate_file", boom)
    (p := tmp_path / "x.jsonl").write_text("{}\n")
    assert_error(*run(capsys, "validate", p), str(p), "Input/output error")
