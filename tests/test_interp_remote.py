"""The remote (NDIF) path without a server: ``remote="local"`` runs it offline; bad requests fail
before any work; the server's answers become one line.

``remote="local"`` makes nnsight serialise the traced block exactly as for NDIF, deserialise it
with every non-installed module hidden (as on the server), and run it here; so a pass means the
block ships: only torch, envoys and plain values cross. The traced paths of the commands that use
plain hooks locally (``gar intervene``, ``gar probe``) are checked against those hooks here; the
real server is exercised by ``tests/test_e2e_ndif.py``.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from gar_tasks.errors import GARConfigError
from interp.core.encode import encode_cls
from interp.core.remote import GARRemoteError, key_problem, preflight, server_errors
from interp.core.select import choose_balanced, choose_twins, load_records, select_slices
from interp.heads import head_effects
from interp.intervene import head_means, traced_head_means
from interp.intervene_report import HeadPlan, run_arm, traced_arms
from interp.core.model import as_nnsight, check_remote
from interp.pairs import make_pairs
from interp.patching import attribution_scores, exact_patch_scores
from interp.probe import batched_head_features, snli_span, traced_head_features
from tiny_models import BUILDERS, one_thread_module, tiny_model  # noqa: F401 (autouse fixture)
from tiny_tokenizers import bpe_tokenizer, gar_records

pytestmark = pytest.mark.unit

SECRET = "ndif-test-key-do-not-print-0123456789"
PUBLIC = "https://api.ndif.us"
SELF_HOSTED = "http://127.0.0.1:18801"
CLS_TASKS = "gar_cls_nr1_gender_city,gar_cls_nr0_gender_kind"


@pytest.fixture(scope="module")
def pairs():
    full = make_pairs(gar_records("paper")[:200], bpe_tokenizer())
    return full.subset(sorted(range(len(full)), key=lambda i: full[i].length)[:5])


@pytest.fixture(scope="module")
def enc():
    sel = choose_balanced(load_records("paper"), select_slices(CLS_TASKS), n=4, seed=0)
    return encode_cls(sel.records, bpe_tokenizer(), sel.task_index, sel.tasks)


@pytest.fixture
def public_no_key(monkeypatch):
    """The public service as the configured host, and no key anywhere."""
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    monkeypatch.setattr(CONFIG.API, "HOST", PUBLIC)


def _hub_named(arch: str):
    """A tiny local model that claims to come from a Hub id (never contacted)."""
    model = BUILDERS[arch](seed=0)
    model.config._name_or_path = "tiny-org/tiny-" + arch
    model.name_or_path = "tiny-org/tiny-" + arch
    return as_nnsight(model, bpe_tokenizer())


def _shipped(monkeypatch) -> list:
    """Counts the requests that went through nnsight's serialise/deserialise backend."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    shipped = []
    real_call = LocalSimulationBackend.__call__
    monkeypatch.setattr(LocalSimulationBackend, "__call__",
                        lambda self, tracer: (shipped.append(1), real_call(self, tracer))[1])
    return shipped


# ------------------------------------------------------------------------------------------
# the traced code ships and gives the local numbers


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_local_remote_gives_the_same_scores(arch, pairs, monkeypatch):
    shipped = _shipped(monkeypatch)
    model = as_nnsight(tiny_model(arch, scale=3.0), bpe_tokenizer())
    local = attribution_scores(model, pairs, batch_size=3, per_position=True)
    remote = attribution_scores(model, pairs, batch_size=3, per_position=True, remote="local")
    np.testing.assert_allclose(remote, local, rtol=1e-6, atol=1e-9)
    assert len(shipped) == 2  # 5 pairs in batches of 3
    heads = [(0, 0), (1, 2), (1, 3)]
    ex_local = exact_patch_scores(model, pairs, heads, batch_size=3, heads_per_forward=2)
    ex_remote = exact_patch_scores(model, pairs, heads, batch_size=3, heads_per_forward=2, remote="local")
    np.testing.assert_allclose(ex_remote.scores, ex_local.scores, rtol=1e-6, atol=1e-9)
    assert ex_remote.clean_metric == pytest.approx(ex_local.clean_metric)
    assert len(shipped) == 2 + 4  # 2 batches x 2 head chunks
    gd_local = attribution_scores(model, pairs, batch_size=3, grad_drop=True)
    gd_remote = attribution_scores(model, pairs, batch_size=3, grad_drop=True, remote="local")
    np.testing.assert_allclose(gd_remote, gd_local, rtol=1e-6, atol=1e-9)
    assert len(shipped) == 2 + 4 + 2  # GradDrop: one session (one request) per batch


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_head_effects_remote_equal_local(arch, monkeypatch):
    shipped = _shipped(monkeypatch)
    sel = choose_twins(load_records("paper"), select_slices(CLS_TASKS), 4, 0)
    rs = encode_cls(sel.records, bpe_tokenizer(), sel.task_index, sel.tasks)
    model = as_nnsight(tiny_model(arch, scale=3.0), bpe_tokenizer())
    local = head_effects(model, rs, batch_size=4)
    remote = head_effects(model, rs, batch_size=4, remote="local")
    assert len(shipped) == len(rs.twin_batches(4)) > 1
    for name in ("effects", "mean", "direction", "atp", "metric"):
        np.testing.assert_allclose(getattr(remote, name), getattr(local, name), rtol=1e-6, atol=1e-9, err_msg=name)


