"""scripts/train_organism.py end to end on a tiny shape and a sliver of the data: a run writes a
loadable model folder whose record matches its weights, and a second phase started from it with
``--init-from`` trains its comparison phase with retrieval kept (``--compare-keep``) and records
the chain of runs (the lineage) that a multi-phase organism is reproduced from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_organism.py"
TINY = ["--tokenizer-from", str(ROOT / "gar_tasks" / "data" / "organism"), "--n-per-task", "1", "--chunks", "1",
        "--gen-procs", "1", "--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--mlp", "64",
        "--warmup", "1", "--fact-repeats", "1", "--eval-every", "100", "--eval-n", "8", "--final-eval-n", "8"]


def train(tmp: Path, name: str, *argv: str) -> dict:
    r = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--work", str(tmp / f"work_{name}"),
                        "--out", str(tmp / name), *argv], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((tmp / name / "training_record.json").read_text())


def test_a_phase_from_a_trained_folder_records_the_lineage(tmp_path):
    import hashlib

    first = train(tmp_path, "a", "--steps", "2", "--no-drills")
    assert "lineage" not in first and first["steps_done"] == 2
    digest = hashlib.sha256((tmp_path / "a" / "model.safetensors").read_bytes()).hexdigest()
    assert first["weights_sha256"] == digest

    second = train(tmp_path, "b", "--steps", "3", "--init-from", str(tmp_path / "a"),
                   "--drill-forms", "at-key", "match", "--drill-compare", "3", "--compare-keep", "1.0")
    chain = second["lineage"]
    assert [e["name"] for e in chain] == ["a", "b"]
    assert chain[0]["weights_sha256"] == digest and chain[0]["command"] == first["command"]
    assert chain[1]["steps_done"] == 3
    first_phase, then_phase, compare = second["data"]["phases"]  # drill-first, drill-then, match
    assert first_phase["steps"] == then_phase["steps"] == 0 and compare["steps"] == 3
    at_key = then_phase["sequences"]  # the retrieval drills
    match = second["data"]["association_drills"] - at_key
    assert at_key > 0 and match > 0
    assert compare["sequences"] == 2 * match  # the match drills and as many retrieval drills (--compare-keep 1.0)
