"""The circuit engine's identities on tiny random Llama and Qwen2 (GQA), float64, seconds; the
attribution's identities on every architecture (EAP vs single-edge patching, sender sums = AtP,
grouped ports, IG completeness, padding) are in ``test_circuit_eap_archs``.

* the exact edge patcher equals an independent, loop-by-loop plain-torch "unrolled" forward that
  rebuilds every port's input from chosen senders, for random circuits (attention edges
  included), under pair patching and role-mean ablation (the reference, built from the model's
  own modules, covers every type of the architecture table: ``test_circuit_patcher_archs``);
* all edges kept = the model's clean metric; none kept = its corrupted metric (pair patching) or
  the all-mean forward (role means);
* ``remote="local"`` gives the same scores in one request per batch, and the graph side reads them;
* the patcher's speed paths (blocks, gathers, prefix modes) equal the reference; the float32
  folded norm matches float64; edges before the first differing token have exactly zero effect.
"""

from __future__ import annotations

import numpy as np
import pytest

from circuit_tiny import ARCHS, END, N_ROLES, float64_exact, hf_metric, model, random_batch
from gar_tasks.errors import GARConfigError
from interp.circuit.eap import attribution_batch, edge_attribution
from interp.circuit.patch import EdgePatcher, empty_masks, full_masks, gather_role_means
from interp.circuit.ports import circuit_shape
from interp.core.model import as_nnsight
from tiny_models import one_thread_module  # noqa: F401 (autouse fixture)
from tiny_tokenizers import bpe_tokenizer

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------------------
# an independent reference: loops over tokens, senders, heads and key positions


def _rotate(x, cos, sin):
    """Rotary on the first ``len(cos)`` dimensions of the vectors ``x[..., hd]`` (rotate_half on
    that part, the rest unchanged)."""
    import torch

    rd = cos.shape[-1]
    part, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    turned = part * cos + torch.cat((-part[..., half:], part[..., :half]), -1) * sin
    return torch.cat((turned, rest), -1)


