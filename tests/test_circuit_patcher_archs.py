"""The exact edge patcher on every type of the architecture table (tiny random models, float64).

* every edge kept = the model's own forward (its logits at the last position), under pair
  patching and a corrupted-embedding corruption, with left padding in one row;
* no edge kept = the corrupted forward (pairs: the corrupted prompt; embeddings: the model fed
  the corrupted inputs_embeds), and under role-mean ablation the logits of the summed means;
* random circuits (attention edges included) = an independent token-by-token reference built
  from the Hugging Face modules (see ``tests/test_circuit_engine.py``).

Transformers runs a float64 model's RMS norms and attention softmax in float32; the identities
here hold to 1e-9 once those two run in float64 (:func:`float64_exact`, applied to both sides),
and to float32 precision without it.
"""

from __future__ import annotations

import numpy as np
import pytest

from circuit_tiny import ALL_ARCHS, END, N_ROLES, embed_module, model, random_batch
from interp.circuit.patch import EdgePatcher, empty_masks, full_masks
from interp.circuit.ports import circuit_shape
from tiny_models import one_thread_module  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.integration


def float64_exact(hf, monkeypatch):
    """Make ``hf``'s RMS norms and the attention softmax compute in float64 (transformers casts
    both to float32): the model's arithmetic, without the float32 rounding."""
    import torch

    soft = torch.nn.functional.softmax

    def softmax(x, dim=None, _stacklevel=3, dtype=None):
        return soft(x, dim=dim, _stacklevel=_stacklevel, dtype=None if x.dtype == torch.float64 else dtype)

    monkeypatch.setattr(torch.nn.functional, "softmax", softmax)

    def exact(module, offset):
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))

        def forward(x):
            gain = 1 + module.weight if offset else module.weight
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain

        return forward

    for module in hf.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = exact(module, name.startswith("Gemma"))
    return hf


def hf_last_logits(hf, batch, source):
    """Last-position logits ``[B, V]`` of the model's own forward, one unpadded row at a time;
    ``source``: "clean" (input ids), "pair" (corrupted ids) or "embeds" (corrupted inputs_embeds)."""
    import torch

    out = []
    with torch.no_grad():
        for b in range(batch.size):
            keep = batch.attention_mask[b].bool()
            if source == "embeds":
                out.append(hf(inputs_embeds=batch.corrupt_embeds[b, keep][None]).logits[0, -1])
            else:
                ids = batch.corrupt_ids if source == "pair" else batch.input_ids
                out.append(hf(input_ids=ids[b, keep][None]).logits[0, -1])
    return torch.stack(out)


def _close(got, want, rtol):
    scale = float(want.abs().max())
    err = float((got - want).abs().max())
    assert err <= rtol * scale, f"max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("corruption", ["ids", "embeds"])
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_every_edge_kept_is_the_model_and_none_the_corrupted_model(arch, corruption, monkeypatch):
    hf = float64_exact(model(arch), monkeypatch)
    batch = random_batch(hf, rows=2, width=8, pad=(0, 2), corruption=corruption, eps=0.3, seed=2)
    patcher = EdgePatcher(hf, batch)
    s = circuit_shape(hf)
    clean = hf_last_logits(hf, batch, "clean")
    corrupted = hf_last_logits(hf, batch, "pair" if corruption == "ids" else "embeds")
    assert float((clean - corrupted).abs().max()) > 1e-3  # the corruption changes the answer
    _close(patcher.logits(*full_masks(s, N_ROLES)), clean, 1e-9)
    _close(patcher.logits(*empty_masks(s, N_ROLES)), corrupted, 1e-9)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_float32_internals_agree_to_float32_precision(arch):
    """Without :func:`float64_exact` (transformers' own float32 norms and softmax) the identities
    hold to float32 precision."""
    hf = model(arch)
    batch = random_batch(hf, rows=2, width=7, pad=(2, 0), seed=1)
    patcher = EdgePatcher(hf, batch)
    s = circuit_shape(hf)
    _close(patcher.logits(*full_masks(s, N_ROLES)), hf_last_logits(hf, batch, "clean"), 1e-5)
    _close(patcher.logits(*empty_masks(s, N_ROLES)), hf_last_logits(hf, batch, "pair"), 1e-5)


def _role_means(hf, seed=1):
    """Role means ``[S, R, d]`` of every sender over other random rows (the patcher's clean senders)."""
    import torch

    other = random_batch(hf, rows=3, width=9, pad=(0, 1, 0), seed=seed)
    patcher = EdgePatcher(hf, other)
    with torch.no_grad():
        senders = patcher.unrolled.forward(patcher.clean_embeds, other, capture=True)[1]
    oh = other.role_onehot(torch.float64)
    return torch.einsum("btsd,btr->srd", senders, oh) / oh.sum((0, 1))[None, :, None]


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_role_means_every_edge_is_the_model_and_none_the_summed_means(arch, monkeypatch):
    import torch

    hf = float64_exact(model(arch), monkeypatch)
    means = _role_means(hf)
    batch = random_batch(hf, rows=2, width=7, pad=(0, 2), corruption="means", means=means, seed=4)
    patcher = EdgePatcher(hf, batch)
    s = circuit_shape(hf)
    _close(patcher.logits(*full_masks(s, N_ROLES)), hf_last_logits(hf, batch, "clean"), 1e-9)
    # none kept: the logits read the summed means at END (the model's final norm, unembedding, cap)
    last = means[:, END].sum(0)
    with torch.no_grad():
        want = hf.get_submodule(s.path("lm_head"))(hf.get_submodule(s.path("final_norm"))(last))
    if s.final_softcap is not None:
        want = s.final_softcap * torch.tanh(want / s.final_softcap)
    got = patcher.logits(*empty_masks(s, N_ROLES))
    _close(got, want[None].expand_as(got), 1e-9)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_embeds_corruption_uses_the_models_embedding(arch):
    """The corrupted embeddings are the embedding module's outputs (scale included), so a zero
    corruption leaves every edge without effect."""
    hf = model(arch)
    batch = random_batch(hf, rows=1, width=6, corruption="embeds", eps=0.0)
    patcher = EdgePatcher(hf, batch)
    s = circuit_shape(hf)
    np.testing.assert_allclose(patcher.metrics(*empty_masks(s, N_ROLES)), patcher.metrics(*full_masks(s, N_ROLES)),
                               rtol=1e-12, atol=1e-12)
    assert embed_module(hf) is hf.get_submodule(s.path("embed"))
