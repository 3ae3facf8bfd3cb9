"""Where the per-head outputs of an attention layer live, per architecture (one table).

Every supported architecture concatenates its heads' outputs (each already weighted by the
attention pattern, before the output projection) and feeds them to one linear map: the *input*
of that map, ``[batch, tokens, n_heads * head_dim]``, holds head ``h`` in columns
``h * head_dim : (h + 1) * head_dim``. That is the only place a single head can be read or
replaced without touching the others; the attention module's *output* has already mixed them.

Under grouped-query attention the key/value heads are shared but the outputs are still one per
*query* head, so ``n_heads`` is ``num_attention_heads`` (SmolLM2-135M: 9, not its 3 KV heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gar_tasks.errors import GARConfigError

# model_type -> dotted path (``{i}`` = layer index) of the module whose input is the head outputs
HEAD_OUTPUT_SITES: dict[str, str] = {
    "llama": "model.layers.{i}.self_attn.o_proj",
    "mistral": "model.layers.{i}.self_attn.o_proj",
    "qwen2": "model.layers.{i}.self_attn.o_proj",
    "gemma": "model.layers.{i}.self_attn.o_proj",
    "gemma2": "model.layers.{i}.self_attn.o_proj",
    "gpt2": "transformer.h.{i}.attn.c_proj",
    "gpt_neox": "gpt_neox.layers.{i}.attention.dense",
}


@dataclass(frozen=True)
class HeadSites:
    """Layer count, head count and head width of a model, and where its head outputs live."""

    model_type: str
    template: str
    n_layers: int
    n_heads: int
    head_dim: int

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


def _config_of(model_or_config: Any) -> Any:
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

    Raises :class:`GARConfigError` for an architecture not in :data:`HEAD_OUTPUT_SITES`.
    """
    cfg = _config_of(model_or_config)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in HEAD_OUTPUT_SITES:
        raise GARConfigError(f"unsupported architecture {model_type!r} for per-head patching; "
                             f"supported: {', '.join(sorted(HEAD_OUTPUT_SITES))}")
    n_heads = int(cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return HeadSites(model_type=model_type, template=HEAD_OUTPUT_SITES[model_type],
                     n_layers=int(cfg.num_hidden_layers), n_heads=n_heads, head_dim=int(head_dim))


__all__ = ["HEAD_OUTPUT_SITES", "HeadSites", "head_sites"]
