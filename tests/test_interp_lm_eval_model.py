"""The ``gar-hf-intervened`` lm-eval model type: registered for the plain ``lm_eval`` CLI, and its
loglikelihoods move when heads are ablated and do not with scale 1.0."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_models import N_HEADS, one_thread, tiny_llama, tokenizer

REQUESTS = [("The capital of France is", " Paris"), ("Is it true that cats bark? Answer:", " No")]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


def _loglikelihoods(lm) -> list[float]:
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(REQUESTS)]
    with one_thread():
        return [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]


@pytest.mark.integration
def test_registered_lazily_in_lm_eval_registry():
    # the way lm-eval's CLI looks models up: get_model on a fresh (empty) registry, built-ins kept
    code = ("import sys; from lm_eval.api.registry import get_model, model_registry as r; "
            "c = get_model('gar-hf-intervened'); assert 'hf' in r and 'dummy' in r; "
            "assert 'interp.lm_eval_model' in sys.modules; "
            "from lm_eval.models.huggingface import HFLM; assert issubclass(c, HFLM); "
            "assert get_model('hf') is HFLM; print(c.__name__)")
    lazy = ("import sys, lm_eval.models; from lm_eval.api.registry import model_registry as r; "
            "assert 'gar-hf-intervened' in r and 'torch' not in sys.modules; "
            "assert 'interp.lm_eval_model' not in sys.modules; print('lazy')")
    env = dict(os.environ)
    env.pop("GAR_NO_LM_EVAL_HOOK", None)
    res = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "InterventionHFLM" in res.stdout, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-c", lazy], cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "lazy" in res.stdout, res.stderr[-2000:]


@pytest.mark.integration
def test_loglikelihoods_vs_plain_hflm(llama_dir):
    from lm_eval.models.huggingface import HFLM

    from interp.lm_eval_model import InterventionHFLM

    common = dict(pretrained=str(llama_dir), dtype="float32", device="cpu", batch_size=2)
    with one_thread():
        plain = _loglikelihoods(HFLM(**common))
        same = _loglikelihoods(InterventionHFLM(heads="0:0;1:2", mode="scale", factor=1.0, **common))
        ablated_lm = InterventionHFLM.create_from_arg_string(
            f"pretrained={llama_dir},heads=0:0;0:1;1:3,mode=ablate,dtype=float32,device=cpu,batch_size=2")
        ablated = _loglikelihoods(ablated_lm)
    assert same == pytest.approx(plain, abs=1e-5)
    assert all(abs(a - b) > 1e-4 for a, b in zip(ablated, plain))
    assert ablated_lm.gar_heads == [(0, 0), (0, 1), (1, 3)]
    assert ablated_lm.get_model_info()["gar_intervention"]["mode"] == "ablate"


@pytest.mark.integration
def test_rejects_label_mode_and_missing_heads(llama_dir):
    from gar_tasks.errors import GARConfigError
    from interp.lm_eval_model import InterventionHFLM

    for kwargs in ({"heads": "0:0", "mode": "label"}, {"heads": None}, {"heads": 0.1}, {"heads": "0:0", "mode": "mean"}):
        with pytest.raises(GARConfigError):
            InterventionHFLM(pretrained=str(llama_dir), **kwargs)


@pytest.mark.e2e
def test_lm_eval_cli_runs_intervened_model(llama_dir, tmp_path):
    exe = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
    assert exe, "the lm_eval console script is not installed"
    out = tmp_path / "results"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("GAR_NO_LM_EVAL_HOOK", None)
    cmd = [exe, "--model", "gar-hf-intervened", "--model_args",
           f"pretrained={llama_dir},heads=0:1;1:{N_HEADS - 1},mode=ablate,dtype=float32",
           "--tasks", "gar_cls", "--limit", "1", "--batch_size", "4", "--device", "cpu", "--output_path", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    files = sorted(out.rglob("results_*.json"))
    assert files, res.stderr[-2000:]
    data = json.loads(files[-1].read_text())
    leaves = [t for t in data["results"] if re.fullmatch(r"gar_cls_nr\d_\w+", t)]
    assert "gar_cls" in data["groups"] and len(leaves) == 21  # every cls leaf of the paper config
    assert all(data["n-samples"][t]["effective"] == 1 for t in leaves)
    assert data["config"]["model"] == "gar-hf-intervened"
    assert data["config"]["gar_intervention"]["heads"] == [[0, 1], [1, N_HEADS - 1]]


@pytest.mark.integration
def test_ndif_model_gives_the_hf_models_loglikelihoods(llama_dir):
    """``gar-ndif`` (its traced code through nnsight's serialise/deserialise path, ``remote=local``)
    scores every request as lm-eval's ``hf`` model does, in batches of mixed lengths, on a cls-like
    choice, a multi-token continuation and an empty context; its registry entry is lazy."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    from interp.lm_eval_remote import NDIFLM

    pairs = REQUESTS + [("Is it true that cats bark? Answer:", " Yes"), ("", "Hello there"),
                        ("A long context that goes on and on about nothing in particular, then", " stops here now")]
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    with one_thread():
        want = HFLM(pretrained=str(llama_dir), dtype="float32", device="cpu", batch_size=2).loglikelihood(
            reqs, disable_tqdm=True)
        ndif = NDIFLM(pretrained=str(llama_dir), remote="local", batch_size=2)
        got = ndif.loglikelihood(reqs, disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in want]
    for (ll, _), (ref, _) in zip(got, want):
        assert ll == pytest.approx(ref, rel=1e-5, abs=1e-5)
    assert len({round(ll, 3) for ll, _ in got}) == len(pairs)  # distinct scores: nothing was mixed up
    assert get_model("gar-ndif") is NDIFLM
    with pytest.raises(Exception, match="scores log-likelihoods"):
        ndif.generate_until([])
