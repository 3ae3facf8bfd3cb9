"""Role-level edge attribution on every architecture of the table (tiny random models, float64).

For each of the twelve types (fused q/k/v, q/k norms across or per head, norms after attention and
MLP, parallel residual, LayerNorm, absolute positions, sliding windows, soft caps, partial rotary):

* a sender's outgoing residual edges sum to its AtP, computed here with autograd hooks on the
  transformers model (the sender's output as the shared definitions give it: a head's share of
  the post-attention norm's output, the MLP's output after its post norm, the layer-0 input);
* grouped k/v ports = the sum over their query heads of an ungrouped copy of the model's ports;
* EAP-IG is complete over the input embeddings (the embedding's edges sum to m(corr) - m(clean));
* ``remote="local"`` gives the same scores; left padding and batch composition change no score.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

import circuit_tiny
from circuit_tiny import END, N_ROLES, float64_exact, random_batch
from interp.circuit.eap import attribution_batch, edge_attribution
from interp.circuit.ports import circuit_shape
from interp.core.architectures import architecture
from interp.core.model import as_nnsight
from tiny_models import TABLE_BUILDERS, one_thread_module  # noqa: F401 (autouse fixture)
from tiny_tokenizers import bpe_tokenizer

pytestmark = pytest.mark.integration

ARCHS = tuple(sorted(TABLE_BUILDERS))


def tiny(arch: str, dtype: str = "float64") -> Any:
    """A private copy of the tiny ``arch`` model (GPT-2 / GPT-NeoX / Qwen2 with random biases)."""
    return circuit_tiny.model(arch, dtype)


def embed(hf: Any, ids: Any) -> Any:
    """What the embedding module returns (``inputs_embeds``; no position embedding)."""
    return circuit_tiny.embed_module(hf)(ids).detach()


def random_means(hf: Any, seed: int = 0) -> Any:
    """Role means ``[S, R, d]`` of a plausible size (EAP reads them as the corrupted senders)."""
    import torch

    s = circuit_shape(hf)
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(s.n_senders, N_ROLES, s.d_model, generator=g, dtype=hf.dtype)


# ------------------------------------------------------------------------------------------
# an independent reference: every sender's AtP with hooks on the transformers model


def _senders_and_grads(hf: Any, metric_of: Any, row: dict[str, Any], grad: bool) -> tuple[list[Any], list[Any]]:
    """One unpadded row: each sender's output ``[T, d]`` (emb, heads of layer 0, mlp 0, ...) and,
    with ``grad``, the gradient of the metric at the residual-stream tensor it is part of."""
    import torch

    s = circuit_shape(hf)
    paths = architecture(s.model_type, "circuit").paths
    mod = hf.get_submodule
    H, hd, d = s.n_heads, s.head_dim, s.d_model
    caps: dict[Any, Any] = {}

    def keep(key: Any) -> Any:
        return lambda m, a, out: caps.__setitem__(key, out)

    hooks = [mod(s.path("layer", 0)).register_forward_pre_hook(
        lambda m, a, kw: caps.__setitem__("emb", a[0] if a else kw["hidden_states"]), with_kwargs=True)]
    for layer in range(s.n_layers):
        o = mod(s.path("o", layer))
        hooks.append(o.register_forward_pre_hook(lambda m, a, i=layer: caps.__setitem__(("z", i), a[0])))
        hooks.append(o.register_forward_hook(keep(("o", layer))))
        if paths.post_attn_norm is not None:
            hooks.append(mod(s.path("post_attn_norm", layer)).register_forward_hook(keep(("attn_out", layer))))
        key = "post_mlp_norm" if paths.post_mlp_norm is not None else "mlp"
        hooks.append(mod(s.path(key, layer)).register_forward_hook(keep(("mlp", layer))))
    try:
        logits = hf(**row).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()
    metric = metric_of(logits)
    senders, sites = [caps["emb"][0]], [caps["emb"]]
    for layer in range(s.n_layers):
        o_mod = mod(s.path("o", layer))
        w_o = o_mod.weight.T if s.conv1d else o_mod.weight  # [d, H * hd]
        z = caps[("z", layer)][0].view(-1, H, hd)
        heads = torch.einsum("the,dhe->htd", z, w_o.view(d, H, hd))
        if o_mod.bias is not None:
            heads = heads + o_mod.bias / H
        if paths.post_attn_norm is not None:
            gain = mod(s.path("post_attn_norm", layer)).weight + (1.0 if s.norm == "rms_offset" else 0.0)
            o_sum = caps[("o", layer)][0]
            heads = heads * gain * torch.rsqrt(o_sum.pow(2).mean(-1, keepdim=True) + s.eps)
            sites.append(caps[("attn_out", layer)])
        else:
            sites.append(caps[("o", layer)])
        senders += list(heads) + [caps[("mlp", layer)][0]]
        sites.append(caps[("mlp", layer)])
    if not grad:
        return [x.detach() for x in senders], []
    g = torch.autograd.grad(metric, sites)
    grads = [g[0][0]]
    for layer in range(s.n_layers):
        grads += [g[1 + 2 * layer][0]] * H + [g[2 + 2 * layer][0]]
    return [x.detach() for x in senders], grads


def reference_sender_atp(hf: Any, batch: Any) -> np.ndarray:
    """AtP ``[S, R]`` of every sender summed over rows: ``(c^corr - c) . dm/dc``, unpadded rows."""
    s = circuit_shape(hf)
    out = np.zeros((s.n_senders, batch.n_roles))
    hf.requires_grad_(True)
    try:
        for b in range(batch.size):
            keep = batch.attention_mask[b].bool()
            roles = batch.role_ids[b, keep]

            def metric_of(logits: Any, b: int = b) -> Any:
                return logits[batch.clean_target[b]] - logits[batch.corrupt_target[b]]

            corr, _ = _senders_and_grads(hf, metric_of, {"input_ids": batch.corrupt_ids[b, keep][None]}, False)
            clean, grads = _senders_and_grads(hf, metric_of, {"input_ids": batch.input_ids[b, keep][None]}, True)
            for k in range(s.n_senders):
                per_token = ((corr[k] - clean[k]) * grads[k]).sum(-1).detach()
                for r in range(batch.n_roles):
                    out[k, r] += float(per_token[roles == r].sum())
    finally:
        hf.requires_grad_(False)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_sender_edges_sum_to_sender_atp_per_role(arch):
    hf = tiny(arch)
    batch = random_batch(hf, rows=3, width=8, seed=7)
    resid, _ = attribution_batch(as_nnsight(hf, bpe_tokenizer()), batch)
    want = reference_sender_atp(hf, batch)
    got = resid.sum(1)  # over ports
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7 * np.abs(want).max())


# ------------------------------------------------------------------------------------------
# grouped k/v ports


def _ungrouped(hf: Any) -> Any:
    """The same function with one KV head per query head (k/v projection rows repeated; a key norm
    over all key heads repeated likewise: the rms of repeated groups is the rms of the groups)."""
    import torch

    s = circuit_shape(hf)
    arch = architecture(s.model_type, "circuit")
    cfg = copy.deepcopy(hf.config)
    arch.text_config(cfg).num_key_value_heads = s.n_heads
    out = type(hf)(cfg).to(hf.dtype).eval()
    H, G, gs, hd = s.n_heads, s.n_groups, s.group_size, s.head_dim

    def rep(v: Any) -> Any:
        return v.view(G, hd, *v.shape[1:]).repeat_interleave(gs, 0).reshape(H * hd, *v.shape[1:])

    state, layers = hf.state_dict(), arch.paths.layer.split("{i}")[0]  # the language model's layers only
    for key, v in list(state.items()):
        if not key.startswith(layers):
            continue
        if key.endswith("qkv_proj.weight"):
            q, k, v_ = v[:H * hd], v[H * hd:(H + G) * hd], v[(H + G) * hd:]
            state[key] = torch.cat([q, rep(k), rep(v_)])
        elif key.endswith((".k_proj.weight", ".v_proj.weight", ".k_proj.bias", ".v_proj.bias")):
            state[key] = rep(v)
        elif key.endswith("k_norm.weight") and s.qk_norm == "across_heads":
            state[key] = rep(v)
    out.load_state_dict(state)
    with torch.no_grad():
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        diff = (out(ids).logits - hf(ids).logits).abs().max()
        assert diff < 1e-6, diff  # the norms' float32 internals
    return out


#: the types whose tiny models group their query heads (GPT-2 and GPT-NeoX have one KV head per query head)
GROUPED = tuple(a for a in ARCHS if a not in ("gpt2", "gpt_neox"))


@pytest.mark.parametrize("arch", GROUPED)
def test_grouped_kv_ports_are_sums_of_query_head_ports(arch):
    hf = tiny(arch)
    flat = _ungrouped(hf)
    batch = random_batch(hf, rows=2, width=7, seed=11)
    r_g, a_g = attribution_batch(as_nnsight(hf, bpe_tokenizer()), batch)
    r_u, a_u = attribution_batch(as_nnsight(flat, bpe_tokenizer()), batch)
    sg, su = circuit_shape(hf), circuit_shape(flat)
    assert su.n_groups == sg.n_heads > sg.n_groups
    np.testing.assert_allclose(a_g, a_u, rtol=1e-5, atol=1e-9)  # attention edges are per query head
    for layer in range(sg.n_layers):
        for h in range(sg.n_heads):
            np.testing.assert_allclose(r_g[:, sg.port_q(layer, h)], r_u[:, su.port_q(layer, h)], rtol=1e-5, atol=1e-9)
        for g in range(sg.n_groups):
            heads = range(g * sg.group_size, (g + 1) * sg.group_size)
            for port_g, port_u in ((sg.port_k, su.port_k), (sg.port_v, su.port_v)):
                want = sum(r_u[:, port_u(layer, h)] for h in heads)
                assert np.abs(want).max() > 1e-6
                np.testing.assert_allclose(r_g[:, port_g(layer, g)], want, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(r_g[:, sg.port_mlp(layer)], r_u[:, su.port_mlp(layer)], rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------
# EAP-IG completeness


def _hf_metric_embeds(hf: Any, batch: Any, embeds: Any) -> float:
    """Sum over rows of the metric of the model's own forward from ``inputs_embeds`` (unpadded rows)."""
    import torch

    total = 0.0
    for b in range(batch.size):
        keep = batch.attention_mask[b].bool()
        with torch.no_grad():
            logits = hf(inputs_embeds=embeds[b, keep][None]).logits[0, -1]
        total += float(logits[batch.clean_target[b]] - logits[batch.corrupt_target[b]])
    return total


