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

So every edge kept gives the clean forward, none kept the corrupted one (identities tested on
every type of the architecture table). Senders' corrupted outputs come from a forward of the
corrupted prompt (pair patching), of the corrupted embeddings, or from role means.

Every architecture runs through the same code: the block's quirks are read from the
:class:`~interp.circuit.ports.CircuitShape` fields and the modules from the architecture table's
paths (a path the type lacks is an identity), never from the model type. The emb sender is the
embedding module's output plus the position embedding where there is one. q/k/v per head come
from separate projections or one fused (``"q|k|v"`` or ``"per_head"`` columns, Conv1D weights
transposed), biases included; the attention norm (none: OLMo-2) comes first and q/k norms after
(per head, or across heads: port ``h``'s query is slice ``h`` of the norm of the whole projection
of its input); rotary turns the first ``rotary_dims`` of each head with per-layer tables
(:func:`~interp.circuit.ports.rotary_tables`). Scores take the layer's scaling, the soft cap and
the layer's sliding window (``i - j < w``). A head's sender is its slice of the output projection
(+ bias / H) and, under post norms, its share ``gain * o_h / rms(sum of this run's heads)``; the
MLP sender is ``post_mlp_norm(mlp(mlp_norm(port)))``, its port fed by the same layer's heads except
under a parallel residual. The logits take the final soft cap. Norms, MLPs and the unembedding are
the model's own modules; the attention is recomputed (softmax in float32, as transformers'
eager attention; float64 for a float64 model).