def reference_senders_and_metric(hf, batch, b, corr, resid_mask, attn_mask, inputs_embeds=None):
    """Row ``b`` (unpadded): its senders ``[T, S, d]`` and metric, every port rebuilt token by token
    from the model's own modules (any type of the architecture table; ``inputs_embeds``: the
    row's input embeddings instead of its ids')."""
    import inspect
    import math

    import torch

    from interp.core.architectures import architecture

    s = circuit_shape(hf)
    paths = architecture(s.model_type, "circuit").paths

    def mod(key, layer=None):
        return None if getattr(paths, key) is None else hf.get_submodule(s.path(key, layer))

    def apply(module, x):
        return x if module is None else module(x)

    keep = batch.attention_mask[b].bool()
    ids, roles = batch.input_ids[b, keep], batch.role_ids[b, keep].tolist()
    pos = batch.position_ids[b, keep]
    T, H, G, hd = len(ids), s.n_heads, s.n_groups, s.head_dim
    emb = mod("embed")(ids) if inputs_embeds is None else inputs_embeds
    if mod("pos_embed") is not None:
        emb = emb + mod("pos_embed")(pos)
    senders = [emb]
    rot = mod("rotary")

    def port_input(port, n_senders):
        rows = []
        for t in range(T):
            x = torch.zeros_like(emb[0])
            for k in range(n_senders):
                x = x + (senders[k][t] if resid_mask[k, port, roles[t]] else corr[t, k])
            rows.append(x)
        return torch.stack(rows)

    def projection(layer, x, which):
        """All heads' (groups') ``which`` of the normed input ``x[T, d]``: ``[T, n * hd]``."""
        if paths.qkv is None:
            return mod(which, layer)(x)
        out = mod("qkv", layer)(x)
        if s.fused_qkv == "per_head":
            return out.view(T, H, 3, hd)[:, :, "qkv".index(which)].reshape(T, H * hd)
        start = {"q": 0, "k": H * hd, "v": (H + G) * hd}[which]
        return out[:, start:start + (H if which == "q" else G) * hd]

    def head_vectors(layer, x, which, i):
        """Head / group ``i``'s ``which`` ``[T, hd]`` of the port input ``x`` (norms, rotary)."""
        y = projection(layer, apply(mod("attn_norm", layer), x), which)
        norm = mod(which + "_norm", layer) if which != "v" and s.qk_norm else None
        if norm is not None and s.qk_norm == "across_heads":
            y = norm(y)
        y = y[:, i * hd:(i + 1) * hd]
        if norm is not None and s.qk_norm == "per_head":
            y = norm(y)
        if rot is not None and which != "v":
            y = _rotate(y, cos, sin)
        return y

    for layer in range(s.n_layers):
        if rot is not None:
            kw = {}
            if "layer_type" in inspect.signature(rot.forward).parameters:
                kw["layer_type"] = hf.config.get_text_config().layer_types[layer]
            cos, sin = (t[0] for t in rot(emb[None], pos[None], **kw))
        n = s.senders_before(layer)
        xc = corr[:, :n].sum(1)
        q_c = [head_vectors(layer, port_input(s.port_q(layer, h), n), "q", h) for h in range(H)]
        k_c = [head_vectors(layer, port_input(s.port_k(layer, g), n), "k", g) for g in range(G)]
        v_c = [head_vectors(layer, port_input(s.port_v(layer, g), n), "v", g) for g in range(G)]
        q_x = [head_vectors(layer, xc, "q", h) for h in range(H)]
        k_x = [head_vectors(layer, xc, "k", g) for g in range(G)]
        v_x = [head_vectors(layer, xc, "v", g) for g in range(G)]
        window, cap, o = s.window(layer), s.attn_softcap, mod("o", layer)
        o_bias = getattr(o, "bias", None)
        outs = []
        for h in range(H):
            g = h // s.group_size
            z = []
            for i in range(T):
                scores, values = [], []
                for j in range(i + 1):
                    if window is not None and i - j >= window:
                        continue
                    m = attn_mask[layer, h, roles[j], roles[i]]
                    qi = q_c[h][i] if m[0] else q_x[h][i]
                    kj = k_c[g][j] if m[1] else k_x[g][j]
                    score = (qi * kj).sum() * s.scale(layer)
                    scores.append(score if cap is None else cap * torch.tanh(score / cap))
                    values.append(v_c[g][j] if m[2] else v_x[g][j])
                a = torch.softmax(torch.stack(scores), 0)
                z.append((a[:, None] * torch.stack(values)).sum(0))
            full = torch.zeros(T, H * hd, dtype=emb.dtype)
            full[:, h * hd:(h + 1) * hd] = torch.stack(z)
            out = o(full)  # the head's columns of the output projection, and the whole bias
            outs.append(out if o_bias is None else out - o_bias * (H - 1) / H)
        post = mod("post_attn_norm", layer)
        if post is not None:  # each head's share of the normed sum of the heads
            total = torch.stack(outs).sum(0)
            eps = getattr(post, "variance_epsilon", getattr(post, "eps", None))
            gain = post.weight + 1 if s.norm == "rms_offset" else post.weight
            scale = gain / torch.sqrt(total.pow(2).mean(-1, keepdim=True) + eps)
            outs = [x * scale for x in outs]
        senders += outs
        xm = port_input(s.port_mlp(layer), n if s.parallel else n + H)
        y = mod("mlp", layer)(apply(mod("mlp_norm", layer), xm))
        senders.append(apply(mod("post_mlp_norm", layer), y))
    last = sum(senders[k][-1] if resid_mask[k, s.port_logits, roles[-1]] else corr[-1, k]
               for k in range(s.n_senders))
    logits = mod("lm_head")(mod("final_norm")(last))
    if s.final_softcap is not None:
        logits = s.final_softcap * torch.tanh(logits / s.final_softcap)
    metric = logits[batch.clean_target[b]] - logits[batch.corrupt_target[b]]
    assert math.isfinite(float(metric))
    return torch.stack(senders, 1), float(metric)