@pytest.mark.parametrize("arch", ARCHS)
def test_ig_is_complete_over_input_embeddings(arch):
    """The embedding's edges, summed over ports and roles, approach m(corr) - m(clean): a Riemann
    sum over the path of the embedding module's output (the position embedding added by the model)."""
    hf = tiny(arch)
    batch = random_batch(hf, rows=2, width=6, corruption="embeds", eps=0.05, seed=2)
    nn_model = as_nnsight(hf, bpe_tokenizer())
    want = _hf_metric_embeds(hf, batch, batch.corrupt_embeds) - _hf_metric_embeds(hf, batch, embed(hf, batch.input_ids))
    err = {n: abs(attribution_batch(nn_model, batch, ig_steps=n)[0][0].sum() - want) for n in (1, 8, 64)}
    assert abs(want) > 1e-2
    assert err[64] < 0.25 * err[8] or err[64] < 1e-3 * abs(want)  # the error falls like 1/n
    assert err[64] < 0.1 * err[1]
    assert err[64] < 0.1 * abs(want)


# ------------------------------------------------------------------------------------------
# the remote code path, padding, batch composition


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "olmo2", "phi3", "gemma3"])
@pytest.mark.parametrize("corruption", ["ids", "means"])
def test_remote_local_gives_the_same_scores(arch, corruption, monkeypatch):
    """Fused types (GPT-2: Conv1D, position embedding; GPT-NeoX: per-head columns, parallel
    residual, LayerNorm; Phi-3), a post-norm type (OLMo-2: q/k norms across heads, no attention
    norm) and a multimodal wrapper (Gemma-3: soft caps, windows, per-head q/k norms)."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    shipped = []
    real_call = LocalSimulationBackend.__call__
    monkeypatch.setattr(LocalSimulationBackend, "__call__",
                        lambda self, tracer: (shipped.append(1), real_call(self, tracer))[1])
    hf = tiny(arch)
    means = random_means(hf) if corruption == "means" else None
    batch = random_batch(hf, rows=2, width=7, corruption=corruption, means=means, seed=9)
    nn_model = as_nnsight(hf, bpe_tokenizer())
    roles = ["a", "b", "c", "END"]
    local = edge_attribution(nn_model, [batch], roles, ig_steps=2, exact_softmax=True)
    remote = edge_attribution(nn_model, [batch], roles, ig_steps=2, exact_softmax=True, remote="local")
    assert np.nanmax(np.abs(local.resid)) > 1e-4
    np.testing.assert_array_equal(np.isnan(local.resid), np.isnan(remote.resid))
    np.testing.assert_allclose(remote.resid, local.resid, rtol=1e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(remote.attn, local.attn, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert len(shipped) == 1  # one session (one request) per batch, IG steps included


def _unpadded_row(batch: Any, b: int) -> Any:
    """Row ``b`` of a left-padded batch as a batch of one without its padding."""
    keep = batch.attention_mask[b].bool()
    return type(batch)(batch.input_ids[b:b + 1, keep], batch.attention_mask[b:b + 1, keep],
                       batch.position_ids[b:b + 1, keep], batch.role_ids[b:b + 1, keep],
                       batch.clean_target[b:b + 1], batch.corrupt_target[b:b + 1], N_ROLES, END,
                       corrupt_ids=batch.corrupt_ids[b:b + 1, keep])


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_and_batch_composition_change_no_score(arch):
    """float32 (transformers' own float64 forward is NaN at left-padded positions); the tiny models'
    windows (4 keys) are shorter than the rows, so they bite."""
    hf = tiny(arch, "float32")
    nn_model = as_nnsight(hf, bpe_tokenizer())
    batch = random_batch(hf, rows=3, width=9, pad=(3, 0, 5), seed=4)
    r_all, a_all = attribution_batch(nn_model, batch)
    r_sum, a_sum = 0, 0
    for b in range(batch.size):
        r, a = attribution_batch(nn_model, _unpadded_row(batch, b))
        r_sum, a_sum = r_sum + r, a_sum + a
    assert np.isfinite(r_all).all() and np.isfinite(a_all).all()
    np.testing.assert_allclose(r_all, r_sum, rtol=1e-3, atol=1e-4 * np.abs(r_all).max())
    np.testing.assert_allclose(a_all, a_sum, rtol=1e-3, atol=1e-4 * np.abs(a_all).max())


# ------------------------------------------------------------------------------------------
# against the exact edge patcher (the same definitions of senders and ports)


def _single_edge_effects(patcher: Any, edges_r: Any, edges_a: Any) -> tuple[np.ndarray, np.ndarray]:
    """The metric's change (summed over rows) when one edge alone is switched to its corrupted value."""
    from interp.circuit.patch import full_masks

    fr, fa = full_masks(patcher.shape, patcher.batch.n_roles)
    base = patcher.metrics(fr, fa).sum()
    out_r, out_a = [], []
    for e in edges_r:
        m = fr.copy()
        m[tuple(e)] = False
        out_r.append(patcher.metrics(m, fa).sum() - base)
    for e in edges_a:
        m = fa.copy()
        m[tuple(e)] = False
        out_a.append(patcher.metrics(fr, m).sum() - base)
    return np.array(out_r), np.array(out_a)


def _sample(present: np.ndarray, n: int, seed: int, keep: Any = None) -> np.ndarray:
    """``n`` random indices of the True entries of ``present`` (rows passing ``keep``)."""
    idx = np.argwhere(present)
    if keep is not None:
        idx = idx[keep(idx)]
    return idx[np.random.default_rng(seed).choice(len(idx), n, replace=False)]


def _agree(est: np.ndarray, exact: np.ndarray, what: str) -> None:
    assert np.abs(exact).max() > 1e-8, what  # the corruption moves the metric
    assert np.corrcoef(est, exact)[0, 1] > 0.999, what
    np.testing.assert_allclose(est, exact, rtol=0.01, atol=0.01 * np.abs(exact).max(), err_msg=what)


def _check_against_patcher(hf: Any, batch: Any, seed: int) -> None:
    """EAP's residual, q/k and v edges (sampled separately) against exact single-edge patching."""
    from interp.circuit.eap import edge_presence
    from interp.circuit.patch import EdgePatcher

    resid, attn = attribution_batch(as_nnsight(hf, bpe_tokenizer()), batch)
    patcher = EdgePatcher(hf, batch)
    has_r, has_a = edge_presence(patcher.shape, [batch], N_ROLES, END)
    er = _sample(has_r, 50, seed)
    e_qk = _sample(has_a, 30, seed, lambda i: i[:, 4] < 2)
    e_v = _sample(has_a, 20, seed, lambda i: i[:, 4] == 2)
    exact_r, exact_a = _single_edge_effects(patcher, er, np.concatenate([e_qk, e_v]))
    _agree(resid[tuple(er.T)], exact_r, "resid")
    _agree(attn[tuple(e_qk.T)], exact_a[:len(e_qk)], "q/k")
    _agree(attn[tuple(e_v.T)], exact_a[len(e_qk):], "v")
    assert {"q", "k", "v", "mlp"} <= set(patcher.shape.port_arrays()[1][er[:, 1]])
    assert np.all(resid[~has_r] == 0) and np.all(attn[~has_a] == 0)  # no edge outside the data


@pytest.mark.parametrize("arch", ARCHS)
def test_eap_equals_single_edge_patching_to_first_order(arch, monkeypatch):
    """A tiny corrupted-embedding corruption; the model's norms and softmax in float64 (transformers
    rounds them to float32, which drowns edges of 1e-8 in the exact patcher's differences)."""
    hf = float64_exact(tiny(arch), monkeypatch)
    _check_against_patcher(hf, random_batch(hf, rows=2, width=7, corruption="embeds", eps=1e-4, seed=5), 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_role_mean_eap_equals_single_edge_patching_to_first_order(arch, monkeypatch):
    """Role-mean ablation with one token per role and row, the means a tiny perturbation of the
    clean senders (the patcher's): the corrupted senders and layer inputs come from the means."""
    import torch

    from interp.circuit.batch import CircuitBatch
    from interp.circuit.patch import EdgePatcher

    hf = float64_exact(tiny(arch), monkeypatch)
    pair = random_batch(hf, rows=2, width=N_ROLES, seed=8)
    roles = torch.arange(N_ROLES).expand(2, N_ROLES).clone()
    pair = CircuitBatch(pair.input_ids, pair.attention_mask, pair.position_ids, roles, pair.clean_target,
                        pair.corrupt_target, N_ROLES, END, corrupt_ids=pair.corrupt_ids)
    with torch.no_grad():
        patcher = EdgePatcher(hf, pair)
        senders = patcher.unrolled.forward(patcher.clean_embeds, pair, capture=True)[1]  # [B, T, S, d]
    g = torch.Generator().manual_seed(3)
    means = senders.permute(0, 2, 1, 3)  # [B, S, R, d]: one token per role
    means = means + 1e-4 * torch.randn(means.shape, generator=g, dtype=means.dtype)
    batch = CircuitBatch(pair.input_ids, pair.attention_mask, pair.position_ids, roles, pair.clean_target,
                         pair.corrupt_target, N_ROLES, END, role_means=means)
    _check_against_patcher(hf, batch, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_softmax_attention_edges(arch):
    """The QK fix: v edges unchanged; q/k edges equal plain EAP to first order, and closer to exact
    single-edge patching under a large corruption (the head's own softmax, soft cap and window
    included, is no longer linearised)."""
    from interp.circuit.eap import edge_presence
    from interp.circuit.patch import EdgePatcher

    hf = tiny(arch)
    nn_model = as_nnsight(hf, bpe_tokenizer())
    small = random_batch(hf, rows=2, width=7, corruption="embeds", eps=1e-5, seed=5)
    plain, fixed = attribution_batch(nn_model, small)[1], attribution_batch(nn_model, small, exact_softmax=True)[1]
    np.testing.assert_array_equal(plain[..., 2], fixed[..., 2])
    assert np.corrcoef(plain[..., :2].ravel(), fixed[..., :2].ravel())[0, 1] > 0.9999
    big = random_batch(hf, rows=2, width=7, corruption="embeds", eps=3.0, seed=6)
    plain, fixed = attribution_batch(nn_model, big)[1], attribution_batch(nn_model, big, exact_softmax=True)[1]
    patcher = EdgePatcher(hf, big)
    has_a = edge_presence(patcher.shape, [big], N_ROLES, END)[1]
    last = np.argwhere(has_a)
    last = last[(last[:, 0] == patcher.shape.n_layers - 1) & (last[:, 4] < 2)]  # q/k edges, last layer
    _, exact = _single_edge_effects(patcher, [], last)
    err_plain = np.abs(plain[tuple(last.T)] - exact).mean()
    err_fixed = np.abs(fixed[tuple(last.T)] - exact).mean()
    print(f"{arch}: mean |EAP - exact| {err_plain:.3g}, with the QK fix {err_fixed:.3g}")
    assert err_fixed < err_plain, (err_fixed, err_plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_softmax_logits_edges_are_exact(arch, monkeypatch):
    """Under exact_softmax the logits port's edges are exact (the final norm and the unembedding are
    the last step): each equals exact single-edge patching under a large corruption, to float64
    rounding, where plain EAP's linearised final norm does not."""
    from interp.circuit.eap import edge_presence
    from interp.circuit.patch import EdgePatcher

    hf = float64_exact(tiny(arch), monkeypatch)
    batch = random_batch(hf, rows=2, width=7, corruption="embeds", eps=3.0, seed=6)
    nn_model = as_nnsight(hf, bpe_tokenizer())
    plain, fixed = attribution_batch(nn_model, batch)[0], attribution_batch(nn_model, batch, exact_softmax=True)[0]
    patcher = EdgePatcher(hf, batch)
    has_r = edge_presence(patcher.shape, [batch], N_ROLES, END)[0]
    edges = np.argwhere(has_r[:, patcher.shape.port_logits])
    edges = np.insert(edges, 1, patcher.shape.port_logits, axis=1)
    exact, _ = _single_edge_effects(patcher, edges, [])
    scale = np.abs(exact).max()
    np.testing.assert_allclose(fixed[tuple(edges.T)], exact, atol=1e-9 * scale)
    assert np.abs(plain[tuple(edges.T)] - exact).max() > 1e-4 * scale


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_softmax_qkv_port_edges(arch):
    """Under exact_softmax the residual edges into q, k and v ports go through the norm and the head
    exactly (q and k through the softmax, keys per source role): equal to plain EAP to first order
    under a tiny corruption, closer to exact single-edge patching under a large one, each kind of
    port on its own (the mlp ports are plain EAP's)."""
    from interp.circuit.eap import edge_presence
    from interp.circuit.patch import EdgePatcher

    hf = tiny(arch)
    nn_model = as_nnsight(hf, bpe_tokenizer())
    s = circuit_shape(hf)
    kinds = np.array(s.port_arrays()[1])
    head_ports = np.isin(kinds, ["q", "k", "v"])
    small = random_batch(hf, rows=2, width=7, corruption="embeds", eps=1e-5, seed=5)
    plain, fixed = attribution_batch(nn_model, small)[0], attribution_batch(nn_model, small, exact_softmax=True)[0]
    rest = ~head_ports & (np.arange(s.n_ports) != s.port_logits)
    np.testing.assert_allclose(fixed[:, rest], plain[:, rest], rtol=1e-10, atol=1e-12 * np.abs(plain).max())
    for kind in ("q", "k", "v"):
        assert np.corrcoef(plain[:, kinds == kind].ravel(), fixed[:, kinds == kind].ravel())[0, 1] > 0.9999, kind
    big = random_batch(hf, rows=2, width=7, corruption="embeds", eps=3.0, seed=6)
    plain, fixed = attribution_batch(nn_model, big)[0], attribution_batch(nn_model, big, exact_softmax=True)[0]
    patcher = EdgePatcher(hf, big)
    has_r = edge_presence(patcher.shape, [big], N_ROLES, END)[0]
    edges = np.argwhere(has_r & head_ports[None, :, None])
    edges = edges[s.port_arrays()[0][edges[:, 1]] == s.n_layers - 1]  # the last layer's head ports
    exact, _ = _single_edge_effects(patcher, edges, [])
    for kind in ("q", "k", "v"):
        sel = kinds[edges[:, 1]] == kind
        e = edges[sel]
        err_plain = np.abs(plain[tuple(e.T)] - exact[sel]).mean()
        err_fixed = np.abs(fixed[tuple(e.T)] - exact[sel]).mean()
        print(f"{arch}: mean |EAP - exact| on {kind} ports {err_plain:.3g}, exact through the head {err_fixed:.3g}")
        if kind == "v" and not s.pre_attention_norm:  # v reads the raw stream (OLMo-2): already linear
            np.testing.assert_allclose(fixed[tuple(e.T)], plain[tuple(e.T)], rtol=1e-8)
        else:
            assert err_fixed < err_plain, kind


def _sharpened(arch: str) -> Any:
    """Sharp attention (queries and keys x8) with the type's score quirk made to bite: Gemma-2 a
    soft cap at the scores' size, GPT-2 its scaling by ``1 / (layer + 1)``."""
    import torch

    hf = tiny(arch)
    with torch.no_grad():
        for layer in range(circuit_shape(hf).n_layers):
            if arch == "gpt2":
                attn = hf.transformer.h[layer].attn
                attn.c_attn.weight[:, :2 * hf.config.n_embd].mul_(8.0)
                attn.scaling = attn.scaling / (layer + 1)
            else:
                attn = hf.model.layers[layer].self_attn
                attn.q_proj.weight.mul_(8.0)
                attn.k_proj.weight.mul_(8.0)
                attn.attn_logit_softcapping = 1.0
    if arch == "gpt2":
        hf.config.scale_attn_by_inverse_layer_idx = True
        assert circuit_shape(hf).scale(1) == circuit_shape(hf).scale(0) / 2
    else:
        hf.config.attn_logit_softcapping = 1.0
        assert circuit_shape(hf).attn_softcap == 1.0
    return hf


@pytest.mark.parametrize("arch", ["gemma2", "gpt2"])
def test_sharp_attention_with_its_score_quirk_matches_exact_patching(arch):
    """The q/k edges carry the soft cap's ``1 - tanh^2`` (Gemma-2) and the layer's own scaling
    (GPT-2 by inverse layer index) and still match exact single-edge patching to first order."""
    from interp.circuit.eap import edge_presence
    from interp.circuit.patch import EdgePatcher

    hf = _sharpened(arch)
    batch = random_batch(hf, rows=2, width=7, corruption="embeds", eps=1e-3, seed=5)
    attn = attribution_batch(as_nnsight(hf, bpe_tokenizer()), batch)[1]
    patcher = EdgePatcher(hf, batch)
    has_a = edge_presence(patcher.shape, [batch], N_ROLES, END)[1]
    qk = np.argwhere(has_a)
    qk = qk[(qk[:, 4] < 2) & (qk[:, 0] == patcher.shape.n_layers - 1)]  # q/k edges of the last layer
    qk = qk[np.random.default_rng(2).choice(len(qk), 40, replace=False)]
    _, exact = _single_edge_effects(patcher, [], qk)
    est = attn[tuple(qk.T)]
    assert np.abs(exact).max() > 1e-8
    assert np.corrcoef(est, exact)[0, 1] > 0.99
    np.testing.assert_allclose(est, exact, rtol=0.05, atol=0.05 * np.abs(exact).max())
