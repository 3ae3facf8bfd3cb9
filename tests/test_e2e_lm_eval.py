"""End to end through the real `lm_eval` console script, from outside the repo, no --include_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
GROUPS = {"gar", "gar_gen", "gar_cls", "gar_gen_nr0", "gar_gen_nr1", "gar_gen_nr2",
          "gar_cls_nr0", "gar_cls_nr1", "gar_cls_nr2"}


def _lm_eval() -> str:
    exe = shutil.which("lm_eval", path=str(BIN)) or shutil.which("lm_eval")
    assert exe, "the lm_eval console script is not installed"
    return exe


def _offline_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("GAR_NO_LM_EVAL_HOOK", None)
    return env


def run_lm_eval(model_dir: Path, cwd: Path, *extra: str) -> dict:
    out = cwd / "results"
    cmd = [_lm_eval(), "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--tasks", "gar", "--limit", "2", "--batch_size", "8", "--output_path", str(out), *extra]
    res = subprocess.run(cmd, cwd=cwd, env=_offline_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert "--include_path" not in " ".join(cmd)
    files = sorted(out.rglob("results_*.json"))
    assert files, res.stderr[-2000:]
    return json.loads(files[-1].read_text())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama with an offline-trained BPE tokenizer, saved as a HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_tokenizers import bpe_tokenizer

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _check_results(results: dict) -> None:
    assert GROUPS <= set(results["groups"]), sorted(GROUPS - set(results["groups"]))
    for name in GROUPS:
        acc = results["groups"][name]["acc,none"]
        assert 0.0 <= acc <= 1.0
    leaves = [k for k in results["results"] if k.startswith("gar_") and "_nr" in k and k.count("_") >= 4]
    assert len(leaves) == 42
    assert all(results["n-samples"][k]["effective"] == 2 for k in leaves)


def test_tiny_random_llama_through_the_lm_eval_cli(tiny_llama, tmp_path):
    _check_results(run_lm_eval(tiny_llama, tmp_path))


def test_smollm2_through_the_lm_eval_cli(tmp_path):
    from gar_tasks.models import embedded_model_path

    results = run_lm_eval(embedded_model_path(), tmp_path)
    _check_results(results)
    # a real model is not at chance everywhere: it solves some n_r = 0 generation items
    assert results["groups"]["gar_gen_nr0"]["acc,none"] > 0.0
