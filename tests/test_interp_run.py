"""``gar patch`` (interp.run): outputs, checkpoint/resume, and every bad-input path.

Tiny random models (``tiny_models``) saved to a tmp folder drive the CLI end to end; one run
on the embedded SmolLM2 (4 GAR cls pairs) checks the real model. Failing commands must exit 2
with one ``gar: error:`` line and leave no output file behind.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import interp.patching as patching
from interp.commands.patch import PatchArgs, run_patch
from interp.core.select import select_slices
from cli_helpers import assert_error, offline_one_thread, run  # noqa: F401 (autouse fixture)

TASK = "gar_cls_nr1_gender_city"


def outputs(d):
    """The folder's files but its manifest (``.gar_manifest.json``)."""
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.name != ".gar_manifest.json") if d.exists() else []


@pytest.mark.unit
def test_selectors():
    assert {s.family for s in select_slices("cls")} == {"cls"}
    leaf = select_slices(TASK)
    assert [(s.family, s.n_r, s.pair) for s in leaf] == [("cls", 1, "gender_city")]
    assert select_slices("gar_cls_nr1") == select_slices("cls_nr1")
    assert set(select_slices("gender_city")) >= set(leaf)
    assert len(select_slices("cls,gen")) == len(select_slices("gar")) == len(select_slices("all"))
    assert select_slices("gar_v1_cls", "v1") == select_slices("cls", "v1")


