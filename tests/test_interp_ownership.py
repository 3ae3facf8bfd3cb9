"""A run owns its files from the first byte, and a model is its content, on the command line with
tiny models.

Interruptions are injected faults (the writer raises after N files), never sleeps: after each write
phase a rerun resumes and ``--restart`` starts again, and a user's files in the folder survive. A
byte-identical copy of a model (``cp -r``) is the same model for checkpoints and reused heads; other
weights of the same size with the old modification time are not. ``gar circuit-overlap`` refuses
two models' runs, a folder given twice and a damaged ``scores.npz``, one line each.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cli_helpers import assert_error, offline_one_thread, run  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.integration

MANIFEST = ".gar_manifest.json"
CIRCUIT = ["--tasks", "gar_gen_nr0_gender_city", "--n", 4, "--batch-size", 2, "--random", 1, "--spot", 1, "-q"]
PATCH_TASK = "gar_cls_nr1_gender_city"
PATCH = ["--tasks", PATCH_TASK, "--n", 4, "--batch-size", 2, "--verify-top", 2, "-q"]
HEADS = ["--tasks", "gender_city", "--n", 4, "--min-consistency", 0.5, "-q"]


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    """The per-file hash cache in the test's folder (not the user's ~/.cache)."""
    monkeypatch.setenv("GAR_HASH_CACHE", str(tmp_path / "hashes.json"))
    return tmp_path / "hashes.json"


def save_tiny(path, seed=0):
    from tiny_models import BUILDERS
    from tiny_tokenizers import bpe_tokenizer

    BUILDERS["llama"](seed=seed).save_pretrained(path)
    bpe_tokenizer().save_pretrained(path)
    return Path(path)


def cp_r(src, dst):
    """``cp -r``: the same bytes, new files (new modification times)."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    return Path(dst)


def swap_keeping_time(model, other):
    """Other weights of the same size written over ``model``'s, its modification time put back
    (``cp`` then ``touch -r``)."""
    f, g = Path(model) / "model.safetensors", Path(other) / "model.safetensors"
    st = f.stat()
    assert g.stat().st_size == st.st_size and g.read_bytes() != f.read_bytes()
    f.write_bytes(g.read_bytes())
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def fail_after(monkeypatch, out, n):
    """Make the writer raise (as Ctrl-C would) when it is about to put the (n+1)-th file in ``out``
    (the manifest itself not counted); returns the count of files written."""
    real = os.replace
    written = {"n": 0}
    root = Path(out).absolute()

    def replace(src, dst, *a, **k):
        d = Path(dst).absolute()
        if root in d.parents and d.name != MANIFEST:
            if written["n"] >= n:
                raise KeyboardInterrupt
            written["n"] += 1
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    return written


def listed(out):
    return set(json.loads((Path(out) / MANIFEST).read_text())["files"])


def listed_if_any(out):
    return listed(out) if (Path(out) / MANIFEST).exists() else set()


def files_in(out):
    return {p.relative_to(out).as_posix() for p in Path(out).rglob("*") if p.is_file() and p.name != MANIFEST}


def circuit_args(model, out, **kw):
    from interp.commands.circuit import CircuitArgs

    return CircuitArgs(model=str(model), tasks="gar_gen_nr0_gender_city", out=str(out), n=4, batch_size=2, random=1,
                       spot=1, **kw)


