"""Edge attribution patching (EAP, optionally EAP-IG) at role level, in one nnsight session per batch.

Scores estimate, to first order, how the metric ``m = logit(clean_target) - logit(corrupt_target)``
(last position) moves when one edge of the clean run is switched to its corrupted value (the
direction of ``gar patch``: negative = the edge carries the clean answer). Layout and semantics of
edges: :mod:`interp.circuit.ports` and :mod:`interp.circuit.patch`; senders and ports are defined as
in the exact patcher, for every architecture of the table (its quirks are :class:`CircuitShape`
fields and table paths, never the model type).

**Senders** (what the multipliers ``c^corr - c`` are taken of): ``emb`` is the residual stream
entering layer 0 (the embedding module's output, plus the position embedding where the model has
one); head ``h`` of a layer is ``z_h W_o[:, h]^T`` (+ ``b_o / H`` where the output projection has a
bias), times ``gain / rms(o)`` of that run's own attention output ``o`` where a norm follows
attention (Gemma-2/3, OLMo-2); ``mlp`` is what the MLP adds to the stream (after its post norm).

**Residual edges** ``sender@r -> port@r``: ``sum_{t in r} (c_s^corr(t) - c_s(t)) . g_p(t)`` where
``g_p`` is the gradient of ``m`` w.r.t. the port's *own copy* of the pre-norm residual input. ``g_p``
is obtained per port without a backward per port: the gradient at the q (k, v) projection's output
(a fused projection's columns split per its layout), restricted to head ``h``'s (group ``g``'s)
columns, is pulled back through that projection's rows and the attention norm's Jacobian (RMSNorm
with gain ``w`` or ``1 + w``, LayerNorm with gain; none where q/k/v read the raw stream) in plain
torch. A per-head q/k norm is inside the autograd; a q/k norm across heads (OLMo-2) is not: port
``h``'s gradient is head ``h``'s slice of the gradient at the norm's output pulled back through the
norm's Jacobian at the clean pre-norm q and then through the whole projection. ``mlp`` ports pull
the gradient at the MLP's input back through the MLP norm (where there is none, the MLP reads a
copy of the stream of its own); ``logits`` is the gradient at the final norm's input. Under a
parallel residual (GPT-NeoX) the mlp port is fed only by the senders before its layer. One
contraction per layer (``[B, T, S_l, d] x [B, T, P_l, d]``, then a one-hot role sum), never one per edge.

**Attention edges** of head ``(l, h)`` from source role ``s`` (key positions ``j``) to
destination role ``t`` (query positions ``i``), summed over ``i in t`` and the keys ``j in s`` the
query may read (causal, not padding, inside the layer's sliding window):

* ``c = 2`` (value): ``A(i, j) * g_z(i) . (v^corr(j) - v(j))``  (exact: the output is linear in v);
* ``c = 1`` (key): ``dm/dS(i, j) * scale_l * q(i) . (k^corr(j) - k(j))``;
* ``c = 0`` (query): ``dm/dS(i, j) * scale_l * (q^corr(i) - q(i)) . k(j)``;

with ``A`` the attention pattern, ``S`` the scores after the soft cap (``dm/dS`` then carries the
cap's ``1 - tanh^2``), ``g_z`` the gradient at the head's output (the output projection's input),
q/k after the q/k norms and the (partial) rotary embedding. ``q^corr`` etc. are those of the
all-corrupted port input (pair patching: the corrupted run's layer input; role means: the summed
means), as in the exact patcher; the multipliers' clean ``q`` etc. are recomputed from the clean
layer input by the same arithmetic (norms at float32 or better), so equal inputs give exactly zero.

With ``exact_softmax`` (AtP*'s QK fix, per source role) the q and k edges ``s -> t`` are instead
``sum_{i in t} g_z(i) . sum_j (A'(i, j) - A(i, j)) v(j)``, ``A'`` the pattern recomputed with the
scores of the keys of role ``s`` taken with the corrupted key (c = 1) or query (c = 0): exact
through the softmax, first order after the head's output. ``R`` extra softmaxes per head. The
residual edges into the head's ports are exact through the attention norm and the head too: each
earlier sender's difference is added to this run's port input (from the first column where clean
and corrupted tokens differ), and the queries, keys and values are recomputed from it (norm,
projection, q/k norm, rotary). ``s@r -> q``: ``sum_{i in r} g_z(i) . sum_j (A'(i, j) - A(i, j)) v(j)``,
``A'`` with the recomputed query at ``i``; ``s@r -> k``: ``sum_i g_z(i) . sum_j (A'(i, j) - A(i, j)) v(j)``
over every query, ``A'`` with the recomputed keys at the positions of role ``r`` (one pattern per
source role, from per-role sums of the unnormalised pattern: ``sum_j A' g_z . v = N_r / Z_r``, the
sums of the other roles added, never subtracted, in float64); ``s@r -> v``:
``sum_{j in r} g_v(j) . (v'(j) - v(j))`` (the output is linear in v given the pattern). A saturated
head's softmax has no gradient, so plain EAP scores its query path ~0 while patching it moves the
metric most; a norm linearised at a one-hot stream gives an edge that changes no query, key or value
a score (the compiled fixtures: ``interp.circuit.groundtruth``). And the ``logits`` edges are exact:
the metric recomputed through the final norm and the two target rows of the unembedding with each
sender's difference added at the last position (plain EAP linearises the final norm). The mlp
ports stay first order.

**EAP-IG** (``ig_steps = n > 1``): the gradients are averaged over ``n`` forwards whose embedding
module outputs are ``e^corr + (k / n) (e - e^corr)``, ``k = n .. 1`` (``n = 1`` is plain EAP; the
model adds its position embedding, so the ``emb`` sender moves on the same line); the multipliers
stay the clean-minus-corrupted differences.

Everything runs in one ``model.session`` per batch (one NDIF request): a graph-free forward of the
corrupted rows (pair patching), then per IG step a forward of the clean rows, ``torch.autograd.grad``
of ``m`` w.r.t. the captured projection outputs, and the contractions; only the role-aggregated
``[S, P, R]`` and ``[L, H, R, R, 3]`` sums leave the session. The traced code is plain torch on
captured tensors, ints, bools and envoys (no function of this package): the quirks are Python
``if``s on bools computed before the session, the rotary tables (:func:`rotary_tables`) and the
per-layer masks come in as tensors, so ``remote=True`` runs the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from gar_tasks.errors import GARConfigError

from ..core.model import Remote, check_remote, forward_kwargs, frozen, is_nnsight
from .batch import CircuitBatch
from ..core.architectures import architecture
from .ports import CircuitShape, attention_masks, circuit_shape, rotary_tables

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .graph import EdgeScores

Progress = Callable[[int, int], Any]

#: under ``exact_softmax``, the residual q/k/v-port edges recompute the ports of this many senders at
#: once (memory: ``B * T * chunk * (d + 3 * H * hd) + 4 * B * chunk * H * T * T`` values per layer)
EXACT_SOFTMAX_CHUNK = 32


@dataclass
class AttributionResult:
    """Role-level edge scores averaged over rows, in the contract's shapes (float32, NaN = no edge).

    ``resid[S, P, R]``, ``attn[L, H, R, R, 3]``; ``n_rows`` rows were scored; ``meta`` holds the
    options (``exact_softmax``); a caller adds the counterfactual's ``CFSet.reachability()``.
    """

    resid: "np.ndarray"
    attn: "np.ndarray"
    roles: list[str]
    shape: CircuitShape
    n_rows: int
    ig_steps: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    def edge_scores(self) -> "EdgeScores":
        """The scores as the graph side's :class:`~interp.circuit.graph.EdgeScores` (what ``scores.npz`` holds)."""
        from .graph import EdgeScores

        meta = {**self.meta, "rows": self.n_rows, "ig_steps": self.ig_steps}
        return EdgeScores(self.resid, self.attn, list(self.roles), self.shape.layout, meta)