def reference_metrics(hf, batch, resid_mask, attn_mask):
    """Per-row reference metric; corrupted senders from the reference itself (pairs) or role means."""
    import torch

    s = circuit_shape(hf)
    out = []
    with torch.no_grad():
        for b in range(batch.size):
            keep = batch.attention_mask[b].bool()
            T = int(keep.sum())
            zeros = torch.zeros(T, s.n_senders, s.d_model, dtype=torch.float64)
            if batch.role_means is not None:
                corr = gather_role_means(batch.role_means, batch.role_ids[b:b + 1, keep])[0]
            elif batch.corrupt_embeds is not None:
                corr, _ = reference_senders_and_metric(hf, batch, b, zeros, *full_masks(s, batch.n_roles),
                                                       inputs_embeds=batch.corrupt_embeds[b, keep])
            else:
                other = batch.corrupt_ids[b:b + 1]
                twin = type(batch)(other, batch.attention_mask[b:b + 1], batch.position_ids[b:b + 1],
                                   batch.role_ids[b:b + 1], batch.clean_target[b:b + 1],
                                   batch.corrupt_target[b:b + 1], batch.n_roles, batch.end_role,
                                   corrupt_ids=other)
                corr, _ = reference_senders_and_metric(hf, twin, 0, zeros, *full_masks(s, batch.n_roles))
            out.append(reference_senders_and_metric(hf, batch, b, corr, resid_mask, attn_mask)[1])
    return np.array(out)


def _random_masks(shape, n_roles, p, seed):
    rng = np.random.default_rng(seed)
    full_r, full_a = full_masks(shape, n_roles)
    return rng.random(full_r.shape) < p, rng.random(full_a.shape) < p


