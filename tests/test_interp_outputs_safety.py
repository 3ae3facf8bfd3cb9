"""A user's files are safe from the interp commands, on the command line with tiny models: ``--restart`` deletes only checkpoint
files we recognise; a second writer on the same ``--out`` (another process) is refused; a checkpoint
and the probe's feature cache are keyed by what the model is (a swapped model folder is refused, not
mixed); a user's same-named files are never overwritten (manifest); heads found on another model and
``gar probe --k`` beyond the model's heads are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cli_helpers import assert_error, offline_one_thread, run  # noqa: F401 (autouse fixture)
from interp_golden import mlp_folder

pytestmark = pytest.mark.integration

TASK = "gar_cls_nr1_gender_city"
PATCH = ["--tasks", TASK, "--n", 4, "--batch-size", 2, "--verify-top", 2, "-q"]


def _save_tiny(path, arch="llama", seed=0):
    from tiny_models import BUILDERS
    from tiny_tokenizers import bpe_tokenizer

    BUILDERS[arch](seed=seed).save_pretrained(path)
    bpe_tokenizer().save_pretrained(path)
    return path


@pytest.fixture()
def model_dir(tmp_path):
    return _save_tiny(tmp_path / "model")


def test_restart_deletes_only_our_checkpoint_files(tmp_path, model_dir, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, "patch", "--model", model_dir, *PATCH, "--out", out)
    assert rc == 0, err
    ckpt = out / "checkpoint"
    ours = sorted(p.name for p in ckpt.iterdir())
    assert "args.json" in ours and "pairs.json" in ours and any(n.startswith("atp_cls_") for n in ours)
    (ckpt / "model.safetensors").write_bytes(b"the user's weights")
    (ckpt / "notes.json").write_text("{}")
    rc, _, err = run(capsys, "patch", "--model", model_dir, *PATCH, "--out", out, "--restart")
    assert rc == 0, err
    assert (ckpt / "model.safetensors").read_bytes() == b"the user's weights"
    assert (ckpt / "notes.json").read_text() == "{}"
    info = json.loads((out / "scores.json").read_text())
    assert not info["resumed"] and info["batches"]["atp_batches_loaded"] == 0


def test_second_writer_is_refused(tmp_path, model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_error(*run(capsys, "patch", "--model", model_dir, *PATCH, "--out", out), "another gar run is writing",
                     str(out))
        assert_error(*run(capsys, "heads", "--model", model_dir, "--tasks", "gender_city", "--n", 2, "-q",
                          "--out", out), "another gar run is writing")
        assert list(out.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
    rc, _, err = run(capsys, "patch", "--model", model_dir, *PATCH, "--out", out)  # the lock died with its holder
    assert rc == 0, err


def test_checkpoint_of_a_swapped_model_is_refused(tmp_path, model_dir, capsys):
    from interp.commands.patch import PatchArgs, run_patch

    out = tmp_path / "out"
    pa = PatchArgs(model=str(model_dir), tasks=TASK, out=str(out), n=4, batch_size=2, verify_top=2)

    def interrupt(stage, done, total):
        if stage.startswith("atp") and done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_patch(pa, progress=interrupt)
    _save_tiny(model_dir, seed=1)  # same name, same shape, other weights
    before = sorted(p.name for p in (out / "checkpoint").iterdir())
    capsys.readouterr()  # what the interrupted run printed
    assert_error(*run(capsys, "patch", "--model", model_dir, *PATCH, "--out", out), "checkpoint of another model",
                 "--restart")
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == before
    rc, _, err = run(capsys, "patch", "--model", model_dir, *PATCH, "--out", out, "--restart")
    assert rc == 0, err


def test_users_same_named_files_are_not_overwritten(tmp_path, model_dir, capsys):
    for cmd, name, extra in (("patch", "summary.md", PATCH),
                             ("heads", "summary.md", ["--tasks", "gender_city", "--n", 2, "-q"]),
                             ("intervene", "intervene.md", ["--mode", "ablate", "--heads", "0:1", "--tasks",
                                                            TASK, "--n", 2, "--random-draws", 1, "-q"])):
        out = tmp_path / f"{cmd}_out"
        out.mkdir()
        (out / name).write_text("my notes")
        assert_error(*run(capsys, cmd, "--model", model_dir, *extra, "--out", out),
                     f"not written by a previous gar {cmd} run")
        assert (out / name).read_text() == "my notes" and [p.name for p in out.iterdir()] == [name]
        # a previous run's own outputs are overwritten by a rerun
        fresh = tmp_path / f"{cmd}_fresh"
        for _ in range(2):
            rc, _, err = run(capsys, cmd, "--model", model_dir, *extra, "--out", fresh)
            assert rc == 0, err
        main = {"patch": "scores.json", "heads": "heads.json", "intervene": "intervene.json"}[cmd]
        written = json.loads((fresh / main).read_text())["written_by"]
        assert written["command"] == cmd and name in written["files"] and main in written["files"]


def test_probe_refuses_foreign_files_heads_of_another_model_and_k_too_large(tmp_path, model_dir, capsys):
    mlp = mlp_folder(tmp_path / "mlp")
    heads = tmp_path / "heads"
    rc, _, err = run(capsys, "heads", "--model", model_dir, "--tasks", "gender_city", "--n", 4,
                     "--min-consistency", 0.5, "-q", "--out", heads)
    assert rc == 0, err
    probe = ["--datasets", "snli", "--k", 2, "--random-draws", 1, "--runs", 1, "--limit", 10, "--dtype", "float32",
             "--mlp-dir", mlp, "-q"]
    out = tmp_path / "probe"
    rc, _, err = run(capsys, "probe", "--model", model_dir, "--heads", heads, *probe, "--out", out)
    assert rc == 0, err
    with np.load(out / "features_snli_train.npz") as z:
        meta = json.loads(str(z["meta"]))
    assert meta["model_fingerprint"]  # the cache is keyed by what the model is, not only its path
    info = json.loads((out / "probe.json").read_text())
    assert "features_snli_train.npz" in info["written_by"]["files"]

    # k beyond the model's 8 heads
    assert_error(*run(capsys, "probe", "--model", model_dir, "--heads", heads, *probe, "--k", 99,
                      "--out", tmp_path / "k99"), "--k 99 is more than the 8 heads")
    # heads discovered on another architecture, and on other weights of the same one
    gpt2 = _save_tiny(tmp_path / "gpt2", "gpt2")
    capsys.readouterr()
    for cmd, extra in (("probe", probe), ("intervene", ["--mode", "ablate", "--tasks", TASK, "--n", 2])):
        assert_error(*run(capsys, cmd, "--model", gpt2, "--heads", heads, *extra, "--out", tmp_path / "x"),
                     "were discovered on", "a llama", "gpt2")
    _save_tiny(model_dir, seed=3)
    capsys.readouterr()
    for cmd, extra in (("probe", probe), ("intervene", ["--mode", "ablate", "--tasks", TASK, "--n", 2])):
        assert_error(*run(capsys, cmd, "--model", model_dir, "--heads", heads, *extra, "--out", tmp_path / "x"),
                     "were discovered on", "other weights")
    assert not (tmp_path / "x").exists() and not (tmp_path / "k99").exists()

    # a file named like a feature cache that gar did not write is not overwritten
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "features_snli_test.npz").write_bytes(b"my data")
    rc, _, err = run(capsys, "heads", "--model", model_dir, "--tasks", "gender_city", "--n", 4,
                     "--min-consistency", 0.5, "-q", "--out", tmp_path / "heads3")
    assert rc == 0, err
    assert_error(*run(capsys, "probe", "--model", model_dir, "--heads", tmp_path / "heads3", *probe, "--out", mine),
                 "not a gar probe feature cache")
    assert (mine / "features_snli_test.npz").read_bytes() == b"my data" and os.listdir(mine) == [
        "features_snli_test.npz"]


@pytest.mark.parametrize("command", ["patch", "heads", "probe"])
def test_out_under_a_file_is_refused_before_any_work(tmp_path, command, capsys):
    """A folder with a config but no weights: an error about --out (not about the weights) shows the
    output path is checked before the model loads."""
    from tiny_models import BUILDERS

    model = tmp_path / "model"
    BUILDERS["llama"](seed=0).config.save_pretrained(model)
    (tmp_path / "afile").write_text("the user's file")
    extra = {"patch": PATCH, "heads": ["--n", 2, "-q"], "probe": ["--heads", tmp_path / "afile", "-q"]}[command]
    rc, out, err = run(capsys, command, "--model", model, *extra, "--out", tmp_path / "afile" / "sub")
    assert_error(rc, out, err, "afile", "is not a folder")
    assert (tmp_path / "afile").read_text() == "the user's file"


def test_patch_says_when_fewer_pairs_than_asked_exist(tmp_path, model_dir, capsys):
    args = [a for a in PATCH if a != "-q"]
    args[args.index("--n") + 1] = 100000  # the bound of --n
    rc, _, err = run(capsys, "patch", "--model", model_dir, *args, "--out", tmp_path / "out")
    assert rc == 0, err
    n = json.loads((tmp_path / "out" / "scores.json").read_text())
    line = next(ln for ln in err.splitlines() if "pairs asked" in ln)
    assert "100000 pairs asked" in line and "usable" in line, line
    assert n["n"] == 100000
