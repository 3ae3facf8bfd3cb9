"""Exact role-level edge patching: a plain-torch "unrolled" forward with every port rebuilt.

A circuit is a pair of bool masks ``resid_mask[S, P, R]`` and ``attn_mask[L, H, R, R, 3]``
(layout: :mod:`interp.circuit.ports`). :meth:`EdgePatcher.evaluate` runs the model with

* every port's input (the pre-norm residual stream the port reads, at every token) rebuilt as
  ``sum_s (in circuit at the token's role ? s's output in this run : s's corrupted output)``;
  for ``logits`` only the last position (role END) is read;
* every head's attention rebuilt per (query position i, key position j) from the roles
  ``t = role(i)``, ``s = role(j)``: ``score(i, j) = q^a(i) . k^b(j)`` and value ``v^c(j)``, where
  ``a`` / ``b`` / ``c`` is this run's (rebuilt-port) q / k / v if the attention edge
  ``attn_mask[l, h, s, t, 0 / 1 / 2]`` is in the circuit, else the corrupted one;
* "corrupted" for q/k/v: the projection of the port input made of corrupted senders only
  (under pair patching: exactly the corrupted run's q/k/v; under role-mean ablation: the q/k/v
  of the all-mean residual stream).

So every edge kept gives the clean forward, none kept the corrupted one (identities tested).
Senders' corrupted outputs come from a forward of the corrupted prompt (pair patching), of the
corrupted embeddings, or from role means. Norms, MLPs, rotary tables and the unembedding are the
model's own modules; the attention is recomputed (eager: softmax in float32, as transformers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gar_tasks.errors import GARConfigError

from .batch import CircuitBatch
from .ports import CircuitShape, circuit_shape

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


def full_masks(shape: CircuitShape, n_roles: int) -> tuple["np.ndarray", "np.ndarray"]:
    """Every edge in the circuit."""
    import numpy as np

    return (np.ones((shape.n_senders, shape.n_ports, n_roles), dtype=bool),
            np.ones((shape.n_layers, shape.n_heads, n_roles, n_roles, 3), dtype=bool))


def empty_masks(shape: CircuitShape, n_roles: int) -> tuple["np.ndarray", "np.ndarray"]:
    """No edge in the circuit."""
    import numpy as np

    full = full_masks(shape, n_roles)
    return np.zeros_like(full[0]), np.zeros_like(full[1])


def _hf(model: Any) -> Any:
    return getattr(model, "_module", model)


def _rope(x: "torch.Tensor", cos: "torch.Tensor", sin: "torch.Tensor") -> "torch.Tensor":
    """Rotary embedding of ``x[B, T, N, hd]`` with ``cos``/``sin`` ``[B, T, hd]`` (HF's rotate_half)."""
    import torch

    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos[:, :, None] + rot * sin[:, :, None]


def _extend(mask: "torch.Tensor", dims: tuple[int, ...]) -> "torch.Tensor":
    """Append one all-True index along each of ``dims`` (the padding role, id -1)."""
    import torch

    for d in dims:
        pad_shape = list(mask.shape)
        pad_shape[d] = 1
        mask = torch.cat([mask, torch.ones(pad_shape, dtype=torch.bool, device=mask.device)], d)
    return mask


class UnrolledModel:
    """The model's forward as senders and ports (plain torch on the HF modules' weights)."""

    def __init__(self, model: Any):
        hf = _hf(model)
        self.model = hf
        self.shape = circuit_shape(hf)
        s = self.shape
        for layer in range(s.n_layers):
            if getattr(hf.get_submodule(s.path("o", layer)), "bias", None) is not None:
                raise GARConfigError("output projections with a bias are not supported")

    def embed(self, ids: "torch.Tensor") -> "torch.Tensor":
        module = self.model.get_submodule(self.shape.path("embed"))
        return module(ids.to(module.weight.device))

    def forward(self, embeds: "torch.Tensor", batch: CircuitBatch, corrupt: "torch.Tensor | None" = None,
                resid_mask: "np.ndarray | None" = None, attn_mask: "np.ndarray | None" = None,
                capture: bool = False) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        """Last-position logits ``[B, V]`` (and, if ``capture``, every sender's output ``[B, T, S, d]``).

        ``corrupt``: corrupted sender outputs ``[B, T, S, d]`` (``None``: zeros, only valid with
        full masks). Masks default to every edge kept.
        """
        import numpy as np
        import torch

        s, hf = self.shape, self.model
        B, T = batch.size, batch.width
        L, H, G, hd, d = s.n_layers, s.n_heads, s.n_kv, s.head_dim, s.d_model
        dtype, device = embeds.dtype, embeds.device
        R = batch.n_roles
        if resid_mask is None:
            resid_mask = np.ones((s.n_senders, s.n_ports, R), dtype=bool)
        if attn_mask is None:
            attn_mask = np.ones((L, H, R, R, 3), dtype=bool)
        if resid_mask.shape != (s.n_senders, s.n_ports, R) or attn_mask.shape != (L, H, R, R, 3):
            raise GARConfigError(f"masks must be [{s.n_senders}, {s.n_ports}, {R}] and [{L}, {H}, {R}, {R}, 3], "
                                 f"got {list(resid_mask.shape)} and {list(attn_mask.shape)}")
        rmask = _extend(torch.from_numpy(np.asarray(resid_mask, dtype=bool)), (2,)).to(device)  # [S, P, R+1]
        amask = _extend(torch.from_numpy(np.asarray(attn_mask, dtype=bool)), (2, 3)).to(device)  # [L, H, R+1, R+1, 3]
        roles = torch.where(batch.role_ids < 0, R, batch.role_ids).to(device)  # pad -> R
        if corrupt is None:
            corrupt = torch.zeros(B, T, s.n_senders, d, dtype=dtype, device=device)
        diff = torch.zeros(B, T, s.n_senders, d, dtype=dtype, device=device)  # this run - corrupted
        captured = torch.zeros_like(diff) if capture else None
        # sums of the first n corrupted senders, only where a port reads them (not [B, T, S, d])
        needed = sorted({s.senders_before(lyr) for lyr in range(L)}
                        | {s.senders_before(lyr) + H for lyr in range(L)} | {s.n_senders})
        corrupt_sum, running, done = {}, torch.zeros(B, T, d, dtype=dtype, device=device), 0
        for n in needed:
            running = running + corrupt[:, :, done:n].sum(2)
            corrupt_sum[n], done = running, n

        def put(idx: slice, value: "torch.Tensor") -> None:
            diff[:, :, idx] = value - corrupt[:, :, idx]
            if captured is not None:
                captured[:, :, idx] = value

        present = torch.unique(roles[roles < R])
        diff_sum = {"upto": 0, "sum": torch.zeros(B, T, d, dtype=dtype, device=device)}

        def port_inputs(n_senders: int, ports: list[int]) -> "torch.Tensor":
            # input = corrupted sum + sum over kept senders of (this run - corrupted), or, when
            # fewer senders have a dropped edge than a kept one, this run's sum - the dropped;
            # only senders with an edge of the minority kind at a present role are read
            sub = rmask[:n_senders][:, ports]  # [S_l, P_l, R+1]
            real = sub[:, :, present]
            kept_any, dropped_any = real.flatten(1).any(1), (~real).flatten(1).any(1)
            if int(kept_any.sum()) <= int(dropped_any.sum()):
                idx, sign, use = kept_any.nonzero()[:, 0], 1.0, sub
                base = corrupt_sum[n_senders]
            else:
                if diff_sum["upto"] > n_senders:  # pragma: no cover - ports are read in sender order
                    raise RuntimeError("ports read out of order")
                diff_sum["sum"] = diff_sum["sum"] + diff[:, :, diff_sum["upto"]:n_senders].sum(2)
                diff_sum["upto"] = n_senders
                idx, sign, use = dropped_any.nonzero()[:, 0], -1.0, ~sub
                base = corrupt_sum[n_senders] + diff_sum["sum"]
            out = base[:, :, None].expand(B, T, len(ports), d)
            if len(idx) == 0:
                return out.clone()
            if 2 * len(idx) > n_senders:  # most senders: read the prefix in place, mask the rest
                active = torch.zeros(n_senders, dtype=torch.bool, device=device)
                active[idx] = True
                m = (use[:, :, roles] & active[:, None, None, None]).permute(2, 3, 0, 1).to(dtype)
                return out + sign * torch.einsum("btsp,btsd->btpd", m, diff[:, :, :n_senders])
            m = use[idx][:, :, roles].permute(2, 3, 0, 1).to(dtype)  # [B, T, k, P_l]
            return out + sign * torch.einsum("btsp,btsd->btpd", m, diff[:, :, idx])

        put(slice(0, 1), embeds[:, :, None])
        cos, sin = hf.get_submodule(s.path("rotary"))(embeds, batch.position_ids.to(device))
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        allowed = causal[None, None] & batch.attention_mask.bool().to(device)[:, None, None, :]
        neg = torch.finfo(dtype).min
        # transformers' eager attention takes the softmax in float32; a float64 model keeps float64
        soft_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        for layer in range(L):
            n_before = s.senders_before(layer)
            ports = ([s.port_q(layer, h) for h in range(H)] + [s.port_k(layer, g) for g in range(G)]
                     + [s.port_v(layer, g) for g in range(G)])
            x = port_inputs(n_before, ports)  # [B, T, H + 2G, d]
            norm = hf.get_submodule(s.path("attn_norm", layer))
            qm, km, vm = (hf.get_submodule(s.path(k, layer)) for k in ("q", "k", "v"))
            nx = norm(x)
            xc = norm(corrupt_sum[n_before])  # the all-corrupted port input

            def proj(mod: Any, inp: "torch.Tensor", n: int) -> "torch.Tensor":
                w = mod.weight.view(n, hd, d)
                out = torch.einsum("btnd,ned->btne", inp, w)
                return out + mod.bias.view(n, hd) if getattr(mod, "bias", None) is not None else out

            q = _rope(proj(qm, nx[:, :, :H], H), cos, sin)
            k = _rope(proj(km, nx[:, :, H:H + G], G), cos, sin)
            v = proj(vm, nx[:, :, H + G:], G)
            qx = _rope(qm(xc).view(B, T, H, hd), cos, sin)
            kx = _rope(km(xc).view(B, T, G, hd), cos, sin)
            vx = vm(xc).view(B, T, G, hd)
            rep = s.group_size
            k, kx, v, vx = (t.repeat_interleave(rep, 2) for t in (k, kx, v, vx))
            am = amask[layer][:, roles[:, None, :], roles[:, :, None]]  # [H, B, T(i), T(j), 3]
            am = am.permute(1, 0, 2, 3, 4)
            mq, mk, mv = am[..., 0], am[..., 1], am[..., 2]
            sc = {}
            for a, qq in (("c", q), ("x", qx)):
                for b, kk in (("c", k), ("x", kx)):
                    sc[a + b] = torch.einsum("bihe,bjhe->bhij", qq, kk)
            scores = torch.where(mq, torch.where(mk, sc["cc"], sc["cx"]), torch.where(mk, sc["xc"], sc["xx"]))
            scores = scores * s.scaling
            scores = torch.where(allowed, scores, torch.full_like(scores, neg))
            probs = torch.softmax(scores, -1, dtype=soft_dtype).to(dtype)
            z = (torch.einsum("bhij,bjhe->bihe", probs * mv, v)
                 + torch.einsum("bhij,bjhe->bihe", probs * ~mv, vx))
            wo = hf.get_submodule(s.path("o", layer)).weight.view(d, H, hd)
            heads = torch.einsum("bihe,dhe->bihd", z, wo)  # [B, T, H, d]
            first = s.sender_head(layer, 0)
            put(slice(first, first + H), heads)
            n_mlp = n_before + H
            xm = port_inputs(n_mlp, [s.port_mlp(layer)])[:, :, 0]
            out = hf.get_submodule(s.path("mlp", layer))(hf.get_submodule(s.path("mlp_norm", layer))(xm))
            put(slice(s.sender_mlp(layer), s.sender_mlp(layer) + 1), out[:, :, None])
        m = rmask[:, s.port_logits][:, roles[:, -1]].T.to(dtype)  # [B, S]
        last = corrupt_sum[s.n_senders][:, -1] + torch.einsum("bs,bsd->bd", m, diff[:, -1])
        logits = hf.get_submodule(s.path("lm_head"))(hf.get_submodule(s.path("final_norm"))(last))
        return logits, captured


def _metric(logits: "torch.Tensor", batch: CircuitBatch) -> "torch.Tensor":
    dev = logits.device
    return (logits.gather(1, batch.clean_target.to(dev)[:, None])
            - logits.gather(1, batch.corrupt_target.to(dev)[:, None]))[:, 0]


def gather_role_means(means: "torch.Tensor", role_ids: "torch.Tensor") -> "torch.Tensor":
    """Per-token sender outputs ``[B, T, S, d]`` from role means ``[S, R, d]`` or ``[B, S, R, d]``
    (padding gets zeros: it never reaches a real position)."""
    import torch

    B, T = role_ids.shape
    if means.dim() == 3:
        means = means[None].expand(B, *means.shape)
    idx = role_ids.clamp(min=0).to(means.device)
    out = torch.stack([means[b][:, idx[b]] for b in range(B)])  # [B, S, T, d]
    out = out.permute(0, 2, 1, 3)
    return out * (role_ids >= 0)[:, :, None, None].to(out)


class EdgePatcher:
    """Exact role-level edge patching of one batch (see the module docstring).

    ``model``: a Hugging Face model (or an nnsight wrapper; its module is used), frozen by the
    caller or not (no gradients are taken). The corrupted senders are computed once here.
    """

    def __init__(self, model: Any, batch: CircuitBatch):
        import torch

        self.unrolled = UnrolledModel(model)
        self.shape = self.unrolled.shape
        self.batch = batch
        self.shape.check_width(batch.width)
        with torch.no_grad():
            self.clean_embeds = self.unrolled.embed(batch.input_ids)
            if batch.role_means is not None:
                self.corrupt = gather_role_means(batch.role_means.to(self.clean_embeds), batch.role_ids)
            else:
                emb = (self.unrolled.embed(batch.corrupt_ids) if batch.corrupt_ids is not None
                       else batch.corrupt_embeds.to(self.clean_embeds))
                _, self.corrupt = self.unrolled.forward(emb, batch, capture=True)

    def metrics(self, resid_mask: "np.ndarray", attn_mask: "np.ndarray") -> "np.ndarray":
        """Per-row metric ``[B]`` with the circuit's edges clean and the rest corrupted."""
        import torch

        with torch.no_grad():
            logits, _ = self.unrolled.forward(self.clean_embeds, self.batch, self.corrupt, resid_mask, attn_mask)
            return _metric(logits, self.batch).double().cpu().numpy()

    def evaluate(self, resid_mask: "np.ndarray", attn_mask: "np.ndarray") -> float:
        """Mean metric over the batch (the faithfulness callable of the contract)."""
        return float(self.metrics(resid_mask, attn_mask).mean())

    def full(self) -> float:
        return self.evaluate(*full_masks(self.shape, self.batch.n_roles))

    def empty(self) -> float:
        return self.evaluate(*empty_masks(self.shape, self.batch.n_roles))


class PatchSet:
    """Exact edge patching over several batches: ``evaluate`` is the mean metric over all rows.

    Each batch's corrupted senders (``[B, T, S, d]``) are kept in memory: for long runs, build
    one :class:`EdgePatcher` per batch as needed instead.
    """

    def __init__(self, model: Any, batches: "list[CircuitBatch]"):
        if not batches:
            raise GARConfigError("no batches to patch")
        self.patchers = [EdgePatcher(model, b) for b in batches]
        self.shape = self.patchers[0].shape
        self.n_roles = batches[0].n_roles

    def metrics(self, resid_mask: "np.ndarray", attn_mask: "np.ndarray") -> "np.ndarray":
        import numpy as np

        return np.concatenate([p.metrics(resid_mask, attn_mask) for p in self.patchers])

    def evaluate(self, resid_mask: "np.ndarray", attn_mask: "np.ndarray") -> float:
        return float(self.metrics(resid_mask, attn_mask).mean())

    def full(self) -> float:
        return self.evaluate(*full_masks(self.shape, self.n_roles))

    def empty(self) -> float:
        return self.evaluate(*empty_masks(self.shape, self.n_roles))


__all__ = ["EdgePatcher", "PatchSet", "UnrolledModel", "empty_masks", "full_masks", "gather_role_means"]
