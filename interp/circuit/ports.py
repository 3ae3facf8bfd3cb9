"""The circuit graph's nodes for one model: senders, ports, and where they live.

Senders (what writes to the residual stream), in this order: ``emb``; then for each layer ``l``
its query heads ``(l, 0) .. (l, H-1)`` (head ``h``'s slice of the output projection's input times
its output-projection columns) and ``mlp l``.  ``S = 1 + L * (H + 1)``.

Ports (what reads the residual stream), in this order: for each layer ``l`` the per-query-head
``q`` inputs, the per-KV-group ``k`` then ``v`` inputs (grouped-query attention is native: the
k/v projection is shared by the group's query heads, so the port is the group's input), the
``mlp`` input; then ``logits`` (read at END only).  ``P = L * (H + 2G + 1) + 1``.

A port's input is the *pre-norm* residual stream entering the layer (q/k/v: input_layernorm;
mlp: post_attention_layernorm; logits: the final norm), seen only through that port.

Only pre-norm decoder architectures with RMSNorm, rotary q/k and separate q/k/v projections are
supported (llama, mistral, qwen2; SmolLM2 is llama). Module paths, and which architectures the
engine refuses and why, come from the one architecture table (:mod:`interp.core.architectures`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gar_tasks.errors import GARConfigError

from ..core.architectures import architecture
from ..core.sites import model_config

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

@dataclass(frozen=True)
class CircuitShape:
    """Layer/head counts of a model and the sender/port index layout of its circuit graph."""

    model_type: str
    n_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    d_model: int
    eps: float
    scaling: float
    sliding_window: int | None = None

    def check_width(self, width: int) -> None:
        """Refuse batches a sliding attention window would cut (the engine attends causally)."""
        if self.sliding_window is not None and width > self.sliding_window:
            raise GARConfigError(f"batch width {width} exceeds the model's sliding attention window "
                                 f"({self.sliding_window}): not supported")

    # ---- counts
    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def ports_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv + 1

    @property
    def n_ports(self) -> int:
        return self.n_layers * self.ports_per_layer + 1

    # ---- indices
    def sender_head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def sender_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def senders_before(self, layer: int) -> int:
        """Number of senders that feed layer ``layer``'s q/k/v ports (emb and layers < l)."""
        return 1 + layer * (self.n_heads + 1)

    def port_q(self, layer: int, head: int) -> int:
        return layer * self.ports_per_layer + head

    def port_k(self, layer: int, group: int) -> int:
        return layer * self.ports_per_layer + self.n_heads + group

    def port_v(self, layer: int, group: int) -> int:
        return layer * self.ports_per_layer + self.n_heads + self.n_kv + group

    def port_mlp(self, layer: int) -> int:
        return layer * self.ports_per_layer + self.n_heads + 2 * self.n_kv

    @property
    def port_logits(self) -> int:
        return self.n_layers * self.ports_per_layer

    def path(self, key: str, layer: int | None = None) -> str:
        """The module path called ``key`` (:class:`interp.core.architectures.Paths`) of ``layer``."""
        return architecture(self.model_type, "circuit").path(key, layer)

    # ---- arrays of the contract
    def sender_arrays(self) -> dict[str, "np.ndarray"]:
        """``sender_layer`` (-1 for emb), ``sender_kind`` (emb/head/mlp), ``sender_head`` (-1 unless head)."""
        import numpy as np

        layer, kind, head = [-1], ["emb"], [-1]
        for lyr in range(self.n_layers):
            layer += [lyr] * (self.n_heads + 1)
            kind += ["head"] * self.n_heads + ["mlp"]
            head += list(range(self.n_heads)) + [-1]
        return {"sender_layer": np.array(layer), "sender_kind": np.array(kind), "sender_head": np.array(head)}

    def port_arrays(self) -> dict[str, "np.ndarray"]:
        """``port_layer`` (L for logits), ``port_kind`` (q/k/v/mlp/logits), ``port_index`` (head/group, else -1)."""
        import numpy as np

        layer, kind, index = [], [], []
        for lyr in range(self.n_layers):
            layer += [lyr] * self.ports_per_layer
            kind += ["q"] * self.n_heads + ["k"] * self.n_kv + ["v"] * self.n_kv + ["mlp"]
            index += list(range(self.n_heads)) + list(range(self.n_kv)) * 2 + [-1]
        return {"port_layer": np.array(layer + [self.n_layers]), "port_kind": np.array(kind + ["logits"]),
                "port_index": np.array(index + [-1])}

    def edge_exists(self) -> "np.ndarray":
        """``bool[S, P]``: which residual edges exist (position-independent)."""
        import numpy as np

        s_layer = self.sender_arrays()["sender_layer"]
        ports = self.port_arrays()
        p_layer, p_kind = ports["port_layer"], ports["port_kind"]
        # a sender of layer l (emb: -1) feeds q/k/v of layers > l, mlp of layers >= l (heads) or > l (mlp)
        is_mlp = self.sender_arrays()["sender_kind"] == "mlp"
        attn_port = np.isin(p_kind, ("q", "k", "v"))
        out = np.where(attn_port[None, :], p_layer[None, :] > s_layer[:, None],
                       np.where(is_mlp[:, None], p_layer[None, :] > s_layer[:, None],
                                p_layer[None, :] >= s_layer[:, None]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "n_kv": self.n_kv, "head_dim": self.head_dim, "d_model": self.d_model}


def circuit_shape(model_or_config: Any) -> CircuitShape:
    """The :class:`CircuitShape` of an HF model, an nnsight wrapper of one, or a config.

    Raises :class:`GARConfigError` naming the architecture when it is not supported.
    """
    cfg = model_config(model_or_config)
    mt = getattr(cfg, "model_type", None)
    arch = architecture(mt, "circuit")  # refused by name, with the reason, for an architecture it cannot run
    n_heads = int(cfg.num_attention_heads)
    head_dim = arch.head_dim(cfg)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    if n_heads % n_kv:
        raise GARConfigError(f"{n_heads} query heads do not split into {n_kv} KV groups")
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        window = None
    if mt == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        window = None
    return CircuitShape(model_type=mt, n_layers=int(cfg.num_hidden_layers), n_heads=n_heads, n_kv=n_kv,
                        head_dim=head_dim, d_model=int(cfg.hidden_size), eps=float(cfg.rms_norm_eps),
                        scaling=arch.attention_scaling(cfg, 0), sliding_window=int(window) if window else None)


__all__ = ["CircuitShape", "circuit_shape"]