def test_interrupted_circuit_resumes_and_restarts_after_each_write_phase(tmp_path, tiny_dir, capsys, monkeypatch):
    from interp.commands.circuit import run_circuit

    full = tmp_path / "full"
    rc, _, err = run(capsys, "circuit", "--model", tiny_dir, *CIRCUIT, "--out", full)
    assert rc == 0, err
    total = len(files_in(full))
    # the checkpoint's start, a finished batch, the first outputs, everything but circuit.json
    manifests = []
    for n in (0, 1, 3, 6, total - 1):
        out = tmp_path / f"cut{n}"
        written = fail_after(monkeypatch, out, n)
        with pytest.raises(KeyboardInterrupt):
            run_circuit(circuit_args(tiny_dir, out))
        monkeypatch.undo()
        assert written["n"] == n
        left, listed_then = files_in(out), listed_if_any(out)
        if n == total - 1:  # a user's files beside the interrupted run's: --restart keeps them
            (out / "notes.txt").write_text("mine")
            (out / "checkpoint" / "weights_epoch_00010.npz").write_bytes(b"my weights")
            rc, _, err = run(capsys, "circuit", "--model", tiny_dir, *CIRCUIT, "--out", out, "--restart")
            assert rc == 0, (n, err)
            assert (out / "notes.txt").read_text() == "mine"
            assert (out / "checkpoint" / "weights_epoch_00010.npz").read_bytes() == b"my weights"
            assert not json.loads((out / "circuit.json").read_text())["resumed"]
        else:
            rc, _, err = run(capsys, "circuit", "--model", tiny_dir, *CIRCUIT, "--out", out)
            assert rc == 0, (n, err)
            info = json.loads((out / "circuit.json").read_text())
            assert info["resumed"] == (n > 0), n
            assert files_in(out) == files_in(full), n
        manifests.append((n, out, left, listed_then))
    assert listed(full) == files_in(full) and total > 10
    for n, out, left, listed_then in manifests:
        assert left <= listed_then, n  # every file the interrupted run wrote was listed, from the first byte
        assert listed(out) == files_in(out) - {"notes.txt", "checkpoint/weights_epoch_00010.npz"}, n


def test_interrupted_heads_and_patch_rerun(tmp_path, capsys, monkeypatch):
    from interp.commands.heads import HeadsArgs, run_heads
    from interp.commands.patch import PatchArgs, run_patch

    model = save_tiny(tmp_path / "model")
    heads = tmp_path / "heads"
    fail_after(monkeypatch, heads, 2)  # directions.npz and heads.png written, not summary.md nor heads.json
    with pytest.raises(KeyboardInterrupt):
        run_heads(HeadsArgs(model=str(model), out=str(heads), tasks="gender_city", n=4, min_consistency=0.5))
    monkeypatch.undo()
    left, listed_then = files_in(heads), listed_if_any(heads)
    rc, _, err = run(capsys, "heads", "--model", model, *HEADS, "--out", heads)
    assert rc == 0, err
    assert files_in(heads) == {"directions.npz", "heads.png", "summary.md", "heads.json"}
    assert left == {"directions.npz", "heads.png"} <= listed_then  # (the next file is listed before it appears)

    out = tmp_path / "patch"
    pa = PatchArgs(model=str(model), tasks=PATCH_TASK, out=str(out), n=4, batch_size=2, verify_top=2)
    fail_after(monkeypatch, out, 5)
    with pytest.raises(KeyboardInterrupt):
        run_patch(pa)
    monkeypatch.undo()
    left, listed_then = files_in(out), listed_if_any(out)
    rc, _, err = run(capsys, "patch", "--model", model, *PATCH, "--out", out)
    assert rc == 0, err
    assert json.loads((out / "scores.json").read_text())["resumed"]
    assert left <= listed_then


def test_a_copy_is_the_same_model_and_a_same_size_swap_is_not(tmp_path, capsys, monkeypatch):
    from interp.commands.patch import PatchArgs, run_patch

    model = save_tiny(tmp_path / "model")
    other = save_tiny(tmp_path / "other", seed=1)
    copy = cp_r(model, tmp_path / "copy")

    # heads found on the model are reused on its copy
    heads = tmp_path / "heads"
    rc, _, err = run(capsys, "heads", "--model", model, *HEADS, "--out", heads)
    assert rc == 0, err
    rc, _, err = run(capsys, "intervene", "--model", copy, "--heads", heads, "--mode", "ablate", "--tasks", PATCH_TASK,
                     "--n", 2, "--random-draws", 1, "-q", "--out", tmp_path / "iv")
    assert rc == 0, err

    # a checkpoint made on the model resumes on its copy
    out = tmp_path / "patch"

    def interrupt(stage, done, total):
        if stage.startswith("atp") and done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_patch(PatchArgs(model=str(model), tasks=PATCH_TASK, out=str(out), n=4, batch_size=2, verify_top=2),
                  progress=interrupt)
    rc, _, err = run(capsys, "patch", "--model", copy, *PATCH, "--out", out)
    assert rc == 0, err
    info = json.loads((out / "scores.json").read_text())
    assert info["resumed"] and info["batches"]["atp_batches_loaded"] >= 1

    # other weights of the same size, the old time put back: another model, named both ways
    swap_keeping_time(copy, other)
    assert_error(*run(capsys, "patch", "--model", copy, *PATCH, "--out", out), "checkpoint of another model",
                 str(model), str(copy), "--restart")
    assert_error(*run(capsys, "intervene", "--model", copy, "--heads", heads, "--mode", "ablate", "--tasks", PATCH_TASK,
                      "--n", 2, "-q", "--out", tmp_path / "iv2"), "were discovered on", str(model), str(copy))
    assert not (tmp_path / "iv2").exists()
    from interp.core.identity import folder_identity

    assert folder_identity(copy) == folder_identity(other) != folder_identity(model)
    shutil.rmtree(copy)
    assert folder_identity(cp_r(model, copy)) == folder_identity(model)