def _check(model: Any, batch: CircuitBatch, remote: Remote) -> CircuitShape:
    check_remote(model, remote)
    if not is_nnsight(model):
        raise GARConfigError(f"expected an nnsight TransformersModel, got {type(model).__name__}: "
                             "wrap it with interp.core.model.as_nnsight(model, tokenizer)")
    if not isinstance(batch, CircuitBatch):
        raise GARConfigError(f"expected a CircuitBatch, got {type(batch).__name__}")
    shape = circuit_shape(model)
    return shape


def forward_inputs(model: Any, batch: CircuitBatch) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The keyword inputs of the clean forward and of the corrupted one (None under role means)."""
    extra = forward_kwargs(model)
    clean = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
             "position_ids": batch.position_ids, **extra}
    if batch.corruption == "corrupt_ids":
        return clean, {**clean, "input_ids": batch.corrupt_ids}
    if batch.corruption == "corrupt_embeds":
        return clean, {"inputs_embeds": batch.corrupt_embeds, "attention_mask": batch.attention_mask,
                       "position_ids": batch.position_ids, **extra}
    return clean, None


def attribution_batch(model: Any, batch: CircuitBatch, *, ig_steps: int = 1, exact_softmax: bool = False,
                      remote: Remote = False) -> tuple["np.ndarray", "np.ndarray"]:
    """Sums over the batch's rows of the role-level EAP scores: ``(resid [S, P, R], attn [L, H, R, R, 3])``
    as float64 (zeros where no edge: see :func:`edge_presence` for the NaN pattern).

    ``model``: an nnsight ``TransformersModel`` of any architecture of the table. ``exact_softmax``:
    q/k attention edges and residual q/k/v-port edges exact through their head (q and k through its
    softmax), logits edges exact (see the module docstring).
    """
    import nnsight
    import torch

    shape = _check(model, batch, remote)
    if ig_steps < 1:
        raise GARConfigError(f"ig_steps must be at least 1, got {ig_steps}")
    L, H, G, hd, d = shape.n_layers, shape.n_heads, shape.n_groups, shape.head_dim, shape.d_model
    S, P, R = shape.n_senders, shape.n_ports, batch.n_roles
    B, T = batch.size, batch.width
    gs, eps = shape.group_size, shape.eps
    ppl = shape.ports_per_layer
    clean_in, corrupt_in = forward_inputs(model, batch)
    means = batch.role_means.detach() if batch.role_means is not None else None
    role_idx = batch.role_ids.clamp(min=0)
    real_bt = batch.attention_mask.bool()
    alphas = [1.0 - k / ig_steps for k in range(ig_steps)]  # 1 (the clean run) first
    ct, xt = batch.clean_target[:, None], batch.corrupt_target[:, None]
    onehot_f = batch.role_onehot(torch.float64)
    # ---- the block's quirks as plain bools, ints, floats and tensors (read from the shape, never the type)
    paths = architecture(shape.model_type, "circuit").paths
    hf = getattr(model, "_module", model)
    fused = shape.fused_qkv is not None
    per_head_qkv = shape.fused_qkv == "per_head"
    conv1d = shape.conv1d
    layernorm = shape.norm == "layernorm"
    off = 1.0 if shape.norm == "rms_offset" else 0.0  # RMSNorm gain 1 + w
    pre_norm = shape.pre_attention_norm and paths.attn_norm is not None
    has_mlp_norm = paths.mlp_norm is not None
    post_attn = shape.post_norms and paths.post_attn_norm is not None
    post_mlp = shape.post_norms and paths.post_mlp_norm is not None
    qk_head, qk_across = shape.qk_norm == "per_head", shape.qk_norm == "across_heads"
    parallel = shape.parallel
    cap = shape.attn_softcap
    scales = [shape.scale(lyr) for lyr in range(L)]
    # float32 at least: a remote skeleton's dtype is its config's (often half), not the server's
    tables = (rotary_tables(model, batch.position_ids, torch.promote_types(hf.dtype, torch.float32))
              if shape.rotary_dims else None)
    rd = shape.rotary_dims if tables is not None else 0
    rot = [(c[:, :, None], s_[:, :, None]) for c, s_ in tables] if tables is not None else [None] * L
    allowed, valid = attention_masks(shape, batch)
    chunk = EXACT_SOFTMAX_CHUNK  # senders per recomputed port block (exact_softmax's residual edges)
    # columns before the first one where clean and corrupted tokens differ carry no difference
    first_diff = min(batch.first_difference() or 0, T - 1)

    def has_bias(key: str, lyr: int) -> bool:
        return getattr(hf.get_submodule(shape.path(key, lyr)), "bias", None) is not None

    qkv_keys = ("qkv",) if fused else ("q", "k", "v")
    qkv_bias = {key: has_bias(key, 0) for key in qkv_keys}
    o_bias = has_bias("o", 0)
    ln_bias = layernorm  # a LayerNorm's bias enters the normed port input
    # every module from the architecture table, resolved to envoys before the session (None: absent)

    def envs(key: str) -> list[Any]:
        if getattr(paths, key) is None:
            return [None] * L
        return [model.get(shape.path(key, lyr)) for lyr in range(L)]

    emb_env, fin_env = model.get(shape.path("embed")), model.get(shape.path("final_norm"))
    lm_env = model.get(shape.path("lm_head"))
    lm_bias = getattr(hf.get_submodule(shape.path("lm_head")), "bias", None) is not None
    fcap = shape.final_softcap
    blk_env, o_env, mlp_env = envs("layer"), envs("o"), envs("mlp")
    q_env, k_env, v_env, qkv_env = envs("q"), envs("k"), envs("v"), envs("qkv")
    qn_env, kn_env = envs("q_norm"), envs("k_norm")
    n1_env, n2_env, pa_env, pm_env = envs("attn_norm"), envs("mlp_norm"), envs("post_attn_norm"), envs("post_mlp_norm")
    # ---------------------------------------------------------------------------------------
    # traced code below: plain torch on captured values only (it must run on NDIF as is). What one
    # trace leaves for the next travels in the dict `st` (mutated, never rebound): on NDIF a name
    # bound inside one trace of a session is not seen by the next. No comment line may stand in the
    # session body outside its traces, nor a statement spanning several lines there (nnsight's line
    # mapping of the compiled body skips the one and miscounts the other). Architecture quirks are
    # Python `if`s on the plain bools above; config-derived tables (rotary, masks) come in as tensors.
    with frozen(model), model.session(remote=remote):
        weights = []
        for lyr in range(L):
            wts = {}
            if fused:
                wf = qkv_env[lyr].weight
                if conv1d:
                    wf = wf.T
                bf = qkv_env[lyr].bias if qkv_bias["qkv"] else None
                if per_head_qkv:
                    w4 = wf.reshape(H, 3, hd, d)
                    wts.update(wq=w4[:, 0], wk=w4[:, 1], wv=w4[:, 2])
                    if bf is not None:
                        b3 = bf.reshape(H, 3, hd)
                        wts.update(bq=b3[:, 0].reshape(-1), bk=b3[:, 1].reshape(-1), bv=b3[:, 2].reshape(-1))
                else:
                    wts.update(wq=wf[:H * hd].reshape(H, hd, d), wk=wf[H * hd:(H + G) * hd].reshape(G, hd, d))
                    wts["wv"] = wf[(H + G) * hd:].reshape(G, hd, d)
                    if bf is not None:
                        wts.update(bq=bf[:H * hd], bk=bf[H * hd:(H + G) * hd], bv=bf[(H + G) * hd:])
            else:
                wts.update(wq=q_env[lyr].weight.reshape(H, hd, d), wk=k_env[lyr].weight.reshape(G, hd, d))
                wts["wv"] = v_env[lyr].weight.reshape(G, hd, d)
                if qkv_bias["q"]:
                    wts["bq"] = q_env[lyr].bias
                if qkv_bias["k"]:
                    wts["bk"] = k_env[lyr].bias
                if qkv_bias["v"]:
                    wts["bv"] = v_env[lyr].bias
            wo = o_env[lyr].weight
            if conv1d:
                wo = wo.T
            wts["wo"] = wo.reshape(d, H, hd)
            if o_bias:
                wts["bo"] = o_env[lyr].bias
            if pre_norm:
                wts["n1"] = n1_env[lyr].weight
                if ln_bias:
                    wts["n1b"] = n1_env[lyr].bias
            if has_mlp_norm:
                wts["n2"] = n2_env[lyr].weight
            if qk_head or qk_across:
                wts.update(qn=qn_env[lyr].weight, kn=kn_env[lyr].weight)
            if post_attn:
                wts["pa"] = pa_env[lyr].weight
            weights.append(wts)
        fin_w = fin_env.weight
        fin_b = fin_env.bias if layernorm else None
        lm_w = lm_env.weight
        lm_b = lm_env.bias if lm_bias else None
        st = {}
        if corrupt_in is not None:
            with model.trace(corrupt_in):
                st.update(c_res=[], c_z=[], c_ot=[], c_mlp=[])
                for lyr in range(L):
                    st["c_res"].append(blk_env[lyr].input.detach())
                    st["c_z"].append(o_env[lyr].input.detach())
                    if post_attn:
                        st["c_ot"].append(pa_env[lyr].input.detach())
                    if post_mlp:
                        st["c_mlp"].append(pm_env[lyr].output.detach())
                    else:
                        st["c_mlp"].append(mlp_env[lyr].output.detach())
        for step, alpha in enumerate(alphas):
            with model.trace(clean_in):
                emb = emb_env.output
                dev, dt = emb.device, emb.dtype
                zero = torch.zeros((), device=dev, dtype=dt)
                if step > 0:
                    # EAP-IG: the embedding module's output between its corrupted and clean values
                    base = st["c_all"][:, :, 0] - st["pos"]
                    emb = (base + alpha * (emb.detach() - base)).detach()
                    emb_env.output = emb
                emb.requires_grad_(True)
                xs, qs, ks, vs, qns, kns, zs, ots, mids, mis, mos = [], [], [], [], [], [], [], [], [], [], []
                for lyr in range(L):  # in the order the forward reaches them
                    xs.append(blk_env[lyr].input)
                    if fused:
                        qs.append(qkv_env[lyr].output)
                    else:
                        qs.append(q_env[lyr].output)
                    if qk_across:
                        qns.append(qn_env[lyr].output)
                    if not fused:
                        ks.append(k_env[lyr].output)
                    if qk_across:
                        kns.append(kn_env[lyr].output)
                    if not fused:
                        vs.append(v_env[lyr].output)
                    zs.append(o_env[lyr].input)
                    if post_attn:
                        ots.append(pa_env[lyr].input)
                    if has_mlp_norm:
                        mids.append(n2_env[lyr].input)
                    if has_mlp_norm:
                        mis.append(mlp_env[lyr].input)
                    else:
                        # the raw stream: a copy of its own, so its gradient is the MLP's path only
                        mi = mlp_env[lyr].input.clone()
                        mlp_env[lyr].input = mi
                        mis.append(mi)
                    if post_mlp:
                        mos.append(pm_env[lyr].output)
                    else:
                        mos.append(mlp_env[lyr].output)
                fin = fin_env.input
                logits = model.output.logits[:, -1, :]
                metric = (logits.gather(1, ct.to(dev)) - logits.gather(1, xt.to(dev))).sum()
                grads = list(torch.autograd.grad(metric, qs + ks + vs + qns + kns + zs + mis + [fin]))
                g_proj = grads[:len(qs + ks + vs)]
                grads = grads[len(qs + ks + vs):]
                g_qn, g_kn = grads[:len(qns)], grads[len(qns):len(qns + kns)]
                grads = grads[len(qns + kns):]
                g_z, g_mi, g_fin = grads[:L], grads[L:2 * L], grads[2 * L]
                if step == 0:
                    # the corrupted senders [B, T, S, d] and the all-corrupted layer inputs
                    st["pos"] = (xs[0] - emb).detach()
                    if corrupt_in is None:
                        mm = means.to(dev, dt)
                        ridx = role_idx.to(dev)
                        if mm.dim() == 3:
                            c_all = mm[:, ridx].permute(1, 2, 0, 3)
                        else:
                            c_all = mm[torch.arange(B, device=dev)[:, None], :, ridx]
                        c_cum = c_all.cumsum(2)
                        c_res = [c_cum[:, :, lyr * (H + 1)] for lyr in range(L)]
                    else:
                        c_res = [x.to(dev, dt) for x in st["c_res"]]
                        heads_c = []
                        for lyr in range(L):
                            wts = weights[lyr]
                            oc = torch.einsum("bthe,dhe->bthd", st["c_z"][lyr].to(dev, dt).view(B, T, H, hd), wts["wo"])
                            if o_bias:
                                oc = oc + wts["bo"] / H
                            if post_attn:
                                ot = st["c_ot"][lyr].to(dev, dt)
                                r_o = torch.rsqrt(ot.pow(2).mean(-1, keepdim=True) + eps)
                                oc = oc * ((wts["pa"] + off) * r_o)[:, :, None]
                            heads_c.append(oc)
                            heads_c.append(st["c_mlp"][lyr].to(dev, dt)[:, :, None])
                        c_all = torch.cat([c_res[0][:, :, None]] + heads_c, 2)
                    real = real_bt.to(dev)
                    onehot = onehot_f.to(dev, dt)
                    delta = torch.zeros(B, T, S, d, device=dev, dtype=dt)
                    delta[:, :, 0] = torch.where(real[:, :, None], c_all[:, :, 0] - xs[0].detach(), zero)
                    resid_acc = torch.zeros(S, P, R, device=dev, dtype=torch.float64)
                    attn_acc = torch.zeros(L, H, R, R, 3, device=dev, dtype=torch.float64)
                    st.update(c_all=c_all, real=real, onehot=onehot, delta=delta, q_cl=[], k_cl=[], v_cl=[],
                              q_cx=[], k_cx=[], v_cx=[], resid=resid_acc, attn=attn_acc)
                c_all, real, onehot, delta = st["c_all"], st["real"], st["onehot"], st["delta"]
                resid_acc, attn_acc = st["resid"], st["attn"]
                for lyr in range(L):
                    wts = weights[lyr]
                    wq, wk, wv = wts["wq"], wts["wk"], wts["wv"]
                    n_before = 1 + lyr * (H + 1)
                    first = n_before
                    if fused:
                        out, g_out = qs[lyr].detach(), g_proj[lyr]
                        if per_head_qkv:
                            o5, g5 = out.view(B, T, H, 3, hd), g_out.view(B, T, H, 3, hd)
                            q_pre, k_pre, v_pre = o5[:, :, :, 0], o5[:, :, :, 1], o5[:, :, :, 2]
                            gq, gk, gv = g5[:, :, :, 0], g5[:, :, :, 1], g5[:, :, :, 2]
                        else:
                            q_pre = out[..., :H * hd].view(B, T, H, hd)
                            k_pre = out[..., H * hd:(H + G) * hd].view(B, T, G, hd)
                            v_pre = out[..., (H + G) * hd:].view(B, T, G, hd)
                            gq = g_out[..., :H * hd].view(B, T, H, hd)
                            gk = g_out[..., H * hd:(H + G) * hd].view(B, T, G, hd)
                            gv = g_out[..., (H + G) * hd:].view(B, T, G, hd)
                    else:
                        q_pre, k_pre = qs[lyr].detach().view(B, T, H, hd), ks[lyr].detach().view(B, T, G, hd)
                        v_pre = vs[lyr].detach().view(B, T, G, hd)
                        gq, gk = g_proj[lyr].view(B, T, H, hd), g_proj[L + lyr].view(B, T, G, hd)
                        gv = g_proj[2 * L + lyr].view(B, T, G, hd)
                    # ---- q/k/v port gradients at the normed port input, per head / group
                    uq = torch.einsum("bthe,hed->bthd", gq, wq)
                    uk = torch.einsum("bthe,hed->bthd", gk, wk)
                    uv = torch.einsum("bthe,hed->bthd", gv, wv)
                    if qk_across:
                        # pull-back of head h's slice of the gradient at q_norm's output through the
                        # RMSNorm over all heads (at the clean pre-norm q) and the whole projection
                        us = []
                        for pre, g_post, gain, w3, n in ((q_pre, g_qn[lyr], wts["qn"], wq, H),
                                                         (k_pre, g_kn[lyr], wts["kn"], wk, G)):
                            a = g_post.reshape(B, T, n, hd) * (gain + off).view(n, hd)
                            xp = pre.reshape(B, T, n * hd)
                            rr = torch.rsqrt(xp.pow(2).mean(-1, keepdim=True) + eps)[:, :, :, None]
                            s_h = (pre * a).sum(-1)[..., None]
                            whole = torch.einsum("btD,Dd->btd", xp, w3.reshape(n * hd, d))[:, :, None]
                            us.append(rr * torch.einsum("bthe,hed->bthd", a, w3) - (rr ** 3 / (n * hd)) * s_h * whole)
                        uq, uk = us[0], us[1]
                    u = torch.cat([uq, uk, uv], 2)
                    x = xs[lyr].detach()
                    if pre_norm:
                        u = u * (wts["n1"] + off)
                        if layernorm:
                            x = x - x.mean(-1, keepdim=True)
                            u = u - u.mean(-1, keepdim=True)
                        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)[:, :, None]
                        xe = x[:, :, None]
                        u = r * u - (r ** 3 / d) * xe * (xe * u).sum(-1, keepdim=True)
                    gp = torch.where(real[:, :, None, None], u, torch.zeros_like(u))  # [B, T, H+2G, d]
                    # ---- clean queries / keys after q/k norms and rotary (and at step 0 the corrupted ones)
                    pres, vxs = [q_pre, k_pre], []
                    if step == 0:
                        z0 = zs[lyr].detach().view(B, T, H, hd)
                        oh = torch.einsum("bthe,dhe->bthd", z0, wts["wo"])
                        if o_bias:
                            oh = oh + wts["bo"] / H
                        if post_attn:
                            ot = ots[lyr].detach()
                            r_o = torch.rsqrt(ot.pow(2).mean(-1, keepdim=True) + eps)
                            oh = oh * ((wts["pa"] + off) * r_o)[:, :, None]
                        dh = c_all[:, :, first:first + H] - oh
                        delta[:, :, first:first + H] = torch.where(real[:, :, None, None], dh, zero)
                        dmlp = c_all[:, :, first + H] - mos[lyr].detach()
                        delta[:, :, first + H] = torch.where(real[:, :, None], dmlp, zero)
                        # clean and all-corrupted q/k/v from their layer inputs by the same arithmetic
                        # (their differences are the multipliers), norms at float32 at least
                        hi = torch.promote_types(dt, torch.float32)
                        for xc in (xs[lyr].detach(), c_res[lyr].to(dev, dt)):
                            if pre_norm and layernorm:
                                xc = xc - xc.mean(-1, keepdim=True)
                                xc = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps) * wts["n1"] + wts["n1b"]
                            elif pre_norm:
                                xf = xc.to(hi)
                                xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
                                xc = xf.to(dt) * (wts["n1"] + off)
                            qx = torch.einsum("btd,hed->bthe", xc, wq)
                            kx = torch.einsum("btd,hed->bthe", xc, wk)
                            vx = torch.einsum("btd,hed->bthe", xc, wv)
                            if "bq" in wts:
                                qx = qx + wts["bq"].view(H, hd)
                            if "bk" in wts:
                                kx = kx + wts["bk"].view(G, hd)
                            if "bv" in wts:
                                vx = vx + wts["bv"].view(G, hd)
                            pres += [qx, kx]
                            vxs.append(vx)
                        st["v_cl"].append(vxs[0])
                        st["v_cx"].append(vxs[1])
                    posts = []
                    for i_pre, pre in enumerate(pres):
                        n = H if i_pre % 2 == 0 else G
                        if qk_head or qk_across:
                            gain = (wts["qn"] if i_pre % 2 == 0 else wts["kn"]) + off
                            hi = torch.promote_types(dt, torch.float32)
                            pf = pre.to(hi) if qk_head else pre.reshape(B, T, n * hd).to(hi)
                            pf = (pf * torch.rsqrt(pf.pow(2).mean(-1, keepdim=True) + eps)).to(dt) * gain
                            pre = pf.reshape(B, T, n, hd)
                        if rd:
                            cs, sn = rot[lyr][0].to(dev, dt), rot[lyr][1].to(dev, dt)
                            pr = pre[..., :rd]
                            pr = pr * cs + torch.cat((-pr[..., rd // 2:], pr[..., :rd // 2]), -1) * sn
                            pre = torch.cat((pr, pre[..., rd:]), -1)
                        posts.append(pre)
                    q, k = posts[0], posts[1]
                    v = v_pre
                    if step == 0:
                        st["q_cl"].append(posts[2])
                        st["k_cl"].append(posts[3])
                        st["q_cx"].append(posts[4])
                        st["k_cx"].append(posts[5])
                    # ---- residual edges into this layer's q/k/v ports
                    if not exact_softmax:
                        e = torch.einsum("btsd,btpd->btsp", delta[:, :, :n_before], gp)
                        resid_acc[:n_before, lyr * ppl:lyr * ppl + H + 2 * G] += torch.einsum(
                            "btsp,btr->spr", e, onehot).double()
                    # ---- residual edges into the mlp port
                    gm = g_mi[lyr]
                    if has_mlp_norm:
                        xm = mids[lyr].detach()
                        um = gm * (wts["n2"] + off)
                        if layernorm:
                            xm = xm - xm.mean(-1, keepdim=True)
                            um = um - um.mean(-1, keepdim=True)
                        rm = torch.rsqrt(xm.pow(2).mean(-1, keepdim=True) + eps)
                        gm = rm * um - (rm ** 3 / d) * xm * (xm * um).sum(-1, keepdim=True)
                    gm = torch.where(real[:, :, None], gm, torch.zeros_like(gm))
                    n_mlp = n_before if parallel else n_before + H
                    em = torch.einsum("btsd,btd->bts", delta[:, :, :n_mlp], gm)
                    resid_acc[:n_mlp, lyr * ppl + H + 2 * G] += torch.einsum("bts,btr->sr", em, onehot).double()
                    # ---- attention edges inside each head of this layer
                    al, vm = allowed[lyr].to(dev), valid[lyr].to(dev)
                    scale = scales[lyr]
                    gz = g_z[lyr].view(B, T, H, hd)
                    kh = k.repeat_interleave(gs, 2)
                    vh = v.repeat_interleave(gs, 2)
                    sc = torch.einsum("bihe,bjhe->bhij", q, kh) * scale
                    if cap is not None:
                        th = torch.tanh(sc / cap)
                        sc = cap * th
                    sc = torch.where(al, sc, torch.full_like(sc, torch.finfo(dt).min))
                    probs = torch.softmax(sc, -1, dtype=torch.float64 if dt == torch.float64 else torch.float32).to(dt)
                    d_a = torch.einsum("bihe,bjhe->bhij", gz, vh)
                    d_s = probs * (d_a - (probs * d_a).sum(-1, keepdim=True))
                    if cap is not None:
                        d_s = d_s * (1 - th ** 2)
                    dq = st["q_cx"][lyr] - st["q_cl"][lyr]
                    dk = (st["k_cx"][lyr] - st["k_cl"][lyr]).repeat_interleave(gs, 2)
                    dv = (st["v_cx"][lyr] - st["v_cl"][lyr]).repeat_interleave(gs, 2)
                    t_q = d_s * scale * torch.einsum("bihe,bjhe->bhij", dq, kh)
                    t_k = d_s * scale * torch.einsum("bihe,bjhe->bhij", q, dk)
                    t_v = probs * torch.einsum("bihe,bjhe->bhij", gz, dv)
                    terms = torch.stack([t_q, t_k, t_v], -1)  # [B, H, T(i), T(j), 3]
                    terms = torch.where(vm[..., None], terms, torch.zeros_like(terms))
                    if exact_softmax:  # q/k edges exact through this head's softmax (AtP*'s QK fix)
                        terms = terms[..., 2:]
                        s_q = torch.einsum("bihe,bjhe->bhij", st["q_cx"][lyr], kh) * scale
                        s_k = torch.einsum("bihe,bjhe->bhij", q, st["k_cx"][lyr].repeat_interleave(gs, 2)) * scale
                        if cap is not None:
                            s_q = cap * torch.tanh(s_q / cap)
                            s_k = cap * torch.tanh(s_k / cap)
                        fix = torch.zeros(H, R, R, 2, device=dev, dtype=torch.float64)
                        for src in range(R):
                            in_src = onehot[:, None, None, :, src] > 0  # [B, 1, 1, T(j)]
                            for c, s_new in ((0, s_q), (1, s_k)):
                                s2 = torch.where(in_src & al, s_new, sc)
                                p2 = torch.softmax(s2, -1, dtype=torch.float64 if dt == torch.float64
                                                   else torch.float32).to(dt)
                                per_i = torch.where(vm, (p2 - probs) * d_a, torch.zeros_like(d_a)).sum(-1)
                                fix[:, src, :, c] += torch.einsum("bhi,bit->ht", per_i, onehot).double()
                        attn_acc[lyr, :, :, :, :2] += fix
                        attn_acc[lyr, :, :, :, 2:] += torch.einsum("bhijc,bjs,bit->hstc", terms, onehot,
                                                                   onehot).double()
                        # residual edges into the q/k/v ports exact through the head: each earlier sender's
                        # difference added to this run's port input from the first differing column on, the
                        # queries / keys / values recomputed (norms, projection, q/k norms, rotary); q and k
                        # through the pattern, per source role for keys, v exactly; first order after the head
                        hi, hp = torch.promote_types(dt, torch.float32), torch.float64
                        fd = first_diff
                        p64 = torch.softmax(sc[:, :, fd:].to(hp), -1)
                        lse = torch.logsumexp(sc[:, :, fd:].to(hp), -1)
                        dmq = torch.where(vm[:, :, fd:], d_a[:, :, fd:], torch.zeros_like(d_a[:, :, fd:]))
                        dm64 = dmq.to(hp)
                        base_q = (probs[:, :, fd:] * dmq).sum(-1)
                        ohx = torch.cat([onehot, 1 - onehot.sum(-1, keepdim=True)], -1).to(hp)
                        rs0 = [torch.einsum("bhij,bjr->bhir", p64, ohx), torch.einsum("bhij,bjr->bhir", p64 * dm64, ohx)]
                        pre0 = [torch.einsum("bhij,bjr->bhir", p64[..., :fd], ohx[:, :fd]), torch.einsum("bhij,bjr->bhir", (p64 * dm64)[..., :fd], ohx[:, :fd])]
                        rest0 = []
                        for a0 in rs0:
                            lo = torch.cat([torch.zeros_like(a0[..., :1]), a0[..., :-1]], -1).cumsum(-1)
                            up = torch.cat([a0[..., 1:], torch.zeros_like(a0[..., :1])], -1).flip(-1).cumsum(-1).flip(-1)
                            rest0.append(lo + up)
                        base = rs0[1].sum(-1) / rs0[0].sum(-1)
                        gvm = torch.where(real[:, fd:, None, None], gv[:, fd:], torch.zeros_like(gv[:, fd:]))
                        for c0 in range(0, n_before, chunk):
                            c1 = min(n_before, c0 + chunk)
                            dx = delta[:, fd:, c0:c1]
                            nz = (dx != 0).any(-1)
                            xq = xs[lyr].detach()[:, fd:, None] + dx
                            if pre_norm and layernorm:
                                xq = xq - xq.mean(-1, keepdim=True)
                                xq = xq * torch.rsqrt(xq.pow(2).mean(-1, keepdim=True) + eps) * wts["n1"] + wts["n1b"]
                            elif pre_norm:
                                xf = xq.to(hi)
                                xq = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dt) * (wts["n1"] + off)
                            qn = torch.einsum("btsd,hed->btshe", xq, wq)
                            kn = torch.einsum("btsd,ged->btsge", xq, wk)
                            vn = torch.einsum("btsd,ged->btsge", xq, wv)
                            if "bq" in wts:
                                qn = qn + wts["bq"].view(H, hd)
                            if "bk" in wts:
                                kn = kn + wts["bk"].view(G, hd)
                            if "bv" in wts:
                                vn = vn + wts["bv"].view(G, hd)
                            dvn = torch.where(nz[..., None, None], vn - v_pre[:, fd:, None], torch.zeros_like(vn))
                            ev = torch.einsum("btsge,btge->btsg", dvn, gvm)
                            resid_acc[c0:c1, lyr * ppl + H + G:lyr * ppl + H + 2 * G] += torch.einsum("btsg,btr->sgr", ev, onehot[:, fd:]).double()
                            rq = []
                            for i_n, qk in enumerate((qn, kn)):
                                n = H if i_n == 0 else G
                                if qk_head or qk_across:
                                    gain = (wts["qn"] if i_n == 0 else wts["kn"]) + off
                                    qf = qk.to(hi) if qk_head else qk.reshape(B, T - fd, c1 - c0, n * hd).to(hi)
                                    qf = (qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + eps)).to(dt) * gain
                                    qk = qf.reshape(B, T - fd, c1 - c0, n, hd)
                                if rd:
                                    cs, sn = rot[lyr][0].to(dev, dt)[:, fd:, None], rot[lyr][1].to(dev, dt)[:, fd:, None]
                                    pr = qk[..., :rd]
                                    pr = pr * cs + torch.cat((-pr[..., rd // 2:], pr[..., :rd // 2]), -1) * sn
                                    qk = torch.cat((pr, qk[..., rd:]), -1)
                                rq.append(qk)
                            qn, kn = rq[0], rq[1].repeat_interleave(gs, 3)
                            s3 = torch.einsum("bishe,bjhe->bshij", qn, kh) * scale
                            s4 = torch.einsum("bihe,bjshe->bshij", q[:, fd:], kn) * scale
                            if cap is not None:
                                s3 = cap * torch.tanh(s3 / cap)
                                s4 = cap * torch.tanh(s4 / cap)
                            s3 = torch.where(al[:, None, :, fd:], s3, torch.full_like(s3, torch.finfo(dt).min))
                            p3 = torch.softmax(s3, -1, dtype=torch.float64 if dt == torch.float64 else torch.float32).to(dt)
                            per_q = torch.einsum("bshij,bhij->bshi", p3, dmq) - base_q[:, None]
                            resid_acc[c0:c1, lyr * ppl:lyr * ppl + H] += torch.einsum("bshi,bir->shr", per_q, onehot[:, fd:]).double()
                            keep = al[:, None, :, fd:, fd:] & nz.permute(0, 2, 1)[:, :, None, None, :]
                            a1 = torch.where(keep, (s4.to(hp) - lse[:, None, :, :, None]).clamp_(max=700.0).exp_(), p64[:, None, :, :, fd:])
                            zk = rest0[0][:, None] + pre0[0][:, None] + torch.einsum("bshij,bjr->bshir", a1, ohx[:, fd:])
                            nk = rest0[1][:, None] + pre0[1][:, None] + torch.einsum("bshij,bjr->bshir", a1 * dm64[:, None, :, :, fd:], ohx[:, fd:])
                            per_k = nk[..., :R] / zk[..., :R] - base[:, None, :, :, None]
                            resid_acc[c0:c1, lyr * ppl + H:lyr * ppl + H + G] += per_k.reshape(B, c1 - c0, G, gs, T - fd, R).sum((0, 3, 4))
                    else:
                        attn_acc[lyr] += torch.einsum("bhijc,bjs,bit->hstc", terms, onehot, onehot).double()
                # ---- residual edges into the logits port (last position: role END)
                if exact_softmax:
                    # exact through the final norm and the unembedding (the last step): the metric
                    # with each sender's difference added at the last position, minus this run's
                    hi = torch.promote_types(dt, torch.float32)
                    xl = fin[:, -1].detach()
                    xe = torch.cat([xl[:, None], xl[:, None] + delta[:, -1]], 1)
                    if layernorm:
                        xe = xe - xe.mean(-1, keepdim=True)
                    xf = xe.to(hi)
                    xn = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dt) * (fin_w + off)
                    if fin_b is not None:
                        xn = xn + fin_b
                    rows = torch.stack([lm_w[ct[:, 0].to(dev)], lm_w[xt[:, 0].to(dev)]], 1)
                    zl = torch.einsum("bsd,bkd->bsk", xn, rows)
                    if lm_b is not None:
                        zl = zl + torch.stack([lm_b[ct[:, 0].to(dev)], lm_b[xt[:, 0].to(dev)]], 1)[:, None]
                    if fcap is not None:
                        zl = fcap * torch.tanh(zl / fcap)
                    ml = zl[..., 0] - zl[..., 1]
                    el = ml[:, 1:] - ml[:, :1]
                else:
                    el = torch.einsum("bsd,bd->bs", delta[:, -1], g_fin[:, -1])
                end_ids = role_idx[:, -1].to(dev)
                for b in range(B):
                    resid_acc[:, P - 1, end_ids[b]] += el[b].double()
        out_resid = nnsight.save((st["resid"] / ig_steps).detach().cpu())
        out_attn = nnsight.save((st["attn"] / ig_steps).detach().cpu())
    return out_resid.numpy(), out_attn.numpy()


def role_presence(batch: CircuitBatch) -> tuple["np.ndarray", "np.ndarray"]:
    """``(present [R], pairs [R, R])`` of one batch: roles with a token, and source/destination
    role pairs ``(s, t)`` with a token of ``s`` at or before a token of ``t`` in some row.
    OR them over batches (a checkpoint loop keeps them with the score sums)."""
    import torch

    oh = batch.role_onehot(torch.float64)
    causal = torch.ones(batch.width, batch.width, dtype=torch.float64).tril()  # [i, j], j <= i
    return (oh.sum((0, 1)) > 0).numpy(), (torch.einsum("bjs,ij,bit->st", oh, causal, oh) > 0).numpy()


def presence_masks(shape: CircuitShape, present: "np.ndarray", pairs: "np.ndarray",
                   end_role: int) -> tuple["np.ndarray", "np.ndarray"]:
    """Which role-level edges exist: ``(resid [S, P, R], attn [L, H, R, R, 3])`` bools.

    A residual edge exists when it exists in the model (:meth:`CircuitShape.edge_exists`) and its
    role has a token (``logits`` only at END); an attention edge ``s -> t`` when ``pairs[s, t]``.
    """
    import numpy as np

    resid = shape.edge_exists()[:, :, None] & present[None, None, :]
    resid[:, shape.port_logits, :] = False
    resid[:, shape.port_logits, end_role] = present[end_role]
    attn = np.broadcast_to(pairs[None, None, :, :, None], (shape.n_layers, shape.n_heads) + pairs.shape + (3,))
    return resid, attn.copy()


def edge_presence(shape: CircuitShape, batches: Iterable[CircuitBatch], n_roles: int,
                  end_role: int) -> tuple["np.ndarray", "np.ndarray"]:
    """:func:`presence_masks` of the union of :func:`role_presence` over ``batches``."""
    import numpy as np

    present, pairs = np.zeros(n_roles, dtype=bool), np.zeros((n_roles, n_roles), dtype=bool)
    for batch in batches:
        p, q = role_presence(batch)
        present |= p
        pairs |= q
    return presence_masks(shape, present, pairs, end_role)


def scores_from_sums(shape: CircuitShape, roles: Sequence[str], resid_sum: "np.ndarray", attn_sum: "np.ndarray",
                     n_rows: int, present: "np.ndarray", pairs: "np.ndarray", end_role: int,
                     **meta: Any) -> AttributionResult:
    """The :class:`AttributionResult` of summed batch scores (mean over ``n_rows``, NaN = no edge)."""
    import numpy as np

    if n_rows < 1:
        raise GARConfigError("no rows were scored")
    has_r, has_a = presence_masks(shape, present, pairs, end_role)
    resid = np.where(has_r, resid_sum / n_rows, np.nan).astype(np.float32)
    attn = np.where(has_a, attn_sum / n_rows, np.nan).astype(np.float32)
    return AttributionResult(resid=resid, attn=attn, roles=list(roles), shape=shape, n_rows=n_rows,
                             ig_steps=int(meta.pop("ig_steps", 1)), meta=meta)


def edge_attribution(model: Any, batches: Sequence[CircuitBatch], roles: Sequence[str], *, ig_steps: int = 1,
                     exact_softmax: bool = False, remote: Remote = False,
                     progress: Progress | None = None) -> AttributionResult:
    """EAP (or EAP-IG) scores averaged over every row of ``batches``, NaN where no edge exists.

    ``roles`` names the role ids of the batches (a schema's ``roles``). ``progress(done, total)``
    counts rows after each batch. (A checkpointing caller uses :func:`attribution_batch`,
    :func:`role_presence` and :func:`scores_from_sums` instead.)
    """
    import numpy as np

    batches = list(batches)
    if not batches:
        raise GARConfigError("no batches to score")
    check_remote(model, remote)
    shape = circuit_shape(model)
    R = len(roles)
    if any(b.n_roles != R for b in batches):
        raise GARConfigError(f"the batches' role count differs from the {R} roles given")
    resid = np.zeros((shape.n_senders, shape.n_ports, R))
    attn = np.zeros((shape.n_layers, shape.n_heads, R, R, 3))
    present, pairs = np.zeros(R, dtype=bool), np.zeros((R, R), dtype=bool)
    done, total = 0, sum(b.size for b in batches)
    for batch in batches:
        r, a = attribution_batch(model, batch, ig_steps=ig_steps, exact_softmax=exact_softmax, remote=remote)
        resid += r
        attn += a
        p, q = role_presence(batch)
        present |= p
        pairs |= q
        done += batch.size
        if progress is not None:
            progress(done, total)
    return scores_from_sums(shape, roles, resid, attn, total, present, pairs, batches[0].end_role,
                            ig_steps=ig_steps, exact_softmax=exact_softmax)


__all__ = ["AttributionResult", "attribution_batch", "edge_attribution", "edge_presence",
           "forward_inputs", "presence_masks", "role_presence", "scores_from_sums"]
