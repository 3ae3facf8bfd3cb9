"""``gar organism train`` keeps the command-line contract before any work: a bad option, a shape
the model cannot take, a user's folder as --out, a checkpoint of another run, each is one
``gar: error:`` line with exit code 2, and nothing is generated, written or deleted. The shipped
recipe (``gar_tasks/organism/recipe.json``) is the shipped organism's recorded lineage, run for run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from gar_tasks.cli import main
from gar_tasks.errors import GARConfigError
from gar_tasks.models import embedded_model_path
from gar_tasks.organism import options
from gar_tasks.organism.recipe import MANIFEST, load_recipe

pytestmark = pytest.mark.unit

TINY = ["--n-per-task", "1", "--chunks", "1", "--gen-procs", "1", "--d-model", "32", "--layers", "2",
        "--heads", "4", "--kv-heads", "2", "--mlp", "64", "--steps", "1", "--fact-repeats", "0"]


def refused(capsys, tmp_path: Path, *argv: str) -> str:
    """The one error line of ``gar organism train ARGV`` (work and out under ``tmp_path``),
    after checking that it changed nothing under ``tmp_path``."""
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    code = main(["organism", "train", "--work", str(tmp_path / "work"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gar: error: "), err
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    return err[0]


@pytest.mark.parametrize("argv, message", [
    (["--steps", "-5"], "--steps must be at least 1 (1..10,000,000), got -5"),
    (["--steps", "0"], "--steps must be at least 1 (1..10,000,000), got 0"),
    (["--lr", "0"], "--lr must be above 0 and at most 1, got 0"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--drill-compare", "-1"], "--drill-compare must be at least 0 (0..10,000,000), got -1"),
    (["--d-model", "30"], "--d-model 30 is not a multiple of --heads 4"),
    (["--d-model", "36", "--heads", "12", "--kv-heads", "4"], "rotary position embeddings need an even head size"),
    (["--kv-heads", "3"], "--heads 4 is not a multiple of --kv-heads 3"),
    (["--dtype", "float8"], "invalid choice: 'float8'"),
])
def test_a_bad_option_is_one_line_before_any_data(capsys, tmp_path, argv, message):
    line = refused(capsys, tmp_path, *TINY, *argv, "--out", str(tmp_path / "m"))
    assert message in line
    assert not (tmp_path / "work").exists() and not (tmp_path / "m").exists()


def test_out_is_required(capsys, tmp_path):
    assert "--out is required" in refused(capsys, tmp_path, *TINY)


def test_a_user_folder_as_out_is_refused_and_kept(capsys, tmp_path):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_text("a user's file")
    line = refused(capsys, tmp_path, *TINY, "--out", str(user))
    assert "a folder no organism run wrote" in line and (user / "cat.jpg").read_text() == "a user's file"
    (tmp_path / "file").write_text("x")
    assert "not a folder" in refused(capsys, tmp_path, *TINY, "--out", str(tmp_path / "file"))


@pytest.mark.parametrize("saved, message", [
    ({"lr": 0.003, "seed": 1}, "trained with seed 1, not seed 0"),
    ({"d_model": 64, "mlp": 64}, "trained with d_model 64, not d_model 32"),
])
def test_resume_refuses_a_checkpoint_of_other_arguments(capsys, tmp_path, saved, message):
    import torch

    shape = {"lr": 0.003, "seed": 0, "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2, "mlp": 64}
    (tmp_path / "work").mkdir()
    torch.save({"args": shape | saved, "step": 5, "wall_s": 1.0}, tmp_path / "work" / "checkpoint.pt")
    line = refused(capsys, tmp_path, *TINY, "--resume", "--out", str(tmp_path / "m"))
    assert message in line


def test_a_recipe_takes_no_training_options_and_must_exist(capsys, tmp_path):
    assert "--steps goes only without it" in refused(capsys, tmp_path, "--recipe", "shipped", "--steps", "5",
                                                     "--out", str(tmp_path / "o"))
    assert "recipe nope.json" in refused(capsys, tmp_path, "--recipe", "nope.json", "--out", str(tmp_path / "o"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"phases": [{"name": "a", "args": ["--steps", "1", "--out", "x"]}]}))
    with pytest.raises(GARConfigError, match="sets --out, which the replay chooses"):
        load_recipe(bad)
    bad.write_text(json.dumps({"phases": [{"name": "a", "args": ["--steps", "-1"]}]}))
    assert f"recipe {bad}, phase a: argument --steps: must be at least 1 (1..10,000,000), got -1" in refused(capsys, tmp_path, "--recipe", str(bad),
                                                          "--out", str(tmp_path / "o"))
    user = tmp_path / "o"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert f"no {MANIFEST} in it" in refused(capsys, tmp_path, "--recipe", "shipped", "--out", str(user))


def test_the_shipped_recipe_is_the_recorded_lineage_run_for_run():
    """Each phase of recipe.json parses to the options of the same run of the shipped organism's
    lineage (the recorded command without the folders a replay chooses, with the options the
    phase lists as added since), on the machine it records; the last run's weights are shipped."""
    folder = embedded_model_path("organism")
    record = json.loads((folder / "training_record.json").read_text())
    recipe = load_recipe("shipped")
    assert [p["name"] for p in recipe["phases"]] == [e["name"] for e in record["lineage"]]
    assert record["lineage"][-1]["weights_sha256"] == record["weights_sha256"]

    def parsed(argv: list[str]) -> dict:
        args = vars(options.parse_train_args([*argv, "--out", "x"]))
        return {k: v for k, v in args.items() if k not in options.MANAGED}

    for phase, run in zip(recipe["phases"], record["lineage"]):
        words = shlex.split(run["command"])
        recorded = words[words.index("scripts/train_organism.py") + 1:]
        init = recorded.index("--init-from") if "--init-from" in recorded else None
        if init is not None:  # checked apart: the folder a replay chooses, so not parsed
            del recorded[init:init + 2]
        args = [a.replace("{organism}", "gar_tasks/data/organism") for a in phase["args"]]
        assert parsed(args) == parsed(recorded + phase.get("added_to_recorded", [])), phase["name"]
        assert phase["ran_on"] == run["machine"]
        assert (init is None) == (phase is recipe["phases"][0])


