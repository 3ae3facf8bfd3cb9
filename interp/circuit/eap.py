"""Edge attribution patching (EAP, optionally EAP-IG) at role level, in one nnsight session per batch.

Scores estimate, to first order, how the metric ``m = logit(clean_target) - logit(corrupt_target)``
(last position) moves when one edge of the clean run is switched to its corrupted value (the
direction of ``gar patch``: negative = the edge carries the clean answer). Layout and semantics of
edges: :mod:`interp.circuit.ports` and :mod:`interp.circuit.patch`.

**Residual edges** ``sender@r -> port@r``: ``sum_{t in r} (c_s^corr(t) - c_s(t)) . g_p(t)`` where
``c_s`` is the sender's output in the residual stream and ``g_p`` the gradient of ``m`` w.r.t. the
port's *own copy* of the pre-norm residual input. ``g_p`` is obtained per port without a backward
per port: the gradient at the q (k, v) projection's output, restricted to head ``h``'s (group
``g``'s) columns, is pulled back through that projection's rows and the RMSNorm Jacobian in plain
torch; ``mlp`` ports pull the gradient at the MLP's input back through post_attention_layernorm;
``logits`` is the gradient at the final norm's input. One contraction per layer
(``[B, T, S_l, d] x [B, T, P_l, d]``, then a one-hot role sum), never one per edge.

**Attention edges** of head ``(l, h)`` from source role ``s`` (key positions ``j``) to
destination role ``t`` (query positions ``i``), summed over ``i in t, j in s, j <= i``:

* ``c = 2`` (value): ``A(i, j) * g_z(i) . (v^corr(j) - v(j))``  (exact: the output is linear in v);
* ``c = 1`` (key): ``dm/dS(i, j) * scaling * q(i) . (k^corr(j) - k(j))``;
* ``c = 0`` (query): ``dm/dS(i, j) * scaling * (q^corr(i) - q(i)) . k(j)``;

with ``A`` the attention pattern, ``S`` the pre-softmax scores, ``g_z`` the gradient at the head's
output (the output projection's input), q/k after the rotary embedding. ``q^corr`` etc. are the
projections of the all-corrupted port input (pair patching: the corrupted run's q/k/v; role
means: those of the summed means), as in the exact patcher.

With ``exact_softmax`` (AtP*'s QK fix, per source role) the q and k edges ``s -> t`` are instead
``sum_{i in t} g_z(i) . sum_j (A'(i, j) - A(i, j)) v(j)``, ``A'`` the pattern recomputed with the
scores of the keys of role ``s`` taken with the corrupted key (c = 1) or query (c = 0): exact
through the softmax, first order after the head's output. ``R`` extra softmaxes per head.

**EAP-IG** (``ig_steps = n > 1``): the gradients are averaged over ``n`` forwards whose input
embeddings are ``e^corr + (k / n) (e - e^corr)``, ``k = n .. 1`` (``n = 1`` is plain EAP); the
multipliers stay the clean-minus-corrupted differences.

Everything runs in one ``model.session`` per batch (one NDIF request): a graph-free forward of the
corrupted rows (pair patching), then per IG step a forward of the clean rows, ``torch.autograd.grad``
of ``m`` w.r.t. the captured projection outputs, and the contractions; only the role-aggregated
``[S, P, R]`` and ``[L, H, R, R, 3]`` sums leave the session. The traced code is plain torch on
captured tensors, ints and envoys (no function of this package), so ``remote=True`` runs the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from gar_tasks.errors import GARConfigError

from ..core.model import Remote, check_remote, forward_kwargs, frozen, is_nnsight
from .batch import CircuitBatch
from .ports import CircuitShape, circuit_shape

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

Progress = Callable[[int, int], Any]


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

    def arrays(self) -> dict[str, "np.ndarray"]:
        """The arrays of ``scores.npz`` (contract): scores, roles, sender/port tables, model shape."""
        import numpy as np

        s = self.shape
        return {"resid": self.resid, "attn": self.attn, "roles": np.array(self.roles),
                **s.sender_arrays(), **s.port_arrays(),
                "model_shape": np.array([s.n_layers, s.n_heads, s.n_kv, s.head_dim, s.d_model])}


def _check(model: Any, batch: CircuitBatch, remote: Remote) -> CircuitShape:
    check_remote(model, remote)
    if not is_nnsight(model):
        raise GARConfigError(f"expected an nnsight TransformersModel, got {type(model).__name__}: "
                             "wrap it with interp.core.model.as_nnsight(model, tokenizer)")
    if not isinstance(batch, CircuitBatch):
        raise GARConfigError(f"expected a CircuitBatch, got {type(batch).__name__}")
    shape = circuit_shape(model)
    return shape


def attribution_batch(model: Any, batch: CircuitBatch, *, ig_steps: int = 1, exact_softmax: bool = False,
                      remote: Remote = False) -> tuple["np.ndarray", "np.ndarray"]:
    """Sums over the batch's rows of the role-level EAP scores: ``(resid [S, P, R], attn [L, H, R, R, 3])``
    as float64 (zeros where no edge: see :func:`edge_presence` for the NaN pattern).

    ``model``: an nnsight ``TransformersModel`` (llama, mistral, qwen2). ``exact_softmax``: q/k
    attention edges exact through their head's softmax (see the module docstring).
    """
    import nnsight
    import torch

    shape = _check(model, batch, remote)
    if ig_steps < 1:
        raise GARConfigError(f"ig_steps must be at least 1, got {ig_steps}")
    L, H, G, hd, d = shape.n_layers, shape.n_heads, shape.n_kv, shape.head_dim, shape.d_model
    S, P, R = shape.n_senders, shape.n_ports, batch.n_roles
    B, T = batch.size, batch.width
    gs, eps, scaling = shape.group_size, shape.eps, shape.scaling
    ppl = shape.ports_per_layer
    kind = batch.corruption
    extra = forward_kwargs(model)
    clean_in = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                "position_ids": batch.position_ids, **extra}
    if kind == "corrupt_ids":
        corrupt_in = {**clean_in, "input_ids": batch.corrupt_ids}
    elif kind == "corrupt_embeds":
        corrupt_in = {"inputs_embeds": batch.corrupt_embeds, "attention_mask": batch.attention_mask,
                      "position_ids": batch.position_ids, **extra}
    else:
        corrupt_in = None
    means = batch.role_means.detach() if batch.role_means is not None else None
    role_idx = batch.role_ids.clamp(min=0)
    real_bt = batch.attention_mask.bool()
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal[None, None] & real_bt[:, None, None, :]  # [B, 1, T(i), T(j)]
    valid = allowed & real_bt[:, None, :, None]  # both positions real
    alphas = [1.0 - k / ig_steps for k in range(ig_steps)]  # 1 (the clean run) first
    ct, xt = batch.clean_target[:, None], batch.corrupt_target[:, None]
    onehot_f = batch.role_onehot(torch.float64)
    # every module from the architecture table, resolved to envoys before the session
    emb_env, rot_env, fin_env = (model.get(shape.path(key)) for key in ("embed", "rotary", "final_norm"))
    blk_env, q_env, k_env, v_env, o_env, n1_env, n2_env, mlp_env = (
        [model.get(shape.path(key, lyr)) for lyr in range(L)]
        for key in ("layer", "q", "k", "v", "o", "attn_norm", "mlp_norm", "mlp"))
    # ---------------------------------------------------------------------------------------
    # traced code below: plain torch on captured values only (it must run on NDIF as is). What one
    # trace leaves for the next travels in the dict `st` (mutated, never rebound): on NDIF a name
    # bound inside one trace of a session is not seen by the next. No comment line may stand in the
    # session body outside its traces (nnsight's line mapping of the compiled body skips them).
    with frozen(model), model.session(remote=remote):
        weights = []
        for lyr in range(L):
            wts = [q_env[lyr].weight, q_env[lyr].bias, k_env[lyr].weight, k_env[lyr].bias, v_env[lyr].weight]
            wts += [v_env[lyr].bias, o_env[lyr].weight, n1_env[lyr].weight]
            wts.append(n2_env[lyr].weight)
            weights.append(wts)
        st = {}
        if corrupt_in is not None:
            with model.trace(corrupt_in):
                if kind == "corrupt_ids":
                    st["c_emb"] = emb_env.output.detach()
                else:
                    st["c_emb"] = corrupt_in["inputs_embeds"]
                st.update(c_res=[], c_z=[], c_mlp=[])
                for lyr in range(L):  # in the order the forward reaches them
                    st["c_res"].append(blk_env[lyr].input.detach())
                    st["c_z"].append(o_env[lyr].input.detach())
                    st["c_mlp"].append(mlp_env[lyr].output.detach())
        for step, alpha in enumerate(alphas):
            with model.trace(clean_in):
                emb = emb_env.output
                dev, dt = emb.device, emb.dtype
                if step == 0:
                    # the corrupted senders [B, T, S, d] and the all-corrupted layer inputs
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
                        c_res, c_z, c_mlp, c_emb = st["c_res"], st["c_z"], st["c_mlp"], st["c_emb"]
                        heads_c = []
                        for lyr in range(L):
                            wo = weights[lyr][6].view(d, H, hd)
                            zc = c_z[lyr].to(dev, dt).view(B, T, H, hd)
                            heads_c.append(torch.einsum("bthe,dhe->bthd", zc, wo))
                            heads_c.append(c_mlp[lyr].to(dev, dt)[:, :, None])
                        c_all = torch.cat([c_emb.to(dev, dt)[:, :, None]] + heads_c, 2)
                    real = real_bt.to(dev)
                    onehot = onehot_f.to(dev, dt)
                    delta = torch.zeros(B, T, S, d, device=dev, dtype=dt)
                    zero = torch.zeros((), device=dev, dtype=dt)
                    delta[:, :, 0] = torch.where(real[:, :, None], c_all[:, :, 0] - emb.detach(), zero)
                    q_cl, k_cl, v_cl, q_cx, k_cx, v_cx = [], [], [], [], [], []
                    resid_acc = torch.zeros(S, P, R, device=dev, dtype=torch.float64)
                    attn_acc = torch.zeros(L, H, R, R, 3, device=dev, dtype=torch.float64)
                    st.update(c_all=c_all, real=real, onehot=onehot, delta=delta, zero=zero, q_cl=q_cl, k_cl=k_cl,
                              v_cl=v_cl, q_cx=q_cx, k_cx=k_cx, v_cx=v_cx, resid=resid_acc, attn=attn_acc)
                else:
                    c_all, real, onehot, delta, zero = st["c_all"], st["real"], st["onehot"], st["delta"], st["zero"]
                    q_cl, k_cl, v_cl, q_cx, k_cx, v_cx = (st[k] for k in ("q_cl", "k_cl", "v_cl", "q_cx", "k_cx",
                                                                          "v_cx"))
                    resid_acc, attn_acc = st["resid"], st["attn"]
                    emb_c = c_all[:, :, 0]
                    emb = (emb_c + alpha * (emb.detach() - emb_c)).detach()
                    emb_env.output = emb
                emb.requires_grad_(True)
                cos, sin = rot_env.output
                cos, sin = cos[:, :, None].to(dt), sin[:, :, None].to(dt)
                xs, qs, ks, vs, zs, mids, mis, mos = [], [], [], [], [], [], [], []
                for lyr in range(L):
                    xs.append(blk_env[lyr].input)
                    qs.append(q_env[lyr].output)
                    ks.append(k_env[lyr].output)
                    vs.append(v_env[lyr].output)
                    zs.append(o_env[lyr].input)
                    mids.append(n2_env[lyr].input)
                    mis.append(mlp_env[lyr].input)
                    mos.append(mlp_env[lyr].output)
                fin = fin_env.input
                logits = model.output.logits[:, -1, :]
                metric = (logits.gather(1, ct.to(dev)) - logits.gather(1, xt.to(dev))).sum()
                grads = torch.autograd.grad(metric, qs + ks + vs + zs + mis + [fin])
                g_q, g_k, g_v = grads[:L], grads[L:2 * L], grads[2 * L:3 * L]
                g_z, g_mi, g_fin = grads[3 * L:4 * L], grads[4 * L:5 * L], grads[5 * L]
                half = hd // 2
                for lyr in range(L):
                    wq, bq, wk, bk, wv, bv, wo, wn1, wn2 = weights[lyr]
                    n_before = 1 + lyr * (H + 1)
                    first = n_before
                    q = qs[lyr].detach().view(B, T, H, hd)
                    k = ks[lyr].detach().view(B, T, G, hd)
                    v = vs[lyr].detach().view(B, T, G, hd)
                    q = q * cos + torch.cat((-q[..., half:], q[..., :half]), -1) * sin
                    k = k * cos + torch.cat((-k[..., half:], k[..., :half]), -1) * sin
                    if step == 0:
                        # clean senders of this layer -> multipliers; clean and corrupted q/k/v
                        z0 = zs[lyr].detach().view(B, T, H, hd)
                        dh = c_all[:, :, first:first + H] - torch.einsum("bthe,dhe->bthd", z0, wo.view(d, H, hd))
                        delta[:, :, first:first + H] = torch.where(real[:, :, None, None], dh, zero)
                        dmlp = c_all[:, :, first + H] - mos[lyr].detach()
                        delta[:, :, first + H] = torch.where(real[:, :, None], dmlp, zero)
                        xc = c_res[lyr].to(dev, dt).float()
                        xc = (wn1 * (xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)).to(dt))
                        qx = xc @ wq.T + (bq if bq is not None else 0)
                        kx = xc @ wk.T + (bk if bk is not None else 0)
                        vx = (xc @ wv.T + (bv if bv is not None else 0)).view(B, T, G, hd)
                        qx = qx.view(B, T, H, hd)
                        kx = kx.view(B, T, G, hd)
                        qx = qx * cos + torch.cat((-qx[..., half:], qx[..., :half]), -1) * sin
                        kx = kx * cos + torch.cat((-kx[..., half:], kx[..., :half]), -1) * sin
                        q_cl.append(q)
                        k_cl.append(k)
                        v_cl.append(v)
                        q_cx.append(qx)
                        k_cx.append(kx)
                        v_cx.append(vx)
                    # ---- residual edges into this layer's q/k/v ports
                    x = xs[lyr].detach()
                    u = torch.cat([torch.einsum("bthe,hed->bthd", g_q[lyr].view(B, T, H, hd), wq.view(H, hd, d)),
                                   torch.einsum("bthe,hed->bthd", g_k[lyr].view(B, T, G, hd), wk.view(G, hd, d)),
                                   torch.einsum("bthe,hed->bthd", g_v[lyr].view(B, T, G, hd), wv.view(G, hd, d))], 2)
                    u = u * wn1
                    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)[:, :, None]  # [B, T, 1, 1]
                    xe = x[:, :, None]
                    gp = r * u - (r ** 3 / d) * xe * (xe * u).sum(-1, keepdim=True)  # [B, T, H+2G, d]
                    gp = torch.where(real[:, :, None, None], gp, torch.zeros_like(gp))
                    e = torch.einsum("btsd,btpd->btsp", delta[:, :, :n_before], gp)
                    resid_acc[:n_before, lyr * ppl:lyr * ppl + H + 2 * G] += torch.einsum(
                        "btsp,btr->spr", e, onehot).double()
                    # ---- residual edges into the mlp port
                    xm = mids[lyr].detach()
                    um = g_mi[lyr] * wn2
                    rm = torch.rsqrt(xm.pow(2).mean(-1, keepdim=True) + eps)
                    gm = rm * um - (rm ** 3 / d) * xm * (xm * um).sum(-1, keepdim=True)
                    gm = torch.where(real[:, :, None], gm, torch.zeros_like(gm))
                    em = torch.einsum("btsd,btd->bts", delta[:, :, :n_before + H], gm)
                    resid_acc[:n_before + H, lyr * ppl + H + 2 * G] += torch.einsum("bts,btr->sr", em, onehot).double()
                    # ---- attention edges inside each head of this layer
                    gz = g_z[lyr].view(B, T, H, hd)
                    kh = k.repeat_interleave(gs, 2)
                    vh = v.repeat_interleave(gs, 2)
                    sc = torch.einsum("bihe,bjhe->bhij", q, kh) * scaling
                    sc = torch.where(allowed.to(dev), sc, torch.full_like(sc, torch.finfo(dt).min))
                    probs = torch.softmax(sc, -1, dtype=torch.float64 if dt == torch.float64 else torch.float32).to(dt)
                    d_a = torch.einsum("bihe,bjhe->bhij", gz, vh)
                    d_s = probs * (d_a - (probs * d_a).sum(-1, keepdim=True))
                    dq = q_cx[lyr] - q_cl[lyr]
                    dk = (k_cx[lyr] - k_cl[lyr]).repeat_interleave(gs, 2)
                    dv = (v_cx[lyr] - v_cl[lyr]).repeat_interleave(gs, 2)
                    t_q = d_s * scaling * torch.einsum("bihe,bjhe->bhij", dq, kh)
                    t_k = d_s * scaling * torch.einsum("bihe,bjhe->bhij", q, dk)
                    t_v = probs * torch.einsum("bihe,bjhe->bhij", gz, dv)
                    terms = torch.stack([t_q, t_k, t_v], -1)  # [B, H, T(i), T(j), 3]
                    terms = torch.where(valid.to(dev)[..., None], terms, torch.zeros_like(terms))
                    if exact_softmax:  # q/k edges exact through this head's softmax (AtP*'s QK fix)
                        terms = terms[..., 2:]
                        vmask = valid.to(dev)
                        s_q = torch.einsum("bihe,bjhe->bhij", q_cx[lyr], kh) * scaling
                        s_k = torch.einsum("bihe,bjhe->bhij", q, k_cx[lyr].repeat_interleave(gs, 2)) * scaling
                        fix = torch.zeros(H, R, R, 2, device=dev, dtype=torch.float64)
                        for src in range(R):
                            in_src = onehot[:, None, None, :, src] > 0  # [B, 1, 1, T(j)]
                            for c, s_new in ((0, s_q), (1, s_k)):
                                s2 = torch.where(in_src & allowed.to(dev), s_new, sc)
                                p2 = torch.softmax(s2, -1, dtype=torch.float64 if dt == torch.float64
                                                   else torch.float32).to(dt)
                                per_i = torch.where(vmask, (p2 - probs) * d_a, torch.zeros_like(d_a)).sum(-1)
                                fix[:, src, :, c] += torch.einsum("bhi,bit->ht", per_i, onehot).double()
                        attn_acc[lyr, :, :, :, :2] += fix
                        attn_acc[lyr, :, :, :, 2:] += torch.einsum("bhijc,bjs,bit->hstc", terms, onehot,
                                                                   onehot).double()
                    else:
                        attn_acc[lyr] += torch.einsum("bhijc,bjs,bit->hstc", terms, onehot, onehot).double()
                # ---- residual edges into the logits port (last position: role END)
                gf = g_fin[:, -1]
                el = torch.einsum("bsd,bd->bs", delta[:, -1], gf)
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


__all__ = ["AttributionResult", "attribution_batch", "edge_attribution", "edge_presence", "presence_masks",
           "role_presence", "scores_from_sums"]