@pytest.mark.integration
def test_tiny_run_resume_restart(tmp_path, tiny_dir, capsys, monkeypatch):
    args = ["patch", "--model", tiny_dir, "--tasks", TASK, "--n", 8, "--batch-size", 2, "--verify-top", 3,
            "-q"]
    rc, out, err = run(capsys, *args, "--out", tmp_path / "full")
    assert rc == 0, err
    full = tmp_path / "full"
    assert outputs(full) == ["heatmap_cls.png", "scores.json", "scores.npz", "summary.md"]
    info = json.loads((full / "scores.json").read_text())
    fam = info["families"]["cls"]
    assert fam["n_pairs"] == 8 and fam["n_batches"] == 4 and "unequal_length" in fam["counts"]
    ag = fam["agreement"]
    assert ag["n"] == 6 and all(np.isfinite([ag["pearson"], ag["spearman"], ag["topk_overlap"]]))
    z = np.load(full / "scores.npz")
    assert z["atp_cls"].shape == (2, 4) and z["atp_roles_cls"].shape == (2, 4, len(z["roles"]))
    assert np.isnan(z["exact_cls"]).sum() == 8 - 6
    assert "| 1 |" in (full / "summary.md").read_text()

    # interrupted after 2 AtP batches, then resumed: same scores, finished batches not redone
    calls = {"n": 0}
    real = patching.attribution_batch

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(patching, "attribution_batch", counting)
    part = tmp_path / "part"

    def interrupt(stage, done, total):
        if stage.startswith("atp") and done == 2:
            raise KeyboardInterrupt

    pa = PatchArgs(model=str(tiny_dir), tasks=TASK, out=str(part), n=8, batch_size=2, verify_top=3)
    with pytest.raises(KeyboardInterrupt):
        run_patch(pa, progress=interrupt)
    assert calls["n"] == 2 and outputs(part) == []
    assert len(list((part / "checkpoint").glob("atp_cls_*.npz"))) == 2
    info2 = run_patch(pa)
    assert calls["n"] == 4  # only the two unfinished batches
    assert info2["resumed"] and info2["batches"]["atp_batches_loaded"] == 2
    z2 = np.load(part / "scores.npz")
    for key in ("atp_cls", "exact_cls", "atp_roles_cls"):
        np.testing.assert_allclose(z2[key], z[key], rtol=1e-6, atol=1e-7, equal_nan=True)

    # --grad-drop adds the AtP* GradDrop magnitudes of the same pairs, and their agreement
    rc, out, err = run(capsys, *args, "--out", tmp_path / "gd", "--grad-drop")
    assert rc == 0, err
    from interp.pairs import Pairs
    from interp.core.loader import load_model

    gd_pairs = Pairs.from_dict(json.loads((tmp_path / "gd" / "checkpoint" / "pairs.json").read_text())["cls"])
    nn_model = load_model(str(tiny_dir), "float32").model
    z_gd = np.load(tmp_path / "gd" / "scores.npz")
    np.testing.assert_allclose(z_gd["graddrop_cls"], patching.attribution_scores(nn_model, gd_pairs, batch_size=2,
                                                                                 grad_drop=True), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(z_gd["atp_cls"], z["atp_cls"], rtol=1e-6, atol=1e-7)
    info_gd = json.loads((tmp_path / "gd" / "scores.json").read_text())
    assert info_gd["grad_drop"] and info_gd["families"]["cls"]["agreement_graddrop"]["n"] == 6
    assert "GradDrop" in (tmp_path / "gd" / "summary.md").read_text()

    # --restart recomputes everything, with the same result
    calls["n"] = 0
    rc, out, err = run(capsys, *args, "--out", part, "--restart")
    assert rc == 0, err
    assert calls["n"] == 4
    np.testing.assert_allclose(np.load(part / "scores.npz")["atp_cls"], z["atp_cls"], rtol=1e-6, atol=1e-7)

    # a checkpoint of other arguments is refused (before anything is written)
    before = {p: p.stat().st_mtime_ns for p in part.rglob("*")}
    rc, out, err = run(capsys, *args[:-1], "--seed", 1, "--out", part)
    assert_error(rc, out, err, "other arguments", "seed", "--restart")
    assert {p: p.stat().st_mtime_ns for p in part.rglob("*")} == before


@pytest.mark.integration
@pytest.mark.parametrize("argv,needles", [
    (["--tasks", "cls_nr9"], ["unknown task selector 'cls_nr9'", "valid forms"]),
    (["--tasks", "gar_v1_cls"], ["unknown task selector", "gar_cls_nr1_gender_city"]),
    (["--tasks", "cls", "--remote"], ["--remote needs a Hub model id"]),
    (["--tasks", "cls", "--n", "0"], ["--n must be at least 1"]),
])
def test_bad_input(tmp_path, tiny_dir, capsys, argv, needles):
    out = tmp_path / "out"
    rc, o, e = run(capsys, "patch", "--model", tiny_dir, *argv, "--out", out)
    assert_error(rc, o, e, *needles)
    assert not out.exists()


@pytest.mark.integration
def test_bad_model(tmp_path, capsys, monkeypatch):
    from transformers import BertConfig

    bert = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(bert)
    out = tmp_path / "out"
    assert_error(*run(capsys, "patch", "--model", bert, "--tasks", TASK, "--out", out),
                 "unsupported architecture 'bert'")
    assert outputs(out) == []
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    assert_error(*run(capsys, "patch", "--model", "some-org/some-model", "--tasks", TASK, "--remote", "--out", out),
                 "NDIF_API_KEY")
    assert_error(*run(capsys, "patch", "--model", "some-org/not-cached-model", "--tasks", TASK, "--out", out),
                 "cannot load the config", "not-cached-model")
    assert outputs(out) == []


@pytest.mark.e2e
def test_smollm2_run(tmp_path, capsys):
    """The embedded SmolLM2 on 4 GAR cls and 4 gen pairs: completes, every output, finite agreement."""
    import torch

    torch.set_num_threads(2)
    out = tmp_path / "smol"
    rc, o, e = run(capsys, "patch", "--model", "smollm2", "--tasks", f"{TASK},gar_gen_nr0_gender_city", "--n", 4,
                   "--batch-size", 4, "--verify-top", 3, "-q", "--out", out)
    assert rc == 0, e
    assert outputs(out) == ["heatmap_cls.png", "heatmap_gen.png", "scores.json", "scores.npz", "summary.md"]
    info = json.loads((out / "scores.json").read_text())
    assert info["n_layers"] == 30 and info["n_heads"] == 9
    z = np.load(out / "scores.npz")
    for fam in ("cls", "gen"):
        ag = info["families"][fam]["agreement"]
        assert all(np.isfinite([ag["pearson"], ag["spearman"], ag["topk_overlap"]]))
        assert re.search(fam + r": 4 pairs, AtP vs exact on 6 heads: spearman -?\d", o)
        assert z[f"atp_{fam}"].shape == (30, 9) and np.isfinite(z[f"atp_{fam}"]).all()
