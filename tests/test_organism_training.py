"""The organism's training end to end on a tiny shape and a sliver of the data (``gar organism
train``): a recipe of two phases replays into one folder whose manifest says where each phase ran,
the second phase starts from the first's weights, trains its comparison phase with retrieval kept
(``--compare-keep``) and records the lineage; a single run replaces only a folder of its own and
leaves a user's folders as they are."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gar_tasks.cli import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--tokenizer-from", "{organism}", "--n-per-task", "1", "--chunks", "1",
        "--gen-procs", "1", "--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--mlp", "64",
        "--warmup", "1", "--fact-repeats", "1", "--eval-every", "100", "--eval-n", "8", "--final-eval-n", "8"]


def test_a_tiny_recipe_replays_phase_by_phase_and_records_the_lineage(tmp_path, capsys):
    recipe = {"name": "tiny", "phases": [
        {"name": "a", "args": [*TINY, "--steps", "2", "--no-drills"]},
        {"name": "b", "args": [*TINY, "--steps", "3", "--drill-forms", "at-key", "match",
                               "--drill-compare", "3", "--compare-keep", "1.0"]}]}
    (tmp_path / "tiny.json").write_text(json.dumps(recipe))
    out = tmp_path / "out"
    argv = ["organism", "train", "--recipe", str(tmp_path / "tiny.json"), "--out", str(out),
            "--work", str(tmp_path / "work")]
    assert main(argv) == 0, capsys.readouterr().err

    first = json.loads((out / "a" / "training_record.json").read_text())
    second = json.loads((out / "b" / "training_record.json").read_text())
    assert "lineage" not in first and first["steps_done"] == 2 and first["device"] == "cpu"
    digest = hashlib.sha256((out / "a" / "model.safetensors").read_bytes()).hexdigest()
    assert first["weights_sha256"] == digest
    chain = second["lineage"]
    assert [e["name"] for e in chain] == ["a", "b"]
    assert chain[0]["weights_sha256"] == digest and chain[0]["command"] == first["command"]
    assert chain[1]["steps_done"] == 3 and [e["device"] for e in chain] == ["cpu", "cpu"]
    assert f"--init-from {out / 'a'}" in second["command"]
    first_phase, then_phase, compare = second["data"]["phases"]  # drill-first, drill-then, match
    assert first_phase["steps"] == then_phase["steps"] == 0 and compare["steps"] == 3
    at_key = then_phase["sequences"]  # the retrieval drills
    match = second["data"]["association_drills"] - at_key
    assert at_key > 0 and match > 0
    assert compare["sequences"] == 2 * match  # the match drills and as many retrieval drills (--compare-keep 1.0)

    manifest = json.loads((out / "replay.json").read_text())
    assert [(p["name"], p["status"], p["device"]) for p in manifest["phases"]] == [("a", "done", "cpu"),
                                                                                  ("b", "done", "cpu")]
    assert manifest["phases"][1]["weights_sha256"] == second["weights_sha256"]
    # a second replay into the same folder keeps the phases already done
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done before") == 2
    assert json.loads((out / "b" / "training_record.json").read_text()) == second


def test_a_run_replaces_only_its_own_folder_and_checks_a_resume(tmp_path, capsys):
    """Its own earlier folder (an organism record) is replaced, a user's ``OUT.tmp`` and a user's
    folder given as --out are left alone, and its checkpoint resumes only with its lr and shape."""
    organism = str(ROOT / "gar_tasks" / "data" / "organism")
    tiny = [a.replace("{organism}", organism) for a in TINY]
    out, work = tmp_path / "m", tmp_path / "work"
    out.mkdir()
    (out / "training_record.json").write_text(json.dumps({"model": "organism"}))
    (out / "stale.bin").write_text("an earlier run's file")
    (tmp_path / "m.tmp").mkdir()
    (tmp_path / "m.tmp" / "mine.txt").write_text("a user's file")
    assert main(["organism", "train", *tiny, "--steps", "2", "--no-drills", "--work", str(work),
                 "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "stale.bin").exists()
    assert (tmp_path / "m.tmp" / "mine.txt").read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.tmp", "work"]  # no temporary folder left
    capsys.readouterr()

    code = main(["organism", "train", *tiny, "--steps", "4", "--no-drills", "--work", str(work),
                 "--out", str(out), "--resume", "--lr", "0.01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("gar: error: the checkpoint in") and "lr 0.003, not lr 0.01" in err[0]
