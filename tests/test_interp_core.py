"""The interp core (interp.core): atomic outputs (fsync'd, mode 0644), the checkpointed batch loop and
its resume, the cached arrays, left padding, the cls encoder and the seeded record choosers."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from gar_tasks.errors import GARConfigError
from interp.core import outputs
from interp.core.encode import encode_cls, left_pad, length_batches, next_tokens, token_ids
from interp.core.select import choose_balanced, choose_twins, filter_records, sample_indices, select_slices
from tiny_tokenizers import bpe_tokenizer, gar_records

pytestmark = pytest.mark.unit


def test_atomic_write_mode_fsync_and_no_leftover(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    old = os.umask(0o077)  # even under a strict umask the outputs are world-readable, like gar generate's
    try:
        f = outputs.atomic_write(tmp_path / "a.txt", "hello")
        outputs.save_npz(tmp_path / "b.npz", x=np.arange(3))
    finally:
        os.umask(old)
    assert f.read_text() == "hello" and len(synced) == 2
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.npz").stat().st_mode) == 0o644
    assert outputs.load_npz(tmp_path / "b.npz")["x"].tolist() == [0, 1, 2]

    class Boom(Exception):
        pass

    def fail(fd):
        raise Boom

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(Boom):
        outputs.atomic_write(tmp_path / "a.txt", "changed")
    assert (tmp_path / "a.txt").read_text() == "hello"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.npz"]  # no temporary left
    assert outputs.is_leftover(".a.txt.x1y2.tmp", ["a.txt"]) and not outputs.is_leftover("a.txt", ["a.txt"])


def test_checkpoint_batches_resume_and_refuse_another_run(tmp_path):
    calls = []

    def compute(i):
        calls.append(i)
        return {"v": np.array([i, i * i])}

    def manifest():
        return outputs.Manifest(tmp_path, "patch", "scores.json", ["checkpoint/args.json"], legacy_key="families")

    m = manifest()
    ck = outputs.Checkpoint(tmp_path, {"run": 1}, m)
    seen = []
    with pytest.raises(KeyboardInterrupt), m.own({"run": 1}):
        assert ck.open() is False
        for d in ck.batches("atp", "cls", 4, compute, progress=lambda s, done, n: seen.append((s, done, n))):
            if len(seen) == 2:
                raise KeyboardInterrupt
    assert calls == [0, 1, 2] and seen[0] == ("atp cls", 1, 4)
    assert sorted(p.name for p in ck.dir.iterdir()) == ["args.json", "atp_cls_00000.npz", "atp_cls_00001.npz",
                                                        "atp_cls_00002.npz"]
    # every file the interrupted run wrote is in its manifest, written before the files
    listed = json.loads((tmp_path / outputs.MANIFEST).read_text())
    assert listed["command"] == "patch" and listed["args"] == {"run": 1}
    assert sorted(listed["files"]) == ["checkpoint/args.json", "checkpoint/atp_cls_00000.npz",
                                       "checkpoint/atp_cls_00001.npz", "checkpoint/atp_cls_00002.npz"]
    m2 = manifest()
    ck2 = outputs.Checkpoint(tmp_path, {"run": 1}, m2)
    with m2.own():
        assert ck2.open() is True
        got = [d["v"].tolist() for d in ck2.batches("atp", "cls", 4, compute)]
        assert ck2.value("pairs.json", lambda: [1, 2]) == [1, 2]
        assert ck2.value("pairs.json", lambda: pytest.fail("recomputed")) == [1, 2]
    assert got == [[0, 0], [1, 1], [2, 4], [3, 9]] and calls == [0, 1, 2, 3]
    assert ck2.counts == {"atp_batches": 1, "atp_batches_loaded": 3}
    m3 = manifest()
    other = outputs.Checkpoint(tmp_path, {"run": 2}, m3, values=("pairs.json",))
    with m3.own():
        with pytest.raises(GARConfigError, match=r"other arguments \(run: 1 -> 2\).*--restart"):
            other.open()
        # --restart deletes only what the manifest lists: never a user's file, whatever its name
        (other.dir / "weights.bin").write_bytes(b"a user's file")
        (other.dir / "weights_epoch_00010.npz").write_bytes(b"a user's file")
        (other.dir / ".pairs.json.ab12.tmp").write_text("")  # an interrupted write of a listed file
        assert other.open(restart=True) is False
        assert sorted(p.name for p in other.dir.iterdir()) == ["args.json", "weights.bin", "weights_epoch_00010.npz"]
        assert json.loads((other.dir / "args.json").read_text()) == {"run": 2}
        assert other.discard() == ["weights.bin", "weights_epoch_00010.npz"] and other.dir.is_dir()
        (other.dir / "weights.bin").unlink()
        (other.dir / "weights_epoch_00010.npz").unlink()
        assert other.discard() == [] and not other.dir.exists()
        assert json.loads((tmp_path / outputs.MANIFEST).read_text())["files"] == []
        fp = outputs.Checkpoint(tmp_path, {"run": 2, "model": "a", "model_fingerprint": "sha256:a"}, m3)
        fp.open()
        # the same content under another path is the same model; other content is refused, naming both
        assert outputs.Checkpoint(tmp_path, {"run": 2, "model": "copy", "model_fingerprint": "sha256:a"}, m3).check()
        with pytest.raises(GARConfigError, match="checkpoint of another model .'a', content sha256:a; this run's 'b' "
                                                 "is content sha256:b"):
            outputs.Checkpoint(tmp_path, {"run": 2, "model": "b", "model_fingerprint": "sha256:b"}, m3).open()
        with pytest.raises(GARConfigError, match="older gar"):
            outputs.Checkpoint(tmp_path, {"run": 2, "model_fingerprint": "0123456789abcdef"}, m3).check()
        (fp.dir / "args.json").write_text("{not json")
        with pytest.raises(GARConfigError, match="cannot read the checkpoint file .*--restart"):
            fp.open()


def test_cached_arrays_keyed_by_meta(tmp_path):
    made = []

    def make():
        made.append(1)
        return {"a": np.ones(2)}

    f = tmp_path / "c.npz"
    a, loaded = outputs.cached_arrays(f, {"m": 1}, make)
    assert not loaded and a["a"].tolist() == [1, 1]
    a, loaded = outputs.cached_arrays(f, {"m": 1}, make)
    assert loaded and len(made) == 1 and set(a) == {"a"}
    _, loaded = outputs.cached_arrays(f, {"m": 2}, make)
    assert not loaded and len(made) == 2
    f.write_bytes(b"not an npz")
    _, loaded = outputs.cached_arrays(f, {"m": 2}, make)
    assert not loaded and len(made) == 3


def test_timings_and_out_dir(tmp_path):
    t = outputs.Timings()
    with t("a"):
        pass
    with t("a"):
        pass
    assert set(t) == {"a"} and t["a"] >= 0 and t.total() >= t["a"]
    (tmp_path / "f").write_text("x")
    with pytest.raises(GARConfigError, match="not a folder"):
        outputs.check_out_dir(tmp_path / "f")
    assert outputs.versions()["torch"]


def test_left_pad_and_batches():
    p = left_pad([[5, 6, 7], [8], [9, 10]], 0)
    assert p.input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert p.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert p.position_ids.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    assert p.pads == [0, 2, 1] and p.width == 3
    assert set(p.inputs("cpu", logits_to_keep=1)) == {"input_ids", "attention_mask", "position_ids", "logits_to_keep"}
    assert length_batches([3, 1, 2, 1], 2) == [[1, 3], [2, 0]]
    with pytest.raises(GARConfigError, match="at least 1"):
        length_batches([1], 0)
    with pytest.raises(GARConfigError, match="empty batch"):
        left_pad([], 0)


def test_encode_cls_targets_twins_and_tasks():
    tok = bpe_tokenizer()
    recs = [r for r in gar_records("paper") if r.family == "cls"][:8]
    enc = encode_cls(recs, tok, [0, 0, 0, 0, 1, 1, 1, 1], ["a", "b"])
    assert len(enc) == 8 and enc.record_tasks == ["a"] * 4 + ["b"] * 4 and enc.gold_yes == enc.labels
    assert {tok.decode([t]) for t in enc.yes} == {" Yes"} and {tok.decode([t]) for t in enc.no} == {" No"}
    assert enc.ids == token_ids(tok, [r.prompt for r in recs])
    assert next_tokens(tok, [recs[0].prompt], ["Yes"], [enc.ids[0]]) == [enc.yes[0]]
    for y, n in enumerate(enc.twin):
        if n is not None:
            assert enc.labels[y] and not enc.labels[n] and enc.pair_ids[y] == enc.pair_ids[n]
    b = enc.batch(enc.length_batches(3)[0])
    assert b.input_ids.shape[0] == 3 and (b.attention_mask.sum(1) == b.position_ids.max(1).values + 1).all()
    with pytest.raises(GARConfigError, match="cls records"):
        encode_cls([r for r in gar_records("paper") if r.family == "gen"][:1], tok)


def test_choosers_seeded_and_shaped():
    recs = gar_records("paper")
    slices = select_slices("gender_city")
    assert {(s.family, s.pair) for s in slices} == {("cls", "gender_city"), ("gen", "gender_city")}
    flat = filter_records(recs, slices)
    assert flat and all(r.id in {x.id for x in recs} for r in flat)
    assert [r.id for r in flat] == [r.id for r in recs if r in flat]  # record order kept
    bal = choose_balanced(recs, slices, 5, 0)
    assert bal.tasks == ["gar_cls_nr0_gender_city", "gar_cls_nr1_gender_city", "gar_cls_nr2_gender_city"]
    for k in range(3):
        labs = [str(r.label) for r, t in zip(bal.records, bal.task_index) if t == k]
        assert labs.count("Yes") == 3 and labs.count("No") == 2
    tw = choose_twins(recs, slices, 4, 0)
    assert tw.tasks == ["cls_nr0_gender_city", "cls_nr1_gender_city", "cls_nr2_gender_city"]
    assert [r.id for r in choose_twins(recs, slices, 4, 0).records] == [r.id for r in tw.records]
    rng = np.random.default_rng(0)
    idx = sample_indices(rng, 10, 4)
    assert idx == sorted(idx) and len(set(idx)) == 4 and sample_indices(rng, 3, 10) == [0, 1, 2]
    with pytest.raises(GARConfigError, match="--n"):
        choose_balanced(recs, slices, 0, 0)


def test_lock_and_manifest(tmp_path):
    out = tmp_path / "out"
    with outputs.locked_dir(out):
        with pytest.raises(GARConfigError, match="another gar run is writing"):
            outputs.check_unlocked(out)
        with pytest.raises(GARConfigError, match="another gar run is writing"):
            with outputs.locked_dir(out):
                pass
    outputs.check_unlocked(out)  # released
    assert list(out.iterdir()) == []  # the lock adds nothing to the folder

    m = outputs.Manifest(out, "patch", "scores.json", ["summary.md", "heatmap_*.png"], legacy_key="families")
    m.check()  # nothing there yet
    (out / "heatmap_cls.png").write_bytes(b"mine")
    with pytest.raises(GARConfigError, match="heatmap_cls.png, not written by a previous gar patch run"):
        m.check()
    outputs.write_json(out / "scores.json", m.stamp({"families": {}}, ["summary.md", "heatmap_cls.png"]))
    m.check()  # now listed as ours
    (out / "summary.md").write_text("x")
    m.check()
    outputs.write_json(out / "scores.json", {"written_by": {"command": "heads", "files": ["summary.md"]}})
    with pytest.raises(GARConfigError, match="summary.md"):
        m.check()
    outputs.write_json(out / "scores.json", {"families": {}})  # an output of the version before manifests
    m.check()
    assert m.owned() == {"scores.json", "summary.md", "heatmap_*.png"}
    # the next run takes such a folder over: its files present move into the manifest file, first
    (out / "notes.txt").write_text("mine")
    with m.own({"n": 1}):
        assert json.loads((out / outputs.MANIFEST).read_text())["files"] == ["heatmap_cls.png", "scores.json",
                                                                              "summary.md"]
        outputs.atomic_write(out / "summary.md", "new")  # ours: replaced
        (out / "sub").mkdir()
        outputs.atomic_write(out / "sub" / "x.txt", "new")  # in a subfolder: listed by its relative path
        with pytest.raises(GARConfigError, match="notes.txt exists and was not written by gar patch"):
            outputs.atomic_write(out / "notes.txt", "overwritten")
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(json.loads((out / outputs.MANIFEST).read_text())["files"]) == [
        "heatmap_cls.png", "scores.json", "sub/x.txt", "summary.md"]
    outputs.atomic_write(out / "after.txt", "x")  # outside a run: not listed
    assert "after.txt" not in m.owned()
    # a folder of another command, and a manifest gar cannot read, are refused before any work
    with pytest.raises(GARConfigError, match="outputs of a gar patch run"):
        outputs.Manifest(out, "heads", "heads.json", [], legacy_key="true_heads").check()
    (out / outputs.MANIFEST).write_text("{not json")
    with pytest.raises(GARConfigError, match="cannot read"):
        m.check()