How it stays cheap (one evaluation costs a small multiple of a plain forward): the residual
stream lives in *role order* (the batch's real tokens sorted by role, padding dropped), sender
major, ``[S, N, d]``. The masks depend on the role only, so a layer's port inputs at one role are
one matrix product ``mask[S_l, ports]^T @ diff[S_l, tokens of the role]`` over the senders, with
``diff`` = this run's output - the corrupted one; when few senders have a kept (or few a dropped)
edge at a role, only those are read. Everything that depends on the corruption alone (the
corrupted partial sums of the residual stream, the corrupted q/k/v) is computed once per batch,
and the ``diff`` buffer is reused across evaluations (:class:`Workspace`, shareable by patchers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gar_tasks.errors import GARConfigError

from .batch import CircuitBatch
from .ports import CircuitShape, attention_masks, circuit_shape, rotary_tables

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

# read only the senders with an edge of the minority kind when they are at most this share of
# the earlier senders (else one dense product over all of them: reading is the cost either way)
GATHER_SHARE = 0.34
# the inputs of this many layers' ports are built from the senders before the first of them in
# one pass over those senders (reading them is what costs: one read serves BLOCK_LAYERS layers;
# taken when an UnrolledModel is built)
BLOCK_LAYERS = 4
# elements of the sender differences read per matrix product (keeps each product in cache)
CHUNK_ELEMENTS = 1 << 19
# "auto": per block, one pass over the earlier senders for the whole block, or one per layer
# when the layers' own reads (only senders with a minority edge) are fewer; "block" / "layer"
# force one way (tests cover both)
PREFIX_MODE = "auto"


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
    """Rotary embedding of ``x[..., N, hd]`` with ``cos``/``sin`` ``[N, rd]`` on the first ``rd``
    dimensions of each head (HF's rotate_half on that part; the rest passes unchanged)."""
    import torch

    rd = cos.shape[-1]
    part = x if rd == x.shape[-1] else x[..., :rd]
    half = rd // 2
    rot = torch.cat((-part[..., half:], part[..., :half]), -1)
    turned = part * cos + rot * sin
    return turned if rd == x.shape[-1] else torch.cat((turned, x[..., rd:]), -1)


def _extend(mask: "torch.Tensor", dims: tuple[int, ...]) -> "torch.Tensor":
    """Append one all-True index along each of ``dims`` (the padding role)."""
    import torch

    for d in dims:
        pad_shape = list(mask.shape)
        pad_shape[d] = 1
        mask = torch.cat([mask, torch.ones(pad_shape, dtype=torch.bool, device=mask.device)], d)
    return mask


class Workspace:
    """A reusable buffer for the per-evaluation sender differences ``[S, N, d]``.

    Allocating (and first touching) hundreds of MB per evaluation costs time; patchers of
    several batches can share one workspace, so only the largest batch's buffer is held.
    """

    def __init__(self) -> None:
        self._flat: dict[str, "torch.Tensor"] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: "torch.dtype", device: "torch.device") -> "torch.Tensor":
        import math

        import torch

        n = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < n or flat.dtype != dtype or flat.device != device:
            self._flat.pop(name, None)
            flat = self._flat[name] = torch.empty(n, dtype=dtype, device=device)
        return flat[:n].view(shape)

    def release(self) -> None:
        self._flat.clear()


class Layout:
    """The batch's real tokens in role order (padding dropped): the patcher's token axis ``N``.

    ``order[n]`` is the flat position ``b * T + t`` of token ``n``; ``groups`` lists
    ``(role, start, stop)`` slices of the token axis; ``to_bt`` maps every flat position back to
    its token (padding to ``N``, a zero row) for the attention, which works on ``[B, T]``.
    """

    def __init__(self, batch: CircuitBatch, device: "torch.device"):
        import torch

        B, T, R = batch.size, batch.width, batch.n_roles
        roles = batch.role_ids.reshape(-1).to(device)
        real = batch.attention_mask.reshape(-1).bool().to(device)
        key = torch.where(real, roles, R)
        order = torch.argsort(key, stable=True)[: int(real.sum())]
        self.B, self.T, self.N = B, T, int(order.numel())
        self.order = order
        self.batch_of = torch.div(order, T, rounding_mode="floor")
        self.role_of = roles[order]
        counts = torch.bincount(self.role_of, minlength=R).tolist()
        self.groups: list[tuple[int, int, int]] = []
        start = 0
        for r, c in enumerate(counts):
            if c:
                self.groups.append((r, start, start + c))
            start += c
        to_bt = torch.full((B * T,), self.N, dtype=torch.long, device=device)
        to_bt[order] = torch.arange(self.N, device=device)
        self.to_bt = to_bt
        self.gather_bt = to_bt.clamp(max=self.N - 1)
        self.last = to_bt.view(B, T)[:, -1]  # the metric's tokens (left padding: last column real)
        self.role_last = batch.role_ids[:, -1].to(device)
        self.roles_bt = torch.where(batch.role_ids < 0, R, batch.role_ids).to(device)  # padding -> R
        self.cache: dict[Any, Any] = {}  # per-batch tables of the model (rotary, positions, masks)

    def tokens(self, x: "torch.Tensor") -> "torch.Tensor":
        """``[B, T, ...]`` -> ``[N, ...]`` (real tokens in role order)."""
        return x.reshape(self.B * self.T, *x.shape[2:])[self.order]

    def to_attn(self, x: "torch.Tensor") -> "torch.Tensor":
        """``[n, N, e]`` -> ``[n, B, T, e]``; padding gets some real token's values (finite, and
        never read: padded keys are masked out, padded queries' outputs dropped)."""
        return x.index_select(1, self.gather_bt).view(x.shape[0], self.B, self.T, x.shape[2])

    def from_attn(self, x: "torch.Tensor") -> "torch.Tensor":
        """``[n, B, T, e]`` -> ``[n, N, e]``."""
        return x.reshape(x.shape[0], self.B * self.T, x.shape[3]).index_select(1, self.order)

    def to_bt_senders(self, x: "torch.Tensor") -> "torch.Tensor":
        """``[S, N, d]`` -> ``[B, T, S, d]`` (zeros at padding)."""
        import torch

        S, _, d = x.shape
        out = torch.zeros(self.B * self.T, S, d, dtype=x.dtype, device=x.device)
        out[self.order] = x.transpose(0, 1)
        return out.view(self.B, self.T, S, d)


class CorruptState:
    """What depends on the corruption alone, per batch: the corrupted sender outputs
    ``senders[S, N, d]`` (``None``: zeros), the corrupted residual stream before the first layer of
    each block of :data:`BLOCK_LAYERS` layers (``before[l]``, set at block starts) and the corrupted
    senders from there to layer ``l`` (``delta[l]``, ``None`` at block starts), the sum of each
    layer's corrupted heads (``heads[l]``), the final sum (``total``), and the corrupted q / k / v
    of each layer in attention layout ``[n, B, T, hd]``."""

    def __init__(self, senders: "torch.Tensor | None", before: list, delta: list, heads: list,
                 total: "torch.Tensor", qkv: list | None):
        self.senders, self.before, self.delta = senders, before, delta
        self.heads, self.total, self.qkv = heads, total, qkv
        self.means: "tuple[torch.Tensor, Layout] | None" = None

    @property
    def zero(self) -> bool:
        """No corrupted senders (the corrupted run itself)."""
        return self.senders is None and self.means is None

    def keep_means_only(self, means: "torch.Tensor", lay: Layout) -> None:
        """Role-mean ablation: drop the per-token senders, keep the means ``[S, R, d]`` /
        ``[B, S, R, d]`` (a fraction of the size) and gather from them per layer."""
        self.senders, self.means = None, (means, lay)

    def slice(self, lo: int, hi: int) -> "torch.Tensor":
        """Corrupted outputs ``[hi - lo, N, d]`` of senders lo..hi-1."""
        if self.means is None:
            assert self.senders is not None
            return self.senders[lo:hi]
        return _token_means(self.means[0][..., lo:hi, :, :], self.means[1])

    def nbytes(self) -> int:
        ts = [self.senders, self.total, *self.before, *self.delta, *self.heads]
        ts += [t for trio in self.qkv or [] for t in trio]
        if self.means is not None:
            ts.append(self.means[0])
        return sum(t.element_size() * t.nelement() for t in ts if t is not None)


class UnrolledModel:
    """The model's forward as senders and ports (plain torch on the HF modules' weights).

    Reads the block's quirks from the :class:`CircuitShape` fields and the modules from the
    architecture table's paths (a path the architecture lacks is an identity), never the type.
    """

    def __init__(self, model: Any):
        from ..core.architectures import architecture

        hf = _hf(model)
        self.model = hf
        self.shape = s = circuit_shape(hf)
        self.paths = architecture(s.model_type, "circuit").paths
        self.block = BLOCK_LAYERS  # fixed here: the corrupted states built with this model follow it
        self._cache: dict[tuple, dict[str, Any]] = {}
        self._modules: dict[tuple[str, int | None], Any] = {}
        if s.post_norms and s.norm not in ("rms", "rms_offset"):
            raise GARConfigError(f"norms after attention of kind {s.norm!r} are not supported")

    def module(self, key: str, layer: int | None = None) -> Any:
        """The module at path ``key`` (of ``layer``), ``None`` where the architecture has none."""
        k = (key, layer)
        if k not in self._modules:
            self._modules[k] = (None if getattr(self.paths, key) is None
                                else self.model.get_submodule(self.shape.path(key, layer)))
        return self._modules[k]

    def embed(self, ids: "torch.Tensor") -> "torch.Tensor":
        """The embedding module's output (inputs_embeds; positions are added by :meth:`run`)."""
        module = self.module("embed")
        return module(ids.to(module.weight.device))

    # ---- pieces
    def block_start(self, layer: int) -> int:
        return layer - layer % self.block

    def _gain(self, norm: Any, dtype: "torch.dtype") -> "torch.Tensor":
        """An RMS norm's gain: ``w``, or ``1 + w`` for the offset kind (Gemma)."""
        w = norm.weight.detach().to(dtype)
        return 1 + w if self.shape.norm == "rms_offset" else w

    def _eps(self, norm: Any) -> float:
        for name in ("variance_epsilon", "eps", "epsilon"):
            value = getattr(norm, name, None)
            if isinstance(value, (int, float)):
                return float(value)
        return self.shape.eps

    def _positions(self, batch: CircuitBatch, lay: Layout, like: "torch.Tensor") -> "torch.Tensor | None":
        """The position embedding ``[N, d]`` (role order) added to the emb sender; None without one."""
        module = self.module("pos_embed")
        if module is None:
            return None
        key = ("positions", like.dtype, like.device)
        if key not in lay.cache:
            pos = batch.position_ids.to(module.weight.device)
            lay.cache[key] = lay.tokens(module(pos).detach().to(like))
        return lay.cache[key]

    def _rotary(self, batch: CircuitBatch, lay: Layout, like: "torch.Tensor") -> "list | None":
        """Per layer the rotary ``(cos, sin)`` ``[N, rotary_dims]`` (role order); None: no rotary."""
        if self.shape.rotary_dims is None:
            return None
        key = ("rotary", like.dtype, like.device)
        if key not in lay.cache:
            tables = rotary_tables(self.model, batch.position_ids, like.dtype)
            done: dict[int, tuple] = {}
            out = []
            for cos, sin in tables:
                if id(cos) not in done:
                    done[id(cos)] = (lay.tokens(cos.to(like.device)), lay.tokens(sin.to(like.device)))
                out.append(done[id(cos)])
            lay.cache[key] = out
        return lay.cache[key]

    def _allowed(self, batch: CircuitBatch, lay: Layout, device: "torch.device") -> list:
        """Per layer the ``[B, T(i), T(j)]`` keys a query may read (:func:`~interp.circuit.ports.attention_masks`)."""
        key = ("allowed", device)
        if key not in lay.cache:
            lay.cache[key] = [a[:, 0].to(device) for a in attention_masks(self.shape, batch)[0]]
        return lay.cache[key]

    def _projections(self, layer: int) -> dict[str, tuple["torch.Tensor", "torch.Tensor | None"]]:
        """Layer ``layer``'s q / k / v weights ``[n * hd, d]`` and biases ``[n * hd]``, from separate
        projections or one fused (``"q|k|v"`` or ``"per_head"`` columns; conv1d: stored ``[in, out]``)."""
        s = self.shape
        H, G, hd, d = s.n_heads, s.n_groups, s.head_dim, s.d_model
        if s.fused_qkv is None:
            out = {}
            for name in ("q", "k", "v"):
                mod = self.module(name, layer)
                bias = getattr(mod, "bias", None)
                out[name] = (mod.weight.detach(), None if bias is None else bias.detach())
            return out
        mod = self.module("qkv", layer)
        w = mod.weight.detach()
        w = w.T if s.conv1d else w  # [out, d]
        bias = getattr(mod, "bias", None)
        bias = None if bias is None else bias.detach()
        if s.fused_qkv == "per_head":
            wv = w.reshape(H, 3, hd, d)
            bv = None if bias is None else bias.reshape(H, 3, hd)
            return {name: (wv[:, i].reshape(H * hd, d), None if bv is None else bv[:, i].reshape(H * hd))
                    for i, name in enumerate(("q", "k", "v"))}
        if s.fused_qkv != "q|k|v":
            raise GARConfigError(f"fused q/k/v layout {s.fused_qkv!r} is not supported")
        cuts = ((0, H * hd), (H * hd, (H + G) * hd), ((H + G) * hd, (H + 2 * G) * hd))
        return {name: (w[lo:hi], None if bias is None else bias[lo:hi])
                for name, (lo, hi) in zip(("q", "k", "v"), cuts)}

    def _weights(self, layer: int, dtype: "torch.dtype") -> dict[str, Any]:
        """Layer ``layer``'s projections per head, contiguous, read once (the model is frozen).

        In float32 a plain RMS attention norm's gain (``w``, or ``1 + w``) is folded into the
        q/k/v projections, so a port's normalised input is never formed: ``W diag(g) x / rms(x)``
        is the projection of the scaled input; other dtypes and norm kinds keep the model's norm
        module (its float32 internals exactly). Under q/k norms across heads each port also needs
        the whole projection (``q_full`` / ``k_full`` ``[d, n * hd]``).
        """
        import torch

        key = (layer, dtype)
        if key not in self._cache:
            s = self.shape
            norm = self.module("attn_norm", layer)
            fold = dtype == torch.float32 and norm is not None and s.norm in ("rms", "rms_offset")
            out: dict[str, Any] = {"fold": fold, "norm": norm, "eps": None if norm is None else self._eps(norm)}
            gain = self._gain(norm, dtype) if fold else None
            for name, (w, bias) in self._projections(layer).items():
                n = s.n_heads if name == "q" else s.n_groups
                w = w.to(dtype)
                if fold:
                    w = w * gain
                out[name] = w.view(n, s.head_dim, s.d_model).transpose(1, 2).contiguous()  # [n, d, hd]
                out[name + "_bias"] = None if bias is None else bias.to(dtype).view(n, 1, s.head_dim)
                if s.qk_norm == "across_heads" and name != "v":
                    out[name + "_full"] = w.T.contiguous()  # [d, n * hd]
                    out[name + "_full_bias"] = None if bias is None else bias.to(dtype)
            for name in ("q_norm", "k_norm"):
                out[name] = self.module(name, layer) if s.qk_norm else None
            o = self.module("o", layer)
            wo = o.weight.detach().to(dtype)
            out["o"] = (wo.view(s.n_heads, s.head_dim, s.d_model) if s.conv1d  # stored [in, out]
                        else wo.view(s.d_model, s.n_heads, s.head_dim).permute(1, 2, 0)).contiguous()  # [H, hd, d]
            bias = getattr(o, "bias", None)  # shared equally by the heads
            out["o_bias"] = None if bias is None else bias.detach().to(dtype) / s.n_heads
            post = self.module("post_attn_norm", layer) if s.post_norms else None
            out["post"] = None if post is None else (self._gain(post, dtype), self._eps(post))
            self._cache[key] = out
        return self._cache[key]

    def _qkv(self, layer: int, x: "torch.Tensor") -> "torch.Tensor":
        """q (``H`` heads), k and v (``G`` groups each) ``[H + 2G, N, hd]``, no rotary yet, of the
        port inputs ``x[H + 2G, N, d]`` (q/k norms applied)."""
        import torch

        s = self.shape
        H, G, hd = s.n_heads, s.n_groups, s.head_dim
        w = self._weights(layer, x.dtype)
        r = None
        if w["fold"]:
            r = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(s.d_model).add_(w["eps"]))
        elif w["norm"] is not None:
            x = w["norm"](x)
        out = torch.empty(H + 2 * G, x.shape[1], hd, dtype=x.dtype, device=x.device)
        for name, lo, hi in (("q", 0, H), ("k", H, H + G), ("v", H + G, H + 2 * G)):
            if s.qk_norm == "across_heads" and name != "v":
                # port i's query / key: slice i of the norm of the whole projection of its input
                full = torch.matmul(x[lo:hi], w[name + "_full"])  # [n, N, n * hd]
                if r is not None:
                    full.mul_(r[lo:hi])
                if w[name + "_full_bias"] is not None:
                    full.add_(w[name + "_full_bias"])
                full = w[name + "_norm"](full)
                n = hi - lo
                idx = torch.arange(n, device=x.device)
                out[lo:hi] = full.view(n, x.shape[1], n, hd)[idx, :, idx]
                continue
            y = torch.bmm(x[lo:hi], w[name], out=out[lo:hi])
            if r is not None:
                y.mul_(r[lo:hi])
            if w[name + "_bias"] is not None:
                y.add_(w[name + "_bias"])
            if s.qk_norm == "per_head" and name != "v":
                out[lo:hi] = w[name + "_norm"](y)
        return out

    def _turn(self, qkv: "torch.Tensor", rotary: "list | None", layer: int) -> None:
        """Rotary on the queries and keys of ``qkv[H + 2G, N, hd]`` in place (layer's tables)."""
        if rotary is None:
            return
        n = self.shape.n_heads + self.shape.n_groups
        cos, sin = rotary[layer]
        qkv[:n] = _rope(qkv[:n], cos, sin)

    def corrupt_state(self, batch: CircuitBatch, lay: Layout, senders: "torch.Tensor | None",
                      like: "torch.Tensor") -> CorruptState:
        """The partial sums and corrupted q/k/v of ``senders`` (``None``: all zero, no q/k/v).

        Every sum is taken in the order :meth:`run` takes it, and the q/k/v by the same code, so
        where this run's senders equal the corrupted ones (pair patching, before the first
        differing token) the patched run reproduces the corrupted run bit for bit: the edges
        there have exactly zero effect, as in float64.
        """
        s = self.shape
        H, G, L = s.n_heads, s.n_groups, s.n_layers
        if senders is None:
            zero = like.new_zeros(lay.N, s.d_model)
            return CorruptState(None, [zero] * L, [zero] * L, [zero] * L, zero, None)
        rotary = self._rotary(batch, lay, like)
        running = senders[0].clone()
        before: list = []
        delta: list = []
        heads, qkv = [], []
        block = None
        for layer in range(L):
            if layer == self.block_start(layer):
                before.append(running)
                delta.append(None)
                block, x = None, running
            else:
                before.append(None)
                delta.append(block)
                x = before[self.block_start(layer)] + block
            t = self._qkv(layer, x[None].expand(H + 2 * G, *x.shape).contiguous())
            self._turn(t, rotary, layer)
            t = lay.to_attn(t)
            qkv.append((t[:H], t[H:H + G], t[H + G:]))
            first = s.sender_head(layer, 0)
            heads.append(senders[first:first + H].sum(0))
            new = heads[-1] + senders[s.sender_mlp(layer)]
            running = running + new
            block = new if block is None else block + new
        return CorruptState(senders, before, delta, heads, running, qkv)

    @staticmethod
    def _forms(rm: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", list[int], list[int]]:
        """Per role, the senders with a kept edge and those with a dropped edge among ``rm[R, S', P']``."""
        kept_rows, dropped_rows = rm.any(2), ~rm.all(2)  # [R, S']
        return kept_rows, dropped_rows, kept_rows.sum(1).tolist(), dropped_rows.sum(1).tolist()

    @staticmethod
    def _reads(n_kept: list[int], n_dropped: list[int], n_senders: int, lay: Layout) -> int:
        """Sender rows x tokens that :meth:`_sender_sum` reads for these counts."""
        total = 0
        for r, a, b in lay.groups:
            k = min(n_kept[r], n_dropped[r])
            total += (b - a) * (k if k <= GATHER_SHARE * n_senders else n_senders)
        return total

    def _sender_sum(self, lay: Layout, buf: "torch.Tensor", lo: int, hi: int, run: "torch.Tensor",
                    rm: "torch.Tensor", out: "torch.Tensor", base: "torch.Tensor | None" = None,
                    extra: "torch.Tensor | None" = None) -> None:
        """``out[P', N, d] (+)= extra + sum over senders lo..hi-1 kept at their port and the token's role``
        (``buf[1:]``: the senders' differences, ``buf[0]`` scratch; ``rm[R, hi - lo, P']``: the
        mask; ``run``: those senders' summed differences; with ``base`` the result is
        ``base + ...``, else it is added to ``out``; ``extra[N, d]`` is added at every port).

        Per role: ``sum_kept diff`` or, when fewer senders have a dropped edge than a kept one,
        ``run - sum_dropped diff``; only the senders with such an edge are read when they are
        few, in chunks of tokens (one matrix product each). With ``base`` and ``lo == 0`` the
        starting value goes into the scratch row next to the senders, so the product writes
        ``out`` directly.
        """
        import torch

        W = buf[1:]
        n_ports, n_senders, d = rm.shape[2], hi - lo, W.shape[2]
        kept_rows, dropped_rows, n_kept, n_dropped = self._forms(rm)
        slot = base is not None and lo == 0
        for r, a, b in lay.groups:
            if n_kept[r] <= n_dropped[r]:
                k, rows, w, sign, dropped = n_kept[r], kept_rows[r], rm[r], 1.0, False
            else:
                k, rows, w, sign, dropped = n_dropped[r], dropped_rows[r], ~rm[r], -1.0, True
            terms = [t[a:b] for t in (base, extra, run if dropped else None) if t is not None]
            start = None if not terms else terms[0] if len(terms) == 1 else sum(terms[1:], terms[0])
            if k == 0:
                if base is not None:
                    out[:, a:b] = start
                elif start is not None:
                    out[:, a:b] += start
                continue
            idx = rows.nonzero()[:, 0] + lo if k <= GATHER_SHARE * n_senders else None
            if idx is None:
                k = n_senders
            else:
                w = w[idx - lo]
            wT = w.T.to(W.dtype)  # [P', k]
            if slot:  # buf rows 0 (the start) and 1 + sender
                buf[0, a:b] = start
                wT = torch.cat([torch.ones(n_ports, 1, dtype=W.dtype, device=W.device), sign * wT], 1)
                rows_buf = None if idx is None else torch.cat([idx.new_zeros(1), idx + 1])
                k += 1
            wT = wT.contiguous()
            step = max(1, CHUNK_ELEMENTS // (k * d))
            for c0 in range(a, b, step):
                c1 = min(b, c0 + step)
                o = out[:, c0:c1]
                if slot:
                    D = buf[:hi + 1, c0:c1] if rows_buf is None else buf[:, c0:c1].index_select(0, rows_buf)
                    torch.mm(wT, D.reshape(k, -1), out=o.reshape(n_ports, -1))
                    continue
                D = W[lo:hi, c0:c1] if idx is None else W[:, c0:c1].index_select(0, idx)
                prod = torch.mm(wT, D.reshape(k, -1)).view(n_ports, c1 - c0, d)
                if base is not None:
                    torch.add(start[c0 - a:c1 - a], prod, alpha=sign, out=o)
                elif start is None:
                    o.add_(prod, alpha=sign)
                else:
                    o.add_(torch.add(start[c0 - a:c1 - a], prod, alpha=sign))

    def _mlp_port(self, lay: Layout, rmT: "torch.Tensor", layer: int, W: "torch.Tensor", x: "torch.Tensor",
                  corrupt_heads: "torch.Tensor", heads_sum: "torch.Tensor") -> "torch.Tensor":
        """The mlp port's input: ``x`` (its part from earlier senders) + the corrupted heads + the
        kept heads' differences (kept heads: + their differences; else + all the heads'
        differences - the dropped ones')."""
        import torch

        s = self.shape
        H, d, first = s.n_heads, s.d_model, s.sender_head(layer, 0)
        hm = rmT[:, first:first + H, s.port_mlp(layer)]  # [R, H]
        n_kept = hm.sum(1).tolist()
        xm = torch.empty_like(x)
        for r, a, b in lay.groups:
            k, xr, hc = n_kept[r], x[a:b], corrupt_heads[a:b]
            if 2 * k > H:  # all heads' differences, minus the dropped ones'
                xr = xr + (hc + heads_sum[a:b])
                w, sign = ~hm[r], -1.0
            else:
                xr = xr + hc
                w, sign = hm[r], 1.0
            if 0 < k < H:
                xr = xr + sign * torch.mm(w[None].to(x.dtype), W[first:first + H, a:b].reshape(H, -1)).view(b - a, d)
            xm[a:b] = xr
        return xm

    def _attend(self, layer: int, qkv: "torch.Tensor", state: CorruptState, pair_masks: tuple | None,
                allowed: "torch.Tensor", groups: "torch.Tensor") -> "torch.Tensor":
        """Every head's output ``z [H, B, T, hd]`` of ``layer`` from this run's q/k/v ``qkv`` (attention
        layout, before grouping); with ``pair_masks`` (``[3, H, B, T, T]`` and which of q/k/v any / every
        pair keeps), the dropped pairs read the corrupted q / k / v instead."""
        import torch

        s = self.shape
        H, G = s.n_heads, s.n_groups
        dtype = qkv.dtype
        # [H, B, T, hd] each (k, v: the group's projection for each of its query heads)
        q, k, v = qkv[:H], qkv[H:H + G].index_select(0, groups), qkv[H + G:].index_select(0, groups)
        if pair_masks is None:
            scores, mv, vx = torch.matmul(q, k.transpose(-1, -2)), None, None
        else:
            qx, kx, vx = state.qkv[layer]
            kx, vx = kx.index_select(0, groups), vx.index_select(0, groups)
            (mq, mk, mv), some, every = pair_masks  # [H, B, T(i), T(j)] each
            qs = [t for use, t in ((some[0], q), (not every[0], qx)) if use]
            ks = [t for use, t in ((some[1], k), (not every[1], kx)) if use]

            def with_key(qq: "torch.Tensor") -> "torch.Tensor":
                sc = [torch.matmul(qq, kk.transpose(-1, -2)) for kk in ks]
                return sc[0] if len(sc) == 1 else torch.where(mk, sc[0], sc[1])

            sq = [with_key(qq) for qq in qs]
            scores = sq[0] if len(sq) == 1 else torch.where(mq, sq[0], sq[1])
            if every[2]:
                mv = None
        scores = scores * s.scale(layer)
        if s.attn_softcap is not None:
            scores = torch.tanh(scores / s.attn_softcap) * s.attn_softcap
        scores = torch.where(allowed, scores, torch.full_like(scores, torch.finfo(dtype).min))
        # transformers' eager attention takes the softmax in float32; a float64 model keeps float64
        probs = torch.softmax(scores, -1, dtype=torch.float64 if dtype == torch.float64 else torch.float32).to(dtype)
        if mv is None:
            return torch.matmul(probs, v)
        if not some[2]:
            return torch.matmul(probs, vx)
        # per query: this run's values minus the dropped pairs' change, or the corrupted values plus
        # the kept pairs' change, whichever pairs are fewer (a change that is exactly 0 changes
        # nothing, so edges between identical tokens have no effect)
        real = allowed.to(dtype)
        kept_form = (mv * real).sum(-1, keepdim=True) * 2 >= real.sum(-1, keepdim=True)  # [H, B, T, 1]
        corr = torch.matmul(probs * torch.where(kept_form, ~mv, mv), v - vx)
        if bool(kept_form.all()):
            return torch.matmul(probs, v) - corr
        if not bool(kept_form.any()):
            return torch.matmul(probs, vx) + corr
        return torch.where(kept_form, torch.matmul(probs, v) - corr, torch.matmul(probs, vx) + corr)

    def _head_outputs(self, layer: int, z: "torch.Tensor", out: "torch.Tensor") -> None:
        """``out[H, N, d]`` = each head's sender output from its ``z [H, N, hd]``: its slice of the
        output projection, its share of the bias, and under a post-attention norm its share of the
        normed sum of this run's heads."""
        import torch

        wl = self._weights(layer, z.dtype)
        heads = torch.bmm(z, wl["o"], out=out)
        if wl["o_bias"] is not None:
            heads.add_(wl["o_bias"])
        if wl["post"] is not None:
            gain, eps_post = wl["post"]
            total = heads.sum(0)
            heads.mul_(torch.rsqrt(total.square().mean(-1, keepdim=True).add_(eps_post))).mul_(gain)

    def run(self, batch: CircuitBatch, lay: Layout, embeds: "torch.Tensor", state: CorruptState,
            buf: "torch.Tensor", resid_mask: "torch.Tensor | None" = None,
            attn_mask: "torch.Tensor | None" = None, work: "Workspace | None" = None) -> "torch.Tensor":
        """Last-position logits ``[B, V]`` of the patched forward; ``buf[1 + S, N, d]``: ``buf[1:]``
        gets every sender's output in this run minus its corrupted output (``buf[0]``: scratch).

        ``embeds``: this run's input embeddings ``[N, d]`` (role order); masks: bool tensors
        ``[S, P, R]`` and ``[L, H, R, R, 3]`` (``None``: every edge kept).
        """
        import torch

        s = self.shape
        L, H, G, d = s.n_layers, s.n_heads, s.n_groups, s.d_model
        B, T, R = batch.size, batch.width, batch.n_roles
        dtype, device = embeds.dtype, embeds.device
        if resid_mask is None:
            resid_mask = torch.ones(s.n_senders, s.n_ports, R, dtype=torch.bool, device=device)
        rmT = resid_mask.permute(2, 0, 1)  # [R, S, P]
        amask = None if attn_mask is None else _extend(attn_mask, (2, 3))
        if amask is not None and state.qkv is None:
            raise GARConfigError("attention masks need corrupted senders")
        if amask is not None:  # per layer and q/k/v, the mask of every (query i, key j) pair
            R1 = R + 1
            pair = (lay.roles_bt[:, None, :] * R1 + lay.roles_bt[:, :, None]).reshape(-1)  # (role j, role i)
            am_all = amask.permute(0, 4, 1, 2, 3).reshape(L, 3, H, R1 * R1).index_select(3, pair)
            am_some, am_every = am_all.any(3).any(2).tolist(), am_all.all(3).all(2).tolist()
            am_all = am_all.view(L, 3, H, B, T, T)
        zero = state.zero
        W = buf[1:]
        ppl, n_attn = s.ports_per_layer, H + 2 * G
        block_shape = (min(self.block, L) * ppl, lay.N, d)
        A = (work.get("block", block_shape, dtype, device) if work is not None
             else torch.empty(block_shape, dtype=dtype, device=device))

        def put(idx: slice, value: "torch.Tensor") -> None:
            if zero:
                W[idx] = value
            else:
                torch.sub(value, state.slice(idx.start, idx.stop), out=W[idx])

        positions = self._positions(batch, lay, embeds)
        put(slice(0, 1), (embeds if positions is None else embeds + positions)[None])
        run = W[0].clone()  # sum of the differences so far
        rotary = self._rotary(batch, lay, embeds)
        allowed_by_layer = self._allowed(batch, lay, device)  # [B, T(i), T(j)] per layer
        groups = torch.arange(H, device=device) // s.group_size
        for layer in range(L):
            l0 = self.block_start(layer)
            n0, nb = s.senders_before(l0), s.senders_before(layer)
            p0 = s.port_q(layer, 0)
            if layer == l0:  # this block's ports (q/k/v and mlp) from the senders before the block
                l1 = min(L, l0 + self.block)
                rm_block = rmT[:, :n0, p0:s.port_q(l1 - 1, 0) + ppl]
                _, _, kb, db = self._forms(rm_block)
                per_layer = [self._forms(rm_block[:, :, j * ppl:(j + 1) * ppl])[2:] for j in range(l1 - l0)]
                # one pass for the block, unless the layers' own (sparser) reads are fewer
                by_layer = PREFIX_MODE == "layer" or (PREFIX_MODE == "auto" and (
                    sum(self._reads(kl, dl, n0, lay) for kl, dl in per_layer) < self._reads(kb, db, n0, lay)))
                if not by_layer:
                    self._sender_sum(lay, buf, 0, n0, run, rm_block, A[:(l1 - l0) * ppl], state.before[layer])
                run_block = torch.zeros_like(run)
            X = A[(layer - l0) * ppl:(layer - l0 + 1) * ppl]  # [ppl, N, d]: q/k/v ports, then mlp
            if by_layer:
                self._sender_sum(lay, buf, 0, n0, run - run_block, rmT[:, :n0, p0:p0 + ppl], X, state.before[l0])
            if nb > n0:  # the senders of the block's earlier layers (their corrupted sum: delta)
                self._sender_sum(lay, buf, n0, nb, run_block, rmT[:, n0:nb, p0:p0 + ppl], X, extra=state.delta[layer])
            qkv = self._qkv(layer, X[:n_attn])
            self._turn(qkv, rotary, layer)
            qkv = lay.to_attn(qkv)
            pair_masks = None if amask is None else (am_all[layer], am_some[layer], am_every[layer])
            z = self._attend(layer, qkv, state, pair_masks, allowed_by_layer[layer], groups)
            first = s.sender_head(layer, 0)
            self._head_outputs(layer, lay.from_attn(z), W[first:first + H])
            if not zero:  # this run's head outputs minus the corrupted ones (exactly 0 where equal)
                W[first:first + H].sub_(state.slice(first, first + H))
            # the mlp port: its part from earlier senders, the corrupted heads, the kept heads' differences
            # (kept heads: + their differences; else + all the heads' differences - the dropped ones')
            heads_sum = W[first:first + H].sum(0)
            if s.parallel:  # the mlp reads the block's input: the senders before the layer only
                xm = X[n_attn]
            else:
                xm = self._mlp_port(lay, rmT, layer, W, X[n_attn], state.heads[layer], heads_sum)
            norm = self.module("mlp_norm", layer)
            out = self.module("mlp", layer)(xm if norm is None else norm(xm))
            post = self.module("post_mlp_norm", layer)
            if post is not None:
                out = post(out)
            put(slice(s.sender_mlp(layer), s.sender_mlp(layer) + 1), out[None])
            new = heads_sum + W[s.sender_mlp(layer)]
            run += new
            run_block += new
        m = resid_mask[:, s.port_logits, lay.role_last].to(dtype)  # [S, B]
        last = state.total[lay.last] + torch.einsum("sb,sbd->bd", m, W[:, lay.last])
        logits = self.module("lm_head")(self.module("final_norm")(last))
        if s.final_softcap is not None:
            logits = torch.tanh(logits / s.final_softcap) * s.final_softcap
        return logits

    def forward(self, embeds: "torch.Tensor", batch: CircuitBatch, corrupt: "torch.Tensor | None" = None,
                resid_mask: "np.ndarray | None" = None, attn_mask: "np.ndarray | None" = None,
                capture: bool = False) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        """Last-position logits ``[B, V]`` (and, if ``capture``, every sender's output ``[B, T, S, d]``).

        ``embeds``: ``[B, T, d]``; ``corrupt``: corrupted sender outputs ``[B, T, S, d]`` (``None``:
        zeros, only valid with full masks). Masks default to every edge kept. (One-off use: the
        :class:`EdgePatcher` keeps the per-batch state instead of rebuilding it per call.)
        """
        import torch

        lay = Layout(batch, embeds.device)
        senders = None if corrupt is None else lay.tokens(corrupt.to(embeds)).transpose(0, 1).contiguous()
        state = self.corrupt_state(batch, lay, senders, embeds)
        rm, am = check_masks(self.shape, batch.n_roles, resid_mask, attn_mask, embeds.device)
        if am is not None and senders is None:
            am = None if bool(am.all()) else am
        buf = torch.empty(1 + self.shape.n_senders, lay.N, self.shape.d_model, dtype=embeds.dtype,
                          device=embeds.device)
        W = buf[1:]
        logits = self.run(batch, lay, lay.tokens(embeds), state, buf, rm, am)
        if not capture:
            return logits, None
        return logits, lay.to_bt_senders(W if senders is None else W + senders)


def check_masks(shape: CircuitShape, n_roles: int, resid_mask: "np.ndarray | None", attn_mask: "np.ndarray | None",
                device: "torch.device") -> tuple["torch.Tensor | None", "torch.Tensor | None"]:
    """The masks as bool tensors (``None`` stays ``None``: every edge kept), shapes checked."""
    import numpy as np
    import torch

    s, R = shape, n_roles
    want_r, want_a = (s.n_senders, s.n_ports, R), (s.n_layers, s.n_heads, R, R, 3)
    if (resid_mask is not None and tuple(resid_mask.shape) != want_r) or (
            attn_mask is not None and tuple(attn_mask.shape) != want_a):
        got = [list(m.shape) if m is not None else None for m in (resid_mask, attn_mask)]
        raise GARConfigError(f"masks must be {list(want_r)} and {list(want_a)}, got {got[0]} and {got[1]}")
    out = []
    for m in (resid_mask, attn_mask):
        out.append(None if m is None else torch.from_numpy(np.ascontiguousarray(m, dtype=bool)).to(device))
    return out[0], out[1]


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


def _token_means(means: "torch.Tensor", lay: Layout) -> "torch.Tensor":
    """Role means ``[S, R, d]`` or ``[B, S, R, d]`` as sender outputs ``[S, N, d]`` (role order)."""
    if means.dim() == 3:
        return means[:, lay.role_of].contiguous()
    return means[lay.batch_of, :, lay.role_of].transpose(0, 1).contiguous()


class EdgePatcher:
    """Exact role-level edge patching of one batch (see the module docstring).

    ``model``: a Hugging Face model (or an nnsight wrapper; its module is used), frozen by the
    caller or not (no gradients are taken), or an :class:`UnrolledModel` shared by the patchers
    of several batches (it keeps per-head copies of the projections). The corrupted senders
    (``corrupt``, ``[S, N, d]`` in role order; under role means only the means are kept) and
    everything derived from them are computed once here; ``workspace`` (shared by the patchers
    of several batches, or private) holds the per-evaluation buffers.
    """

    def __init__(self, model: Any, batch: CircuitBatch, workspace: Workspace | None = None):
        import torch

        self.unrolled = model if isinstance(model, UnrolledModel) else UnrolledModel(model)
        self.shape = s = self.unrolled.shape
        self.batch = batch
        self.workspace = workspace if workspace is not None else Workspace()
        with torch.no_grad():
            self.clean_embeds = self.unrolled.embed(batch.input_ids)
            like = self.clean_embeds
            self.layout = lay = Layout(batch, like.device)
            means = None
            if batch.role_means is not None:
                means = batch.role_means.to(like)
                corrupt = _token_means(means, lay)
            else:
                emb = (self.unrolled.embed(batch.corrupt_ids) if batch.corrupt_ids is not None
                       else batch.corrupt_embeds.to(like))
                buf = torch.empty(1 + s.n_senders, lay.N, s.d_model, dtype=like.dtype, device=like.device)
                zero = self.unrolled.corrupt_state(batch, lay, None, like)
                self.unrolled.run(batch, lay, lay.tokens(emb), zero, buf, work=self.workspace)
                corrupt = buf[1:]
            self.state = self.unrolled.corrupt_state(batch, lay, corrupt, like)
            if means is not None:
                self.state.keep_means_only(means, lay)
                del corrupt

    @property
    def corrupt(self) -> "torch.Tensor":
        """The corrupted sender outputs ``[S, N, d]`` (role order; gathered again under role means)."""
        return self.state.slice(0, self.shape.n_senders)

    @property
    def nbytes(self) -> int:
        """Memory held by this patcher's per-batch state (not the shared workspace)."""
        return self.state.nbytes()

    def logits(self, resid_mask: "np.ndarray", attn_mask: "np.ndarray") -> "torch.Tensor":
        """Last-position logits ``[B, V]`` with the circuit's edges clean and the rest corrupted."""
        import torch

        s, lay, like = self.shape, self.layout, self.clean_embeds
        rm, am = check_masks(s, self.batch.n_roles, resid_mask, attn_mask, like.device)
        with torch.no_grad():
            buf = self.workspace.get("diff", (1 + s.n_senders, lay.N, s.d_model), like.dtype, like.device)
            return self.unrolled.run(self.batch, lay, lay.tokens(like), self.state, buf, rm, am, self.workspace)

    def metrics(self, resid_mask: "np.ndarray", attn_mask: "np.ndarray") -> "np.ndarray":
        """Per-row metric ``[B]`` with the circuit's edges clean and the rest corrupted."""
        return _metric(self.logits(resid_mask, attn_mask), self.batch).double().cpu().numpy()

    def evaluate(self, resid_mask: "np.ndarray", attn_mask: "np.ndarray") -> float:
        """Mean metric over the batch (the faithfulness callable of the contract)."""
        return float(self.metrics(resid_mask, attn_mask).mean())

    def full(self) -> float:
        return self.evaluate(*full_masks(self.shape, self.batch.n_roles))

    def empty(self) -> float:
        return self.evaluate(*empty_masks(self.shape, self.batch.n_roles))


class PatchSet:
    """Exact edge patching over several batches: ``evaluate`` is the mean metric over all rows.

    Each batch's corrupted state (``EdgePatcher.nbytes``) is kept in memory, the evaluation buffer
    is shared: for long runs, build one :class:`EdgePatcher` per batch as needed instead.
    """

    def __init__(self, model: Any, batches: "list[CircuitBatch]"):
        if not batches:
            raise GARConfigError("no batches to patch")
        work, unrolled = Workspace(), UnrolledModel(model)
        self.patchers = [EdgePatcher(unrolled, b, work) for b in batches]
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


__all__ = ["EdgePatcher", "Layout", "PatchSet", "UnrolledModel", "Workspace", "check_masks", "empty_masks",
           "full_masks", "gather_role_means"]