def test_hash_cache_is_keyed_by_the_files_stat(tmp_path, hash_cache):
    from interp.core.identity import folder_identity, forget_memo

    model = save_tiny(tmp_path / "model")
    ident = folder_identity(model)
    cache = json.loads(hash_cache.read_text())
    weights = str((model / "model.safetensors").resolve())
    assert set(cache) >= {weights, str((model / "config.json").resolve()), str((model / "tokenizer.json").resolve())}
    cache[weights]["sha256"] = "0" * 64  # a cached hash is used while the file's stat is unchanged
    hash_cache.write_text(json.dumps(cache))
    forget_memo()
    assert folder_identity(model) != ident
    os.utime(model / "model.safetensors")  # changed: hashed again
    forget_memo()
    assert folder_identity(model) == ident
    hash_cache.write_text("{not json")  # a damaged cache only costs time
    forget_memo()
    assert folder_identity(model) == ident


def test_overlap_refuses_two_models_the_same_folder_twice_and_damaged_scores(tmp_path, tiny_dir, capsys):
    other = save_tiny(tmp_path / "other", seed=1)
    a, b = tmp_path / "a", tmp_path / "b"
    for model, out in ((tiny_dir, a), (other, b)):
        rc, _, err = run(capsys, "circuit", "--model", model, *CIRCUIT, "--spot", 0, "--out", out)
        assert rc == 0, err
    ov = tmp_path / "ov"
    assert_error(*run(capsys, "circuit-overlap", a, b, "-q", "--out", ov), "two different models", str(tiny_dir),
                 str(other))
    assert_error(*run(capsys, "circuit-overlap", a, tmp_path / "x" / ".." / "a", "-q", "--out", ov), "given twice")
    for damage in (b"not an npz", (a / "scores.npz").read_bytes()[:200]):
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(a, bad)
        (bad / "scores.npz").write_bytes(damage)
        assert_error(*run(capsys, "circuit-overlap", a, bad, "-q", "--out", ov), "cannot read", str(bad))
    assert not ov.exists()
    # one model, two runs (a copy of the model is the same model): overlapped
    c = tmp_path / "c"
    rc, _, err = run(capsys, "circuit", "--model", cp_r(tiny_dir, tmp_path / "copy"), *CIRCUIT, "--spot", 0,
                     "--seed", 1, "--out", c)
    assert rc == 0, err
    rc, _, err = run(capsys, "circuit-overlap", a, c, "-q", "--out", ov)
    assert rc == 0, err
    assert listed(ov) == files_in(ov) and "overlap.json" in listed(ov)


def test_a_truncated_model_folder_is_one_line_before_any_output(tmp_path, capsys):
    """A folder whose safetensors stop short (an interrupted copy or download) is refused from its
    header and size, naming the file, instead of a SafetensorError traceback from transformers."""
    model = save_tiny(tmp_path / "model")
    weights = next(model.glob("*.safetensors"))
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    capsys.readouterr()  # the fixture's own "Writing model shards" progress bar
    out = tmp_path / "heads"
    assert_error(*run(capsys, "heads", "--model", model, *HEADS, "--out", out), "incomplete", weights.name, "truncated")
    assert not out.exists()
