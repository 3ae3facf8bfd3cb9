"""The circuit graph's nodes for one model: senders, ports, and where they live.

Senders (what writes to the residual stream), in this order: ``emb``; then for each layer ``l``
its query heads ``(l, 0) .. (l, H-1)`` (head ``h``'s slice of the output projection's input times
its output-projection columns) and ``mlp l``.  ``S = 1 + L * (H + 1)``.

Ports (what reads the residual stream), in this order: for each layer ``l`` the per-query-head
``q`` inputs, the per-KV-group ``k`` then ``v`` inputs (grouped-query attention is native: the
k/v projection is shared by the group's query heads, so the port is the group's input), the
``mlp`` input; then ``logits`` (read at END only).  ``P = L * (H + 2G + 1) + 1``.

A port's input is the residual stream entering the layer before any norm (q/k/v: the attention
norm's input; mlp: the MLP norm's input; logits: the final norm's input), seen only through that
port. Under a parallel residual (GPT-NeoX) the mlp port, like q/k/v, reads only the senders before
its layer.

How each architecture's block departs from a plain Llama block (norm kind, q/k norms, norms after
attention / MLP, fused projections, per-layer query scaling, sliding windows, soft caps, partial
rotary) is data on the shape, read from the one architecture table
(:mod:`interp.core.architectures`); the engine's forward (:mod:`interp.circuit.patch`) and its
attribution (:mod:`interp.circuit.eap`) read those fields, never the model type.

Where the architecture has a norm between attention and the residual add (Gemma-2/3, OLMo-2), a
head's sender output is its share of the normed sum, ``gain * o_h / rms(sum_h' o_h')`` (the rms
of its own run's attention output at that token); an output-projection bias (GPT-2, GPT-NeoX) is
shared equally by the layer's heads. Both are exact: all heads together give the block's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gar_tasks.errors import GARConfigError

from ..core.architectures import architecture
from ..core.sites import head_sites, model_config
from .graph import ModelShape

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

@dataclass(frozen=True, kw_only=True)
class CircuitShape(ModelShape):
    """A model's circuit-graph layout (:class:`interp.circuit.graph.ModelShape`: layers, heads, key/value
    groups, parallel residual; sender and port indices, which edges exist) and its block's maths."""

    model_type: str
    head_dim: int
    d_model: int
    eps: float
    scaling: float                      #: layer 0's query scaling (every layer's: :meth:`scale`)
    #: the norm kind: "rms" (gain w), "rms_offset" (gain 1 + w: Gemma), "layernorm" (with bias)
    norm: str = "rms"
    pre_attention_norm: bool = True     #: False: q/k/v read the raw stream (OLMo-2)
    qk_norm: str | None = None          #: None, "per_head" (Qwen3, Gemma-3) or "across_heads" (OLMo-2)
    post_norms: bool = False            #: norms after attention and after the MLP (Gemma-2/3, OLMo-2)
    scalings: tuple[float, ...] = ()    #: per layer, the factor on ``q . k`` (GPT-2 can scale by layer)
    windows: tuple[int | None, ...] = ()  #: per layer, the sliding window (keys i - j < w), None: global
    attn_softcap: float | None = None   #: attention scores ``c * tanh(s / c)`` (Gemma-2)
    final_softcap: float | None = None  #: logits ``c * tanh(z / c)`` (Gemma-2/3)
    rotary_dims: int | None = None      #: dimensions of each head the rotary turns (None: no rotary)
    fused_qkv: str | None = None        #: None, "q|k|v" (Phi-3, GPT-2) or "per_head" (GPT-NeoX)
    conv1d: bool = False                #: projection weights stored [in, out] (GPT-2)

    def scale(self, layer: int) -> float:
        """The factor on the attention scores ``q . k`` of ``layer``."""
        return self.scalings[layer] if self.scalings else self.scaling

    def window(self, layer: int) -> int | None:
        """``layer``'s sliding window (a query at i reads keys j with i - j < window), None: global."""
        return self.windows[layer] if self.windows else None

    def path(self, key: str, layer: int | None = None) -> str:
        """The module path called ``key`` (:class:`interp.core.architectures.Paths`) of ``layer``."""
        return architecture(self.model_type, "circuit").path(key, layer)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **super().to_dict(), "head_dim": self.head_dim, "d_model": self.d_model}


