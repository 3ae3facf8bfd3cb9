"""Where the per-head outputs of an attention layer live, per architecture (read from the table).

Every supported architecture concatenates its heads' outputs (each already weighted by the
attention pattern, before the output projection) and feeds them to one linear map: the *input*
of that map, ``[batch, tokens, n_heads * head_dim]``, holds head ``h`` in columns
``h * head_dim : (h + 1) * head_dim``. That is the only place a single head can be read or
replaced without touching the others; the attention module's *output* has already mixed them.

Under grouped-query attention the key/value heads are shared but the outputs are still one per
*query* head, so ``n_heads`` is ``num_attention_heads`` (SmolLM2-135M: 9, not its 3 KV heads).

Sites and quirks are views of the one architecture table (:mod:`interp.core.architectures`).
Beside each site, :data:`QUIRKS` records (as data) how an architecture's attention block departs
from a plain pre-norm Llama block, and which analyses that touches: q/k norms and fused q/k/v
projections matter to query/key/value ports (circuit work), not to head outputs; a norm between
the output projection and the residual add (Gemma-2/3 sandwich norms, OLMo-2) makes a head's
contribution to the residual stream non-linear in its slice of the site input (exact patching
and gradients *at the site* stay exact; AtP's first-order error grows, and per-head direct
effects are no longer additive); sliding-window layers limit how far back a head can read.
Multimodal wrappers (``gemma3``) keep the language model's sizes in ``config.text_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gar_tasks.errors import GARConfigError

from .architectures import ARCHITECTURES, Quirks, architecture

#: model_type -> dotted path (``{i}`` = layer index) of the module whose input is the head outputs
HEAD_OUTPUT_SITES: dict[str, str] = {t: a.paths.o for t, a in ARCHITECTURES.items()}
#: model_type -> how its attention block departs from a plain pre-norm Llama block
QUIRKS: dict[str, Quirks] = {t: a.quirks for t, a in ARCHITECTURES.items()}


@dataclass(frozen=True)
class HeadSites:
    """Layer count, head count and head width of a model, and where its head outputs live."""

    model_type: str
    template: str
    n_layers: int
    n_heads: int
    head_dim: int
    quirks: Quirks = field(default_factory=Quirks)
    #: layers whose attention sees only the last ``sliding_window`` keys (empty: all layers global)
    sliding_layers: tuple[int, ...] = ()
    sliding_window: int | None = None
    n_kv_heads: int = 0  #: key/value heads (grouped-query attention: fewer than n_heads); 0: n_heads
    d_model: int = 0     #: the residual stream's width (0: unknown)

    def path(self, layer: int) -> str:
        """Dotted module path (relative to the model) whose input holds ``layer``'s heads."""
        if not 0 <= layer < self.n_layers:
            raise GARConfigError(f"layer {layer} out of range (model has {self.n_layers} layers)")
        return self.template.format(i=layer)

    def block_path(self, layer: int) -> str:
        """Dotted path of ``layer``'s whole transformer block (the template up to ``{i}``): its
        output minus its input is what the layer adds to the residual stream."""
        prefix = self.template[:self.template.index("{i}") + 3]
        return self.path(layer)[:len(prefix.format(i=layer))]

    def columns(self, head: int) -> slice:
        """The columns of the site's input that belong to ``head``."""
        if not 0 <= head < self.n_heads:
            raise GARConfigError(f"head {head} out of range (model has {self.n_heads} heads per layer)")
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_layers, self.n_heads)


def model_config(model_or_config: Any) -> Any:
    """A transformers config from a config, an HF model, or an nnsight wrapper of one."""
    for candidate in (model_or_config, getattr(model_or_config, "_module", None)):
        cfg = getattr(candidate, "config", None)
        if cfg is not None and hasattr(cfg, "model_type"):
            return cfg
    if hasattr(model_or_config, "model_type"):
        return model_or_config
    raise GARConfigError(f"cannot find a transformers config on {type(model_or_config).__name__}")


def head_sites(model_or_config: Any) -> HeadSites:
    """The :class:`HeadSites` of a model (HF or nnsight-wrapped) or of its config.

    Raises :class:`GARConfigError` for an architecture not in the table.
    """
    cfg = model_config(model_or_config)
    model_type = getattr(cfg, "model_type", None)
    arch = architecture(model_type, "heads")
    quirks = arch.quirks
    head_dim = arch.head_dim(cfg)
    cfg = arch.text_config(cfg)  # the language model's sizes (the top config also holds the vision tower's)
    n_heads = int(cfg.num_attention_heads)
    n_layers = int(cfg.num_hidden_layers)
    window = getattr(cfg, "sliding_window", None) if quirks.sliding_window else None
    return HeadSites(model_type=model_type, template=arch.paths.o,
                     n_layers=n_layers, n_heads=n_heads, head_dim=head_dim, quirks=quirks,
                     sliding_layers=_sliding_layers(cfg, n_layers) if window else (),
                     sliding_window=int(window) if window else None,
                     n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or n_heads),
                     d_model=int(cfg.hidden_size))


def _sliding_layers(cfg: Any, n_layers: int) -> tuple[int, ...]:
    """Layers on a local window, for a config whose ``sliding_window`` is set: those typed
    ``sliding_attention`` in ``layer_types`` (Gemma-2/3, Qwen2/3), else all (Mistral, Phi-3)."""
    types = getattr(cfg, "layer_types", None)
    if types is None:
        return tuple(range(n_layers))
    return tuple(i for i, kind in enumerate(types) if kind == "sliding_attention")


__all__ = ["HEAD_OUTPUT_SITES", "HeadSites", "QUIRKS", "Quirks", "head_sites"]