def _means(hf, seed=1):
    """Role means of every sender over a few other random rows (clean forwards of the patcher)."""
    import torch

    s = circuit_shape(hf)
    other = random_batch(hf, rows=3, width=9, seed=seed)
    patcher = EdgePatcher(hf, other)
    with torch.no_grad():
        senders = patcher.unrolled.forward(patcher.clean_embeds, other, capture=True)[1]
    oh = other.role_onehot(torch.float64)
    sums = torch.einsum("btsd,btr->srd", senders, oh)
    return sums / oh.sum((0, 1))[None, :, None]


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_full_circuit_is_clean_and_empty_is_corrupted(arch, monkeypatch):
    # transformers takes RMS norms and the attention softmax in float32 even for a float64 model:
    # float64_exact makes them float64 (on both sides), so the identities hold to float64 precision
    hf = float64_exact(model(arch), monkeypatch)
    batch = random_batch(hf, rows=2, width=7)
    patcher = EdgePatcher(hf, batch)
    s = circuit_shape(hf)
    np.testing.assert_allclose(patcher.metrics(*full_masks(s, N_ROLES)), hf_metric(hf, batch), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(patcher.metrics(*empty_masks(s, N_ROLES)), hf_metric(hf, batch, corrupt=True),
                               rtol=1e-9, atol=1e-12)
    assert patcher.full() != pytest.approx(patcher.empty())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("corruption", ["ids", "means"])
def test_patcher_equals_independent_unrolled_forward(arch, corruption):
    hf = model(arch)
    means = _means(hf) if corruption == "means" else None
    batch = random_batch(hf, rows=2, width=6, corruption=corruption, means=means, seed=3)
    patcher = EdgePatcher(hf, batch)
    s = circuit_shape(hf)
    for seed, p in ((0, 0.5), (1, 0.8), (2, 0.2), (3, 0.03), (4, 0.97)):  # sparse and near-full too
        masks = _random_masks(s, N_ROLES, p, seed)
        got = patcher.metrics(*masks)
        np.testing.assert_allclose(got, reference_metrics(hf, batch, *masks), rtol=1e-9, atol=1e-11)
    if corruption == "means":  # none kept: the logits read the summed means at END
        import torch

        last = means[:, END].sum(0)
        logits = hf.get_submodule(s.path("lm_head"))(hf.get_submodule(s.path("final_norm"))(last)).detach()
        if s.final_softcap is not None:
            logits = s.final_softcap * torch.tanh(logits / s.final_softcap)
        want = (logits[batch.clean_target] - logits[batch.corrupt_target]).numpy()
        np.testing.assert_allclose(patcher.metrics(*empty_masks(s, N_ROLES)), want, rtol=1e-9, atol=1e-11)
        assert torch.isfinite(torch.tensor(want)).all()


def _unpadded_row(batch, b):
    """Row ``b`` of a left-padded batch as a batch of one without its padding."""
    keep = batch.attention_mask[b].bool()
    return type(batch)(batch.input_ids[b:b + 1, keep], batch.attention_mask[b:b + 1, keep],
                       batch.position_ids[b:b + 1, keep], batch.role_ids[b:b + 1, keep],
                       batch.clean_target[b:b + 1], batch.corrupt_target[b:b + 1], N_ROLES, END,
                       corrupt_ids=batch.corrupt_ids[b:b + 1, keep])


@pytest.mark.parametrize("corruption", ["ids", "means"])
def test_remote_local_gives_the_same_scores(corruption, monkeypatch, tmp_path):
    from nnsight.intervention.backends.local import LocalSimulationBackend

    shipped = []
    real_call = LocalSimulationBackend.__call__
    monkeypatch.setattr(LocalSimulationBackend, "__call__",
                        lambda self, tracer: (shipped.append(1), real_call(self, tracer))[1])
    hf = model("qwen2")
    means = _means(hf) if corruption == "means" else None
    batch = random_batch(hf, rows=2, width=7, corruption=corruption, means=means, seed=9)
    nn_model = as_nnsight(hf, bpe_tokenizer())
    local = edge_attribution(nn_model, [batch], ["a", "b", "c", "END"], ig_steps=2)
    remote = edge_attribution(nn_model, [batch], ["a", "b", "c", "END"], ig_steps=2, remote="local")
    np.testing.assert_array_equal(np.isnan(local.resid), np.isnan(remote.resid))
    np.testing.assert_allclose(remote.resid, local.resid, rtol=1e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(remote.attn, local.attn, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert len(shipped) == 1  # one session (one request) per batch, IG steps included
    # the result is in the contract's shapes
    s = circuit_shape(hf)
    assert local.resid.shape == (s.n_senders, s.n_ports, N_ROLES) and local.resid.dtype == np.float32
    assert local.attn.shape == (s.n_layers, s.n_heads, N_ROLES, N_ROLES, 3)
    assert np.isnan(local.resid[:, s.port_logits, :END]).all() and not np.isnan(local.resid[0, s.port_logits, END])
    saved = local.edge_scores().save(tmp_path / "scores.npz")
    back = type(local.edge_scores()).load(saved)  # the graph side reads what the engine scored
    assert back.shape == s.layout and back.roles == ["a", "b", "c", "END"] and back.meta["ig_steps"] == 2
    np.testing.assert_array_equal(back.resid, local.resid)


def test_unsupported_architecture_is_refused():
    from transformers import BertConfig

    with pytest.raises(GARConfigError, match="unsupported architecture 'bert'"):
        circuit_shape(BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1))


def test_edge_layout_matches_the_contract():
    s = circuit_shape(model("llama"))
    L, H, G = s.n_layers, s.n_heads, s.n_groups
    assert s.n_senders == 1 + L * (H + 1) and s.n_ports == L * (H + 2 * G + 1) + 1
    arrays = s.contract_arrays()
    senders, ports = arrays, arrays
    assert senders["sender_kind"][s.sender_head(1, 2)] == "head" and senders["sender_head"][s.sender_head(1, 2)] == 2
    assert senders["sender_kind"][s.sender_mlp(0)] == "mlp" and senders["sender_layer"][s.sender_mlp(0)] == 0
    assert ports["port_kind"][s.port_k(1, 1)] == "k" and ports["port_index"][s.port_k(1, 1)] == 1
    assert ports["port_kind"][s.port_logits] == "logits"
    exists = s.edge_exists()
    assert exists[0].all()  # the embedding feeds every port
    assert exists[s.sender_head(0, 0), s.port_mlp(0)] and not exists[s.sender_head(0, 0), s.port_q(0, 1)]
    assert not exists[s.sender_mlp(0), s.port_mlp(0)] and exists[s.sender_mlp(0), s.port_v(1, 0)]
    assert exists[:, s.port_logits].all()


def test_multi_batch_scores_and_patching_are_row_means():
    from interp.circuit.eap import role_presence, scores_from_sums
    from interp.circuit.patch import PatchSet

    hf = model("llama")
    nn_model = as_nnsight(hf, bpe_tokenizer())
    b1, b2 = random_batch(hf, rows=2, width=6, seed=1), random_batch(hf, rows=1, width=8, seed=2)
    roles = ["a", "b", "c", "END"]
    res = edge_attribution(nn_model, [b1, b2], roles)
    sums = [attribution_batch(nn_model, b) for b in (b1, b2)]
    pres = [role_presence(b) for b in (b1, b2)]
    again = scores_from_sums(res.shape, roles, sums[0][0] + sums[1][0], sums[0][1] + sums[1][1], 3,
                             pres[0][0] | pres[1][0], pres[0][1] | pres[1][1], END)
    np.testing.assert_array_equal(res.resid, again.resid)
    np.testing.assert_array_equal(res.attn, again.attn)
    assert res.n_rows == 3
    ps = PatchSet(hf, [b1, b2])
    want = np.mean(hf_metric(hf, b1) + hf_metric(hf, b2))
    assert ps.full() == pytest.approx(want, rel=1e-6)
    masks = _random_masks(ps.shape, N_ROLES, 0.5, 3)
    assert ps.evaluate(*masks) == pytest.approx(
        (EdgePatcher(hf, b1).metrics(*masks).sum() + EdgePatcher(hf, b2).metrics(*masks).sum()) / 3, rel=1e-12)


def test_per_row_role_means_equal_shared_ones():
    """Role means given per row (``[B, S, R, d]``, what leave-one-out produces) are read per row."""
    import dataclasses

    hf = model("llama")
    nn_model = as_nnsight(hf, bpe_tokenizer())
    means = _means(hf)
    shared = random_batch(hf, rows=2, width=7, corruption="means", means=means, seed=12)
    per_row = dataclasses.replace(shared, role_means=means[None].expand(2, *means.shape).clone())
    r1, a1 = attribution_batch(nn_model, shared)
    r2, a2 = attribution_batch(nn_model, per_row)
    np.testing.assert_allclose(r2, r1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a2, a1, rtol=1e-12, atol=1e-15)
    assert np.abs(r1).max() > 0
    masks = _random_masks(circuit_shape(hf), N_ROLES, 0.5, 1)
    np.testing.assert_allclose(EdgePatcher(hf, per_row).metrics(*masks), EdgePatcher(hf, shared).metrics(*masks),
                               rtol=1e-12)
    # a different mean for the second row changes only the second row's metric
    other = per_row.role_means.clone()
    other[1] *= 0.5
    changed = EdgePatcher(hf, dataclasses.replace(per_row, role_means=other)).metrics(*masks)
    base = EdgePatcher(hf, shared).metrics(*masks)
    assert changed[0] == pytest.approx(base[0], rel=1e-12) and changed[1] != pytest.approx(base[1])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block,gather,mode", [(1, 0.0, "block"), (1, 1.0, "block"), (1, 1.0, "layer"),
                                               (1, 0.34, "auto"), (2, 1.0, "block"), (3, 0.0, "layer")])
