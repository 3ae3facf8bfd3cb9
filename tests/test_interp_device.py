"""The device path of the interp core without a GPU: ``--device cpu`` and ``--device auto`` (no GPU
visible: plain CPU) give the same scores, bit for bit, and those of the code before the core refactor
(recorded in ``tests/data/interp_golden_f32.npz`` by ``tests/interp_golden.py`` at commit 3cb0bed) to
float32 rounding, for every interp command; and the loader's device logic (device maps, checks, input
device). The recording is compared within float32 rounding, not bit for bit: another CPU's kernels
(AVX-512 or not, Intel or AMD) round float32 sums differently (seen: 1e-7 on scores of 0.1)."""

from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import offline_one_thread  # noqa: F401 (autouse fixture)
from gar_tasks.errors import GARConfigError
from interp.core import loader
from interp_golden import GOLDEN, run_all


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.integration
def test_scores_as_before_on_every_device_name(tmp_path_factory, golden):
    import torch

    assert not torch.cuda.is_available()  # this checks the CPU path (auto without a GPU is plain CPU)
    cpu = run_all(tmp_path_factory.mktemp("cpu"), ["--device", "cpu"])
    auto = run_all(tmp_path_factory.mktemp("auto"), ["--device", "auto"])
    assert sorted(cpu) == sorted(auto) == sorted(golden)
    assert len(golden) > 300 and {k.split(".")[0] for k in golden} == {
        "patch", "heads", "intervene_ablate", "intervene_label", "intervene_mean", "probe"}
    assert [k for k in golden if not np.array_equal(cpu[k], auto[k], equal_nan=True)] == []

    def same(a, b) -> bool:
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind != "f" or b.dtype.kind != "f":
            return a.shape == b.shape and bool((a == b).all())
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))

    assert [k for k in golden if not same(cpu[k], golden[k])] == []


@pytest.mark.unit
def test_device_maps(monkeypatch):
    import torch

    assert loader.device_map("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert loader.device_map("auto") is None  # no GPU: a plain CPU load, as --device cpu
    with pytest.raises(GARConfigError, match="0 CUDA GPU"):
        loader.device_map("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert loader.device_map("auto") == "auto"  # accelerate spreads the model over both
    assert loader.device_map("cuda") == {"": "cuda"} and loader.device_map("cuda:1") == {"": "cuda:1"}
    with pytest.raises(GARConfigError, match="cuda:2"):
        loader.device_map("cuda:2")
    for bad in ("gpu", "cuda:x", "CPU", "", "mps"):
        with pytest.raises(GARConfigError, match="device must be"):
            loader.check_device(bad)
    with pytest.raises(GARConfigError, match="dtype must be"):
        loader.check_dtype("float64")
    assert loader.check_dtype("float16") == "float16"


@pytest.mark.unit
def test_input_device_is_the_embeddings():
    from tiny_models import tiny_model

    from interp.core.model import as_nnsight
    from tiny_tokenizers import bpe_tokenizer

    model = tiny_model("llama")
    assert loader.input_device(model) == model.get_input_embeddings().weight.device
    assert loader.input_device(as_nnsight(model, bpe_tokenizer())) == model.get_input_embeddings().weight.device


@pytest.mark.integration
def test_loader_names_and_dtypes(tiny_dir):
    import torch

    m = loader.load_model(str(tiny_dir), "float16", "auto", nnsight=False)
    assert m.hf is m.model and m.hf.dtype == torch.float16 and m.sites.shape == (2, 4)
    assert m.tokenizer.is_fast and not m.hf.training
    m = loader.load_model(str(tiny_dir), "bfloat16", "cpu", attn_implementation="eager")
    assert type(m.model).__name__ == "TransformersModel" and m.hf.dtype == torch.bfloat16
    assert m.hf.config._attn_implementation == "eager"
    assert loader.config_dtype(str(tiny_dir)) in loader.DTYPES
    with pytest.raises(GARConfigError, match="neither a local model folder"):
        loader.resolve_model(str(tiny_dir / "missing"))
    with pytest.raises(GARConfigError, match="--remote needs a Hub model id"):
        loader.resolve_model(str(tiny_dir), remote=True)


@pytest.mark.unit
def test_every_embedded_model_name_resolves(monkeypatch, tmp_path):
    """Any name of the embedded registry is a model name (not only 'smollm2')."""
    from gar_tasks import models

    monkeypatch.setitem(models.EMBEDDED_MODELS, "tinyorg", models.EMBEDDED_MODELS["smollm2"])
    monkeypatch.setattr(models, "embedded_model_path", lambda name="smollm2", **kw: tmp_path / f"{name}-folder")
    r = loader.resolve_model("tinyorg")
    assert r.path == str(tmp_path / "tinyorg-folder") and r.local_only and r.desc.startswith("tinyorg (")
    assert "tinyorg" in loader.embedded_names()
    loader.check_model_args("tinyorg")
