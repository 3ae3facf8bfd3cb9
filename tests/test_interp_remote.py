"""The remote (NDIF) path: ``remote="local"`` runs it offline; bad requests fail before any work.

``remote="local"`` makes nnsight serialise the traced block exactly as for NDIF, deserialise it
with every non-installed module hidden (as on the server), and run it here; so a pass means the
block ships: only torch, envoys and plain values cross.
"""

from __future__ import annotations

import numpy as np
import pytest

from gar_tasks.errors import GARConfigError
from interp.model import as_nnsight, check_remote
from interp.pairs import make_pairs
from interp.patching import attribution_scores, exact_patch_scores
from tiny_models import BUILDERS, one_thread_module, tiny_model  # noqa: F401 (autouse fixture)
from tiny_tokenizers import bpe_tokenizer, gar_records

pytestmark = pytest.mark.unit

SECRET = "ndif-test-key-do-not-print-0123456789"


@pytest.fixture(scope="module")
def pairs():
    full = make_pairs(gar_records("paper")[:200], bpe_tokenizer())
    return full.subset(sorted(range(len(full)), key=lambda i: full[i].length)[:5])


@pytest.fixture
def no_key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)


def _hub_named(arch: str):
    """A tiny local model that claims to come from a Hub id (never contacted)."""
    model = BUILDERS[arch](seed=0)
    model.config._name_or_path = "tiny-org/tiny-" + arch
    model.name_or_path = "tiny-org/tiny-" + arch
    return as_nnsight(model, bpe_tokenizer())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_local_remote_gives_the_same_scores(arch, pairs, monkeypatch):
    from nnsight.intervention.backends.local import LocalSimulationBackend

    shipped = []  # proof that each batch went through nnsight's serialise/deserialise backend
    real_call = LocalSimulationBackend.__call__
    monkeypatch.setattr(LocalSimulationBackend, "__call__",
                        lambda self, tracer: (shipped.append(1), real_call(self, tracer))[1])
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


def test_remote_with_a_local_model_is_refused(pairs, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    model = as_nnsight(tiny_model("llama"), bpe_tokenizer())
    for fn in (lambda: attribution_scores(model, pairs, remote=True),
               lambda: exact_patch_scores(model, pairs, [(0, 0)], remote=True),
               lambda: attribution_scores(tiny_model("gpt2"), pairs, remote=True, tokenizer=bpe_tokenizer())):
        with pytest.raises(GARConfigError, match="Hub id") as err:
            fn()
        assert SECRET not in str(err.value)


def test_remote_without_key_is_refused_before_any_work(pairs, no_key):
    model = _hub_named("llama")
    # an empty pair set would fail too, later: the remote check comes first
    with pytest.raises(GARConfigError, match="NDIF API key"):
        attribution_scores(model, pairs.subset([]), remote=True)
    with pytest.raises(GARConfigError, match="NDIF API key"):
        exact_patch_scores(model, pairs, [(0, 0)], remote="https://ndif.example.org")


def test_remote_checks_pass_with_hub_id_and_key(monkeypatch, no_key):
    model = _hub_named("gpt2")
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    check_remote(model, True)  # nothing is sent: this only validates the request
    check_remote(model, "local")
    check_remote(model, False)
    with pytest.raises(GARConfigError, match="remote must be") as err:
        check_remote(model, "ndif")
    assert SECRET not in str(err.value)