def test_patcher_paths_equal_the_reference(arch, block, gather, mode, monkeypatch):
    """Every way the patcher sums senders (blocks of layers or one layer at a time, dense products
    or only the senders with a minority edge, kept or dropped form) gives the reference."""
    import interp.circuit.patch as patch

    monkeypatch.setattr(patch, "BLOCK_LAYERS", block)
    monkeypatch.setattr(patch, "GATHER_SHARE", gather)
    monkeypatch.setattr(patch, "PREFIX_MODE", mode)
    monkeypatch.setattr(patch, "CHUNK_ELEMENTS", 64)  # several token chunks per role
    hf = float64_exact(model(arch), monkeypatch)
    batch = random_batch(hf, rows=2, width=6, seed=4)
    patcher = EdgePatcher(hf, batch)
    s = circuit_shape(hf)
    for seed, p in ((0, 0.03), (1, 0.5), (2, 0.97)):
        masks = _random_masks(s, N_ROLES, p, seed)
        np.testing.assert_allclose(patcher.metrics(*masks), reference_metrics(hf, batch, *masks), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(patcher.metrics(*full_masks(s, N_ROLES)), hf_metric(hf, batch), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_float32_folded_norm_path_matches_the_float64_reference(arch):
    """In float32 an RMS attention norm is folded into the q/k/v projections (its own code path;
    a LayerNorm, or no norm, keeps the module): it agrees with the float64 reference to float32
    precision, padding included."""
    hf64, hf32 = model(arch), model(arch, "float32")
    batch = random_batch(hf64, rows=3, width=7, pad=(0, 2, 1), seed=5)
    patcher = EdgePatcher(hf32, batch)
    s = circuit_shape(hf32)
    fold = s.pre_attention_norm and s.norm in ("rms", "rms_offset")
    assert patcher.unrolled._weights(0, patcher.clean_embeds.dtype)["fold"] == fold
    for seed, p in ((0, 0.1), (1, 0.5), (2, 0.9)):
        masks = _random_masks(s, N_ROLES, p, seed)
        want = np.concatenate([reference_metrics(hf64, _unpadded_row(batch, b), *masks) for b in range(3)])
        np.testing.assert_allclose(patcher.metrics(*masks), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block", [1, 4])
def test_edges_before_the_first_difference_have_exactly_zero_effect_in_float32(arch, block, monkeypatch):
    """Under pair patching the senders before the first differing token are the same in both runs:
    dropping their edges changes nothing, bit for bit, even in float32 (the patched run takes
    every sum in the corrupted run's order), so spot checks of tiny effects are not rounding noise."""
    import dataclasses

    import torch

    import interp.circuit.patch as patch

    monkeypatch.setattr(patch, "BLOCK_LAYERS", block)
    hf = model(arch, "float32")
    batch = random_batch(hf, rows=2, width=7, seed=7)  # the last 3 tokens resampled
    roles = torch.tensor([[0, 0, 1, 1, 2, 2, END]] * 2)
    batch = dataclasses.replace(batch, role_ids=roles)
    assert batch.first_difference() == 4
    patcher = EdgePatcher(hf, batch)
    s = circuit_shape(hf)
    full_r, full_a = full_masks(s, N_ROLES)
    # every sender of the patched run equals the corrupted one before the first difference
    unrolled = patcher.unrolled
    with torch.no_grad():
        corrupt = unrolled.forward(unrolled.embed(batch.corrupt_ids), batch, capture=True)[1]
        for masks in ((full_r, full_a), _random_masks(s, N_ROLES, 0.5, 1), _random_masks(s, N_ROLES, 0.1, 2)):
            got = unrolled.forward(patcher.clean_embeds, batch, corrupt, *masks, capture=True)[1]
            assert torch.equal(got[:, :4], corrupt[:, :4]) and not torch.equal(got[:, 4:], corrupt[:, 4:])
    base = patcher.metrics(full_r, full_a)
    exists = s.edge_exists()
    rng = np.random.default_rng(0)
    for _ in range(10):
        sender, port = np.argwhere(exists)[rng.integers(exists.sum())]
        for role in (0, 1):
            m = full_r.copy()
            m[sender, port, role] = False
            np.testing.assert_array_equal(patcher.metrics(m, full_a), base)
    for role in (0, 1):  # every edge of those roles at once: residual, attention into them, and
        # the keys and values they give to later queries
        m_r, m_a = full_r.copy(), full_a.copy()
        m_r[:, :, role] = False
        m_a[:, :, :, role] = False
        m_a[:, :, role, :, 1:] = False
        np.testing.assert_array_equal(patcher.metrics(m_r, m_a), base)
        m_a = full_a.copy()
        m_a[:, :, role, 2:, 2] = False  # the values only, for queries at later roles: other code
        np.testing.assert_array_equal(patcher.metrics(full_r, m_a), base)
    m_r = full_r.copy()
    m_r[:, s.port_logits, END] = False  # the logits at END: a real effect
    assert np.all(patcher.metrics(m_r, full_a) != base)