def test_a_gpu_run_without_a_gpu_stops_before_any_work(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "torch sees 0 CUDA device(s) here" in refused(capsys, tmp_path, *TINY, "--device", "cuda",
                                                         "--out", str(tmp_path / "m"))
    line = refused(capsys, tmp_path, "--recipe", "shipped", "--out", str(tmp_path / "o"))
    assert "recipe shipped, phase v3: device cuda" in line  # the lineage's first runs were on a GPU
    assert "not cpu, cuda" in refused(capsys, tmp_path, *TINY, "--device", "tpu", "--out", str(tmp_path / "m"))


def test_the_shipped_recipe_replays_as_a_chain_of_runs(tmp_path):
    """The replay of recipe.json, with a stand-in for training: every phase gets the recorded
    options, the shipped tokenizer, its own folders, the previous phase's folder as its start and
    the device asked for; the manifest names each phase's device and machine as it goes."""
    import shutil

    from gar_tasks.organism.recipe import replay

    calls = []

    def fake_train(args, command):
        calls.append((args, command))
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        rec = {"model": "organism", "device": args.device, "machine": "stand-in",
               "weights_sha256": f"sha-{args.out.name}", "steps_done": args.steps}
        (args.out / "training_record.json").write_text(json.dumps(rec))
        (args.out / "config.json").write_text("{}")
        return rec

    out = tmp_path / "out"
    manifest = replay(load_recipe("shipped"), out, tmp_path / "work", fake_train, device="cpu", log=lambda s: None)
    names = [p["name"] for p in load_recipe("shipped")["phases"]]
    assert [a.out for a, _ in calls] == [out / n for n in names]
    assert [a.work for a, _ in calls] == [tmp_path / "work" / n for n in names]
    assert [a.init_from for a, _ in calls] == [None] + [out / n for n in names[:-1]]
    assert all(a.tokenizer_from == embedded_model_path("organism") and a.device == "cpu" for a, _ in calls)
    assert [a.steps for a, _ in calls] == [1000000, 1000000, 8000, 12000]
    assert calls[0][0].compare_mixed and not calls[1][0].compare_mixed
    assert all(cmd.startswith("gar organism train ") for _, cmd in calls)
    assert [(p["name"], p["status"], p["device"], p["recorded_on"][:6]) for p in manifest["phases"]] == [
        ("v3", "done", "cpu", "NVIDIA"), ("s1", "done", "cpu", "NVIDIA"), ("e5b", "done", "cpu", "2 core"),
        ("e5c", "done", "cpu", "2 core")]
    assert json.loads((out / MANIFEST).read_text()) == manifest
    calls.clear()
    replay(load_recipe("shipped"), out, tmp_path / "work", fake_train, device="cpu", log=lambda s: None)
    assert calls == []  # every phase done: nothing runs again
    # a phase whose folder was lost runs again, and so does every phase after it (new parent weights)
    shutil.rmtree(out / "s1")
    replay(load_recipe("shipped"), out, tmp_path / "work", fake_train, device="cpu", log=lambda s: None)
    assert [a.out.name for a, _ in calls] == ["s1", "e5b", "e5c"]
