"""``gar intervene`` (interp.intervene_report): the random-head control is disjoint and seeded,
accuracy is lm-eval's choice rule, label mode with unit factors is the baseline, the report holds
both arms per task, and bad input exits 2 with nothing written.

Tiny random Llama (``tiny_models``) for the mechanics; one CLI run on the embedded SmolLM2
(few records, bf16) for the real model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gar_tasks.errors import GARConfigError
from interp.commands.intervene import InterveneArgs, resolve_plan, run_intervene
from interp.core.encode import encode_cls
from interp.core.select import choose_balanced, load_records, select_slices
from interp.intervene_report import HeadPlan, check_heads, control_plans, correct_and_margin, run_arm, yes_no_logits
from cli_helpers import offline_one_thread, run  # noqa: F401 (autouse fixture)
from tiny_models import N_HEADS, N_LAYERS, tiny_model
from tiny_tokenizers import bpe_tokenizer

TASKS = "gar_cls_nr1_gender_city,gar_cls_nr0_gender_kind"


@pytest.fixture(scope="module")
def enc():
    sel = choose_balanced(load_records("paper"), select_slices(TASKS), n=4, seed=0)
    return encode_cls(sel.records, bpe_tokenizer(), sel.task_index, sel.tasks)


# ------------------------------------------------------------------------------------------
# the control


@pytest.mark.unit
def test_control_heads_disjoint_from_targets_and_seeded():
    targets = HeadPlan("ablate", heads=((3, 1), (14, 0), (15, 3)))
    draws = control_plans(targets, 30, 9, draws=5, seed=7)
    again = control_plans(targets, 30, 9, draws=5, seed=7)
    assert draws == again  # fixed seed -> the same heads
    assert len({d.heads for d in draws}) == 5  # each draw its own seed
    assert [d.heads for d in control_plans(targets, 30, 9, 2, seed=8)] == [d.heads for d in draws[1:3]]
    for d in draws:
        assert d.mode == "ablate" and len(d.heads) == 3 == len(set(d.heads))
        assert not set(d.heads) & set(targets.heads)

    label = HeadPlan("label", true_heads=((14, 0), (15, 3)), false_heads=((20, 2),), up=2.0, down=0.0)
    for d in control_plans(label, 30, 9, draws=4, seed=0):
        assert (len(d.true_heads), len(d.false_heads)) == (2, 1)
        assert not set(d.true_heads) & set(d.false_heads)
        assert not set(d.all_heads) & set(label.all_heads)
        assert (d.up, d.down) == (2.0, 0.0)

    # 8 heads in all: 5 targets leave 3, too few for a disjoint control of 5
    with pytest.raises(GARConfigError, match="cannot draw 5 control heads"):
        control_plans(HeadPlan("ablate", heads=tuple((l, h) for l in range(2) for h in range(4))[:5]), 2, 4, 1)
    with pytest.raises(GARConfigError, match="at least 1"):
        control_plans(targets, 30, 9, draws=0)
    with pytest.raises(GARConfigError, match="out of range"):
        check_heads([(2, 0)], N_LAYERS, N_HEADS)


@pytest.mark.unit
def test_resolve_plan_from_spec_and_dir(tmp_path):
    plan, src = resolve_plan(InterveneArgs(model="m", mode="scale", out="o", heads="15:3;14:0;14:0", factor=3.0))
    assert plan.heads == ((14, 0), (15, 3)) and plan.factor == 3.0 and src["heads"] == "spec"
    d = tmp_path / "heads"
    d.mkdir()
    (d / "heads.json").write_text(json.dumps({"true_heads": [[1, 2], [0, 3]], "false_heads": [[1, 0]]}))
    np.savez(d / "directions.npz", mean=np.zeros((N_LAYERS, N_HEADS, 8), dtype=np.float32))
    plan, _ = resolve_plan(InterveneArgs(model="m", mode="label", out="o", heads=str(d)))
    assert (plan.true_heads, plan.false_heads) == (((0, 3), (1, 2)), ((1, 0),))
    plan, _ = resolve_plan(InterveneArgs(model="m", mode="ablate", out="o", heads=str(d / "heads.json"),
                                         which="false"))
    assert plan.heads == ((1, 0),)
    plan, _ = resolve_plan(InterveneArgs(model="m", mode="ablate", out="o", heads=str(d)))
    assert plan.heads == ((0, 3), (1, 0), (1, 2))
    plan, _ = resolve_plan(InterveneArgs(model="m", mode="label", out="o", true_heads="0:1", false_heads="1:1",
                                         up=3.0, down=0.5))
    assert (plan.true_heads, plan.false_heads, plan.up, plan.down) == (((0, 1),), ((1, 1),), 3.0, 0.5)


# ------------------------------------------------------------------------------------------
# scoring


@pytest.mark.unit
def test_accuracy_matches_direct_computation(enc):
    import torch

    model = tiny_model("llama")
    assert len({len(i) for i in enc.ids}) > 1  # the batches really are padded
    ly, ln = yes_no_logits(model, enc, batch_size=3)
    correct, margin = correct_and_margin(ly, ln, enc.gold_yes)
    for i, ids in enumerate(enc.ids):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        y, n = float(logits[enc.yes[i]]), float(logits[enc.no[i]])
        assert ly[i] == pytest.approx(y, abs=1e-4) and ln[i] == pytest.approx(n, abs=1e-4)
        gold, other = (y, n) if enc.gold_yes[i] else (n, y)
        assert margin[i] == pytest.approx(gold - other, abs=2e-4)
        assert bool(correct[i]) == (y >= n if enc.gold_yes[i] else n > y)
    tok = bpe_tokenizer()
    assert {tok.decode([t]) for t in enc.yes} == {" Yes"} and {tok.decode([t]) for t in enc.no} == {" No"}
    assert sum(enc.gold_yes) == len(enc) // 2  # label-balanced choice
    # ties count as Yes (lm-eval's argmax picks the first choice)
    c, m = correct_and_margin([1.0, 1.0], [1.0, 1.0], [True, False])
    assert list(c) == [True, False] and list(m) == [0.0, 0.0]


@pytest.mark.unit
def test_label_mode_unit_factors_is_baseline_and_zero_factors_is_ablation(enc):
    model = tiny_model("llama")
    base = run_arm(model, enc, None, batch_size=4)
    unit = run_arm(model, enc, HeadPlan("label", true_heads=((0, 1), (1, 2)), false_heads=((1, 0),), up=1.0,
                                        down=1.0), batch_size=4)
    assert np.array_equal(unit[1], base[1]) and np.array_equal(unit[0], base[0])
    zero = run_arm(model, enc, HeadPlan("label", true_heads=((0, 1), (1, 2)), false_heads=((1, 0),), up=0.0,
                                        down=0.0), batch_size=4)
    ablate = run_arm(model, enc, HeadPlan("ablate", heads=((0, 1), (1, 0), (1, 2))), batch_size=4)
    np.testing.assert_allclose(zero[1], ablate[1], atol=1e-6)
    assert not np.allclose(ablate[1], base[1])
    # the label decides which set is strengthened: swapping True and False heads changes the result
    fwd = run_arm(model, enc, HeadPlan("label", true_heads=((0, 1),), false_heads=((1, 0),), up=3.0, down=0.0), batch_size=4)
    rev = run_arm(model, enc, HeadPlan("label", true_heads=((1, 0),), false_heads=((0, 1),), up=3.0, down=0.0), batch_size=4)
    assert not np.allclose(fwd[1], rev[1])


# ------------------------------------------------------------------------------------------
# the report


@pytest.mark.integration
def test_report_has_both_arms_per_task(tiny_dir, tmp_path):
    out = tmp_path / "iv"
    args = InterveneArgs(model=str(tiny_dir), mode="mean", out=str(out), heads="0:1;1:3", tasks=TASKS, n=4,
                         batch_size=3, random_draws=3, seed=5)
    info = run_intervene(args)
    assert sorted(p.name for p in out.iterdir()) == [".gar_manifest.json", "intervene.json", "intervene.md"]
    saved = json.loads((out / "intervene.json").read_text())
    assert saved["targeted_heads"] == {"heads": [[0, 1], [1, 3]]}
    assert [d["seed"] for d in saved["random_draws"]] == [5, 6, 7]
    for d in saved["random_draws"]:
        assert len(d["heads"]) == 2 and not {tuple(h) for h in d["heads"]} & {(0, 1), (1, 3)}
    assert [r["task"] for r in saved["tasks"]] == ["gar_cls_nr0_gender_kind", "gar_cls_nr1_gender_city"]
    for r in [*saved["tasks"], saved["overall"]]:
        for key in ("acc", "metric"):
            assert isinstance(r["baseline"][key], float) and isinstance(r["targeted"][key], float)
            rd = r["random"][key]
            assert len(rd["per_draw"]) == 3
            assert rd["mean"] == pytest.approx(np.mean(rd["per_draw"]))
            assert rd["std"] == pytest.approx(np.std(rd["per_draw"], ddof=1))
            assert rd["min"] <= rd["mean"] <= rd["max"]
            assert r["delta"][key] == pytest.approx(r["targeted"][key] - rd["mean"])
    assert [r["n"] for r in saved["tasks"]] == [4, 4] and saved["overall"]["n"] == 8
    # overall pools the records: with equal task sizes it is the mean of the task rows
    assert saved["overall"]["baseline"]["metric"] == pytest.approx(np.mean([r["baseline"]["metric"] for r in saved["tasks"]]))
    assert saved["means_source"].startswith("head_means") and saved["versions"]["torch"]
    md = (out / "intervene.md").read_text()
    assert md == info["markdown"]
    assert "| task | n | baseline | targeted | random mean ± std" in md
    for t in ("gar_cls_nr0_gender_kind", "gar_cls_nr1_gender_city", "**overall**"):
        assert md.count(f"| {t} | ") == 2  # accuracy and margin tables
    assert "0:1;1:3" in md


def _heads_dir(path, mean_shape):
    path.mkdir()
    (path / "heads.json").write_text(json.dumps({"true_heads": [[1, 2]], "false_heads": [[0, 3]]}))
    np.savez(path / "directions.npz", mean=np.full(mean_shape, 0.5, dtype=np.float32))
    return path


@pytest.mark.integration
def test_mean_mode_uses_the_heads_dirs_means(tiny_dir, tmp_path, capsys):
    d = _heads_dir(tmp_path / "heads", (N_LAYERS, N_HEADS, 8))
    info = run_intervene(InterveneArgs(model=str(tiny_dir), mode="mean", out=str(tmp_path / "a"), heads=str(d),
                                       which="true", tasks="gar_cls_nr1_gender_city", n=2, random_draws=1))
    assert info["targeted_heads"] == {"heads": [[1, 2]]} and "directions.npz" in info["means_source"]
    # the same, with those means given to the library directly
    import torch

    recs = choose_balanced(load_records("paper"), select_slices("gar_cls_nr1_gender_city"), n=2, seed=0).records
    enc = encode_cls(recs, bpe_tokenizer())
    _, margin = run_arm(tiny_model("llama"), enc, HeadPlan("mean", heads=((1, 2),)),
                        means=torch.full((N_LAYERS, N_HEADS, 8), 0.5))
    assert info["tasks"][0]["targeted"]["metric"] == pytest.approx(float(margin.mean()), abs=1e-6)

    bad = _heads_dir(tmp_path / "bad_heads", (N_LAYERS, N_HEADS, 4))
    rc, _, err = run(capsys, "intervene", "--model", tiny_dir, "--mode", "mean", "--heads", bad, "--tasks",
                     "gar_cls_nr1_gender_city", "--n", 2, "--out", tmp_path / "b")
    assert rc == 2 and "'mean' has shape (2, 4, 4)" in err and not (tmp_path / "b").exists()


@pytest.mark.e2e
def test_cli_smollm2_writes_both_arms(tmp_path, capsys):
    out = tmp_path / "smol"
    rc, stdout, err = run(capsys, "intervene", "--model", "smollm2", "--mode", "label", "--true-heads", "14:0;15:3",
                          "--false-heads", "20:2", "--tasks", "gar_cls_nr1_gender_city", "--n", 4, "--dtype",
                          "bfloat16", "--random-draws", 2, "--out", out, "-q")
    assert rc == 0, err
    saved = json.loads((out / "intervene.json").read_text())
    assert saved["n_layers"] == 30 and saved["n_heads"] == 9
    assert saved["targeted_heads"] == {"true_heads": [[14, 0], [15, 3]], "false_heads": [[20, 2]]}
    assert len(saved["random_draws"]) == 2
    row = saved["tasks"][0]
    assert row["task"] == "gar_cls_nr1_gender_city" and row["n"] == 4 and row["n_yes"] == 2
    assert row["targeted"]["metric"] != row["baseline"]["metric"]  # up 2 / down 0 moves the margin
    assert len(row["random"]["acc"]["per_draw"]) == 2
    assert "| gar_cls_nr1_gender_city | 4 |" in stdout and "| **overall** | 4 |" in stdout
    assert stdout == (out / "intervene.md").read_text()


@pytest.mark.integration
@pytest.mark.parametrize("extra, needle", [
    (["--mode", "zap", "--heads", "0:1"], "unknown intervention mode 'zap'"),
    (["--mode", "ablate", "--heads", "0x1"], "cannot read head '0x1'"),
    (["--mode", "ablate", "--heads", "5:0"], "out of range"),
    (["--mode", "label", "--heads", "0:1"], "label mode needs True and False heads"),
    (["--mode", "label"], "label mode needs"),
    (["--mode", "ablate", "--heads", "0:1", "--tasks", "nope"], "unknown task selector 'nope'"),
    (["--mode", "ablate", "--heads", "0:1", "--tasks", "gen"], "selects no cls task"),
    (["--mode", "ablate", "--heads", "0:1", "--random-draws", "0"], "--random-draws must be at least 1"),
    (["--mode", "ablate", "--heads", "0:0;0:1;0:2;0:3;1:0"], "cannot draw 5 control heads"),
    (["--mode", "scale", "--heads", "0:1"], "mode scale needs --factor"),
    (["--mode", "ablate", "--heads", "/no/such/dir"], "no such file or folder"),
    (["--mode", "label", "--true-heads", "0:1", "--false-heads", "0:1"], "both True and False heads"),
])
def test_bad_input_exits_2_and_writes_nothing(tiny_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "bad"
    rc, stdout, err = run(capsys, "intervene", "--model", tiny_dir, "--tasks", TASKS, "--n", 2, *extra,
                          "--out", out) if "--tasks" not in extra else run(
        capsys, "intervene", "--model", tiny_dir, "--n", 2, *extra, "--out", out)
    assert rc == 2, (rc, stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gar: error: ") and "Traceback" not in err
    assert needle in err, err
    assert not out.exists()