def circuit_shape(model_or_config: Any) -> CircuitShape:
    """The :class:`CircuitShape` of an HF model, an nnsight wrapper of one, or a config.

    Raises :class:`GARConfigError` naming the architecture when it is not supported.
    """
    top = model_config(model_or_config)
    mt = getattr(top, "model_type", None)
    arch = architecture(mt, "circuit")  # refused by name, with the reason, for an architecture it cannot run
    sites = head_sites(top)
    cfg = arch.text_config(top)
    n_layers, n_heads, q = sites.n_layers, sites.n_heads, arch.quirks
    n_kv = sites.n_kv_heads
    if n_heads % n_kv:
        raise GARConfigError(f"{n_heads} query heads do not split into {n_kv} KV groups")
    windows = tuple(sites.sliding_window if layer in sites.sliding_layers else None for layer in range(n_layers))
    eps = next(float(v) for v in (getattr(cfg, k, None) for k in EPS_KEYS) if v is not None)
    scalings = tuple(arch.attention_scaling(top, layer) for layer in range(n_layers))
    return CircuitShape(model_type=mt, n_layers=n_layers, n_heads=n_heads, n_groups=n_kv,
                        head_dim=sites.head_dim, d_model=sites.d_model, eps=eps, scaling=scalings[0],
                        norm=q.norm, pre_attention_norm=q.pre_attention_norm, qk_norm=q.qk_norm,
                        post_norms=q.post_attention_norm, parallel=arch.parallel_residual(top), scalings=scalings,
                        windows=windows, attn_softcap=arch.attn_softcap(top), final_softcap=arch.final_softcap(top),
                        rotary_dims=arch.rotary_dims(top), fused_qkv=q.fused_qkv_layout, conv1d=q.conv1d)


#: config attributes that hold the norms' epsilon, by architecture family
EPS_KEYS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")





def rotary_tables(model: Any, position_ids: "torch.Tensor", dtype: "torch.dtype") -> "list[tuple[torch.Tensor, torch.Tensor]] | None":
    """Per layer, the rotary ``(cos, sin)`` ``[B, T, rotary_dims]`` at ``position_ids`` (None: the
    architecture has absolute positions).

    Computed by a fresh copy of the model's own rotary module built from its config on the CPU, so
    a model whose weights live elsewhere (NDIF: a meta skeleton) gets the same tables; a module
    typed by layer (Gemma-3: local and global bases) is asked once per layer type.
    """
    import inspect

    import torch

    hf = getattr(model, "_module", model)
    top = model_config(hf)
    arch = architecture(getattr(top, "model_type", None), "circuit")
    if arch.paths.rotary is None:
        return None
    cfg = arch.text_config(top)
    module = type(hf.get_submodule(arch.path("rotary")))(config=cfg)
    like = torch.zeros((), dtype=torch.float32)
    pos = position_ids.cpu()
    n_layers = head_sites(top).n_layers
    if "layer_type" not in inspect.signature(module.forward).parameters:
        with torch.no_grad():
            cos, sin = module(like, pos)
        return [(cos.to(dtype), sin.to(dtype))] * n_layers
    out, types = {}, list(cfg.layer_types)
    with torch.no_grad():
        for kind in sorted(set(types)):
            cos, sin = module(like, pos, kind)
            out[kind] = (cos.to(dtype), sin.to(dtype))
    return [out[kind] for kind in types]


def attention_masks(shape: CircuitShape, batch: Any) -> tuple[list["torch.Tensor"], list["torch.Tensor"]]:
    """Per layer, bool ``[B, 1, T(i), T(j)]`` for a left-padded batch (a ``CircuitBatch``): which keys
    a query reads (causal, key not padding, inside the layer's window ``i - j < w`` on column
    indices), and those pairs whose query is real too. The one masking rule of the patcher and EAP."""
    import torch

    T = batch.width
    real = batch.attention_mask.bool()
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    pos = torch.arange(T)
    allowed, valid = [], []
    for lyr in range(shape.n_layers):
        a = causal[None, None] & real[:, None, None, :]
        w = shape.window(lyr)
        if w is not None:
            a = a & ((pos[:, None] - pos[None, :]) < w)[None, None]
        allowed.append(a)
        valid.append(a & real[:, None, :, None])
    return allowed, valid


__all__ = ["CircuitShape", "EPS_KEYS", "attention_masks", "circuit_shape", "rotary_tables"]
