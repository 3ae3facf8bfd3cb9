"""The prepared GPU check runs end to end (``--device cpu``: CI's smoke test of the script itself)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_on_the_cpu(tmp_path):
    out = tmp_path / "device_check.json"
    r = subprocess.run(["bash", str(ROOT / "scripts/device_check.sh"), "--device", "cpu", "--models", "organism",
                        "--limit", "2", "--n", "4", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["failed"] == [] and rep["env"]["device"] == "cpu"
    org = rep["models"]["organism"]
    assert org["lm_eval"]["acc"]["gar_v1"] > 0.6  # the organism solves GAR (a few documents per leaf)
    for cmd in ("patch", "heads", "circuit"):
        e = org[cmd]
        assert e["ok"] is True and "error" not in e, (cmd, e)
        assert e["max_rel_diff_float32"] and max(e["max_rel_diff_float32"].values()) <= 1e-6, cmd
        assert min(e["spearman_bfloat16_vs_cpu_float32"].values()) > 0.5, cmd  # bf16 keeps the ranking
        assert e["cpu_float32"]["wall_s"] > 0 and e["device_bfloat16"]["wall_s"] > 0