PLANS = [HeadPlan("ablate", heads=((0, 1), (1, 3))), HeadPlan("scale", heads=((1, 0),), factor=2.5),
         HeadPlan("mean", heads=((0, 2), (1, 1))),
         HeadPlan("label", true_heads=((0, 1), (1, 2)), false_heads=((1, 0),), up=3.0, down=0.5)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_traced_arms_equal_the_hooks(arch, enc, monkeypatch):
    """Every mode written into nnsight traces gives the hooks' logits; all arms of a batch in one request."""
    shipped = _shipped(monkeypatch)
    hf = tiny_model(arch, scale=3.0)
    model = as_nnsight(hf, bpe_tokenizer())
    means = head_means(hf, enc.ids)
    want = [run_arm(hf, enc, None, means, batch_size=3)] + [run_arm(hf, enc, p, means, batch_size=3) for p in PLANS]
    got = traced_arms(model, enc, [None, *PLANS], means, batch_size=3, remote="local")
    assert len(shipped) == len(enc.length_batches(3))
    for (wc, wm), (gc, gm), name in zip(want, got, ["baseline"] + [p.mode for p in PLANS]):
        np.testing.assert_allclose(gm, wm, rtol=1e-5, atol=1e-5, err_msg=name)
        assert (wc == gc).all(), name
    assert not np.allclose(got[1][1], got[0][1])  # the edits change the model
    traced_means = traced_head_means(model, enc.ids, remote="local", chunk=5)
    np.testing.assert_allclose(traced_means.numpy(), means.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_traced_features_equal_eager_attention(arch, monkeypatch):
    """Attention patterns recomputed in the trace from what each architecture's attention interface
    receives (q, k after rotary and q/k norms, its mask, scaling, soft-capping) equal the eager
    attention weights the local features read; the projections equal the hooks'."""
    import torch

    shipped = _shipped(monkeypatch)
    eager = tiny_model(arch, scale=3.0)
    eager.set_attn_implementation("eager")
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    tok = bpe_tokenizer()
    texts = ["A man plays a guitar on stage. So a person makes music.", "The cat sleeps. So the dog runs.",
             "Hi. So yes.", "Two kids kick a red ball in a big green park. So children play outside."]
    items = [snli_span(tok, t) for t in texts]
    ids, spans = [i for i, _ in items], [s for _, s in items]
    sites = __import__("interp.core.sites", fromlist=["head_sites"]).head_sites(eager)
    directions = torch.randn(sites.n_layers, sites.n_heads, sites.head_dim, generator=torch.Generator().manual_seed(0))
    want = batched_head_features(eager, ids, spans, directions, batch_size=3)
    got = traced_head_features(as_nnsight(sdpa, tok), ids, spans, directions, batch_size=3, remote="local")
    assert len(shipped) == 2
    np.testing.assert_allclose(got["attn"], want["attn"], atol=2e-5)
    np.testing.assert_allclose(got["proj"], want["proj"], atol=2e-5)
    assert np.abs(want["attn"]).max() > 0.01  # the feature is not trivially zero


# ------------------------------------------------------------------------------------------
# checks before any work


def test_remote_with_a_local_model_is_refused(pairs, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    model = as_nnsight(tiny_model("llama"), bpe_tokenizer())
    for fn in (lambda: attribution_scores(model, pairs, remote=True),
               lambda: exact_patch_scores(model, pairs, [(0, 0)], remote=True),
               lambda: attribution_scores(tiny_model("gpt2"), pairs, remote=True, tokenizer=bpe_tokenizer())):
        with pytest.raises(GARConfigError, match="Hub id") as err:
            fn()
        assert SECRET not in str(err.value)


def test_public_ndif_without_key_is_refused_before_any_work(pairs, public_no_key):
    model = _hub_named("llama")
    # an empty pair set would fail too, later: the remote check comes first
    with pytest.raises(GARConfigError, match="needs an API key: set NDIF_API_KEY"):
        attribution_scores(model, pairs.subset([]), remote=True)
    with pytest.raises(GARConfigError, match="needs an API key"):
        exact_patch_scores(model, pairs, [(0, 0)], remote="https://api.ndif.us")
    assert key_problem(True) and key_problem("https://eu.ndif.us")


def test_a_self_hosted_server_needs_no_key(public_no_key, monkeypatch):
    from nnsight import CONFIG

    assert key_problem(SELF_HOSTED) is None
    check_remote(_hub_named("gpt2"), SELF_HOSTED)
    monkeypatch.setattr(CONFIG.API, "HOST", SELF_HOSTED)  # what NDIF_HOST sets
    assert key_problem(True) is None
    check_remote(_hub_named("gpt2"), True)


def test_remote_checks_pass_with_hub_id_and_key(monkeypatch, public_no_key):
    model = _hub_named("gpt2")
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    check_remote(model, True)  # nothing is sent: this only validates the request
    check_remote(model, "local")
    check_remote(model, False)
    with pytest.raises(GARConfigError, match="remote must be") as err:
        check_remote(model, "ndif")
    assert SECRET not in str(err.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_one_line_within_seconds():
    url = f"http://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(GARRemoteError, match=f"the NDIF server at {url} does not answer") as err:
        preflight(url)
    assert time.perf_counter() - t0 < 10
    assert "\n" not in str(err.value)


def test_version_drift_is_one_warning_line(monkeypatch):
    from importlib.metadata import version

    import interp.core.remote as R

    answers = {"/ping": "pong", "/env": {"packages": {"nnsight": "9.9.9", "torch": version("torch")}}}
    monkeypatch.setattr(R, "_get", lambda url, timeout: answers[url[len(SELF_HOSTED):]])
    lines: list[str] = []
    info = preflight(SELF_HOSTED, warn=lines.append)
    assert info["host"] == SELF_HOSTED and info["server_versions"]["nnsight"] == "9.9.9"
    assert len(lines) == 1 and "nnsight" in lines[0] and "9.9.9" in lines[0] and "torch" not in lines[0]
    answers["/env"] = {"packages": {"nnsight": version("nnsight")}}
    lines.clear()
    assert preflight(SELF_HOSTED, warn=lines.append)["drift"] == [] and lines == []


def test_server_failures_become_one_line():
    from nnsight.intervention.backends.remote import RemoteError

    server_tb = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom at the server"
    with pytest.raises(GARRemoteError) as err:
        with server_errors(SELF_HOSTED):
            raise RemoteError(server_tb)
    assert str(err.value) == f"the NDIF server at {SELF_HOSTED} failed the request: ValueError: boom at the server"
    with pytest.raises(GARRemoteError, match="could not be reached: Connection refused"):
        with server_errors(SELF_HOSTED):
            raise ConnectionRefusedError("Connection refused")
    with pytest.raises(GARConfigError):  # our own errors pass unchanged
        with server_errors(SELF_HOSTED):
            raise GARConfigError("bad")
    with pytest.raises(ValueError, match="ours"):  # a bug of ours during a remote run stays itself
        with server_errors(SELF_HOSTED):
            raise ValueError("ours")
    with pytest.raises(ValueError):  # a local run is not a server's business
        with server_errors(False):
            raise ValueError("local")


# ------------------------------------------------------------------------------------------
# the resolved dependencies build a remote model's skeleton offline


def test_the_resolved_transformers_builds_a_remote_skeleton_offline(tmp_path):
    """A Hub id whose config and tokenizer are in the local cache becomes nnsight's weightless model,
    offline, with the key a server deploys (this fails on transformers releases nnsight cannot
    build lazily, such as 5.23 and later)."""
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    snap = repo / "snapshots" / "local"
    tiny_model("llama").config.save_pretrained(snap)
    bpe_tokenizer().save_pretrained(snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("local")
    code = ("from interp.core.remote import skeleton; from interp.core.sites import head_sites; "
            "m = skeleton('tiny-org/tiny-llama'); s = head_sites(m); "
            "print(m.to_model_key()); print(s.n_layers, s.n_heads, next(m._module.parameters()).device)")
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    key, shape = r.stdout.strip().splitlines()[-2:]
    assert key == ('nnsight.modeling.transformers.TransformersModel:{"repo_id": "tiny-org/tiny-llama", '
                   '"revision": null, "task": "text-generation"}')
    assert shape == "2 4 meta"
