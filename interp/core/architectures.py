"""One description per supported architecture (``config.model_type``), as data: where every module
an analysis reads lives, and how the block's maths departs from a plain pre-norm Llama block.

Each row was read from the installed transformers' ``models/<type>/modeling_<type>.py`` and is
checked against a tiny random model of its type (``tests/test_interp_architecture_table.py``):
every path resolves to a module, every quirk matches the config and the modules. Everything else
(head sites for ``gar patch`` / heads / intervene / probe, the circuit engine's ports) reads this
table; nothing else names a module path.

Paths are dotted module paths relative to the loaded model (what ``model.get_submodule`` and
nnsight's ``model.get`` take); ``{i}`` is the layer index; ``None`` means the module does not exist
in that architecture (GPT-2 has no rotary embedding, OLMo-2 no norm before attention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from gar_tasks.errors import GARConfigError

#: the analyses an architecture can be refused for, and how an error message names them
ANALYSES: dict[str, str] = {"heads": "per-head patching", "circuit": "circuit discovery"}


@dataclass(frozen=True)
class Paths:
    """Module paths of one architecture (``{i}`` = layer index; ``None``: no such module)."""

    embed: str                    #: token embedding (its output: what enters the residual stream)
    layer: str                    #: one transformer block (output minus input: what it adds)
    attn: str                     #: the attention module
    o: str                        #: output projection: its *input* holds the heads' outputs side by side
    mlp: str                      #: the MLP (its input: the normed stream; its output: what it adds)
    final_norm: str               #: the norm before the unembedding
    lm_head: str                  #: the unembedding
    attn_norm: str | None = None  #: the norm on the block's input before attention (None: OLMo-2)
    mlp_norm: str | None = None   #: the norm on the MLP's input (Llama's ``post_attention_layernorm``)
    q: str | None = None          #: separate query / key / value projections (None when fused)
    k: str | None = None
    v: str | None = None
    qkv: str | None = None        #: one fused q/k/v projection (layout: :attr:`Quirks.fused_qkv_layout`)
    q_norm: str | None = None     #: norms on queries / keys (layout: :attr:`Quirks.qk_norm`)
    k_norm: str | None = None
    post_attn_norm: str | None = None  #: a norm between the output projection and the residual add
    post_mlp_norm: str | None = None   #: a norm between the MLP and the residual add
    rotary: str | None = None     #: the rotary embedding (its output: cos, sin); None: absolute positions
    pos_embed: str | None = None  #: learned absolute position embedding (GPT-2)

    def get(self, key: str, layer: int | None = None) -> str:
        """The path called ``key``, ``{i}`` filled with ``layer`` (refused when absent)."""
        template = getattr(self, key, None) if key in PATH_KEYS else None
        if template is None:
            raise GARConfigError(f"no module {key!r} in this architecture")
        if "{i}" in template:
            if layer is None:
                raise GARConfigError(f"module {key!r} is per layer: give a layer")
            return template.format(i=layer)
        return template


PATH_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Paths))


@dataclass(frozen=True)
class Quirks:
    """How an architecture's block departs from a plain pre-norm Llama block (RMSNorm, rotary on
    every query/key dimension, separate q/k/v, ``1/sqrt(head_dim)`` scaling). Each field says
    which analysis cares. Config-dependent quirks name the config attribute that sets them."""

    #: RMSNorm on queries and keys before rotary: ``"per_head"`` (over each head's ``head_dim``:
    #: Qwen3, Gemma-3) or ``"across_heads"`` (over all heads' concatenated q / k: OLMo-2, so one
    #: head's query depends on the others'). Matters for q/k ports, not for head outputs.
    qk_norm: str | None = None
    #: A norm between the output projection and the residual add (Gemma-2/3 "sandwich",
    #: OLMo-2 "reordered" norms): a head's residual contribution is not linear in its site slice.
    post_attention_norm: bool = False
    #: A norm on the block's input before attention (False for OLMo-2: attention reads the raw stream).
    pre_attention_norm: bool = True
    #: The attention module's one projection for q, k and v (its attribute name; ``None``: separate
    #: q/k/v_proj), and its column layout: ``"q|k|v"`` (all query heads, then all key, then all
    #: value heads) or ``"per_head"`` (q, k, v of head 0, then of head 1, ...). Matters for q/k/v ports.
    fused_qkv: str | None = None
    fused_qkv_layout: str | None = None
    #: The config can put some or all layers on a local window (``sliding_window``, ``layer_types``).
    sliding_window: bool = False
    #: Multimodal wrapper: layer and head counts live in ``config.text_config``.
    text_config: bool = False
    #: The config attribute holding the attention logits' soft cap ``c`` (scores ``c * tanh(s / c)``
    #: before the softmax; no cap where its value is None): Gemma-2/3.
    attn_softcap: str | None = None
    #: The config attribute holding the final logits' soft cap (Gemma-2/3).
    final_softcap: str | None = None
    #: Query scaling: ``"head_dim"`` (``head_dim ** -0.5``), ``"query_pre_attn_scalar"`` (that
    #: config value ``** -0.5``: Gemma-2/3), ``"gpt2"`` (``head_dim ** -0.5`` if
    #: ``scale_attn_weights``, further divided by ``layer + 1`` if ``scale_attn_by_inverse_layer_idx``).
    query_scale: str = "head_dim"
    #: Rotary on only the first ``partial_rotary_factor`` of each head's dimensions (the factor in
    #: ``config.rope_parameters``; 1.0 possible): Phi-3, GPT-NeoX.
    partial_rotary: bool = False
    #: The config attribute that makes attention and MLP read the same block input and add in
    #: parallel (``use_parallel_residual``: GPT-NeoX); None: always sequential.
    parallel_residual: str | None = None
    #: Norm type: ``"rms"`` (RMSNorm, gain ``w``), ``"rms_offset"`` (RMSNorm with gain ``1 + w``:
    #: Gemma), ``"layernorm"`` (LayerNorm with bias: GPT-2, GPT-NeoX).
    norm: str = "rms"
    #: Token embeddings multiplied by ``sqrt(hidden_size)`` (inside the embedding module: Gemma).
    embed_scale: bool = False
    #: Learned absolute position embeddings added to the token embeddings (GPT-2), no rotary.
    absolute_positions: bool = False
    #: Projections are ``Conv1D`` with weights stored ``[in, out]`` (GPT-2), not ``nn.Linear``.
    conv1d: bool = False


@dataclass(frozen=True)
class Architecture:
    """One row of the table: paths, quirks, and the analyses it is refused for (with the reason)."""

    model_type: str
    paths: Paths
    quirks: Quirks = field(default_factory=Quirks)
    #: analysis (a key of :data:`ANALYSES`) -> why this architecture cannot be run through it
    unsupported: Mapping[str, str] = field(default_factory=dict)

    def path(self, key: str, layer: int | None = None) -> str:
        return self.paths.get(key, layer)

    def supports(self, analysis: str) -> bool:
        return analysis not in self.unsupported

    def text_config(self, cfg: Any) -> Any:
        """The config holding the language model's sizes (``text_config`` for a multimodal wrapper)."""
        return cfg.text_config if self.quirks.text_config else cfg

    def head_dim(self, cfg: Any) -> int:
        cfg = self.text_config(cfg)
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    def attention_scaling(self, cfg: Any, layer: int) -> float:
        """The factor the attention scores ``q . k`` are multiplied by in ``layer``."""
        cfg = self.text_config(cfg)
        scale = self.quirks.query_scale
        if scale == "query_pre_attn_scalar":
            return float(cfg.query_pre_attn_scalar) ** -0.5
        value = float(self.head_dim(cfg)) ** -0.5
        if scale == "gpt2":
            value = value if cfg.scale_attn_weights else 1.0
            if cfg.scale_attn_by_inverse_layer_idx:
                value /= float(layer + 1)
        return value

    def attn_softcap(self, cfg: Any) -> float | None:
        """The attention logits' soft cap of this config (None: none)."""
        key = self.quirks.attn_softcap
        value = getattr(self.text_config(cfg), key, None) if key else None
        return float(value) if value is not None else None

    def final_softcap(self, cfg: Any) -> float | None:
        key = self.quirks.final_softcap
        value = getattr(self.text_config(cfg), key, None) if key else None
        return float(value) if value is not None else None

    def rotary_dims(self, cfg: Any) -> int | None:
        """How many of each head's dimensions the rotary embedding turns (None: no rotary)."""
        if self.paths.rotary is None:
            return None
        factor = 1.0
        if self.quirks.partial_rotary:
            factor = float((getattr(self.text_config(cfg), "rope_parameters", None) or {})
                           .get("partial_rotary_factor", 1.0))
        return int(self.head_dim(cfg) * factor)

    def parallel_residual(self, cfg: Any) -> bool:
        key = self.quirks.parallel_residual
        return bool(getattr(self.text_config(cfg), key, False)) if key else False


def _llama_like(base: str = "model", *, sandwich: bool = False, reordered: bool = False, qk_norm: bool = False,
                fused: bool = False) -> Paths:
    """The paths of a Llama-style decoder under ``base`` (``model``; ``model.language_model`` for
    Gemma-3's multimodal wrapper), with Gemma's sandwich norms, OLMo-2's reordered norms (after
    attention and MLP, none before), q/k norms, or Phi-3's fused projection."""
    layer = f"{base}.layers.{{i}}"
    attn = f"{base}.layers.{{i}}.self_attn"
    return Paths(
        embed=f"{base}.embed_tokens", layer=layer, attn=attn, o=f"{base}.layers.{{i}}.self_attn.o_proj",
        mlp=f"{layer}.mlp",
        final_norm=f"{base}.norm", lm_head="lm_head", rotary=f"{base}.rotary_emb",
        attn_norm=None if reordered else f"{layer}.input_layernorm",
        mlp_norm=(f"{layer}.pre_feedforward_layernorm" if sandwich else None if reordered
                  else f"{layer}.post_attention_layernorm"),
        post_attn_norm=f"{layer}.post_attention_layernorm" if sandwich or reordered else None,
        post_mlp_norm=f"{layer}.post_feedforward_layernorm" if sandwich or reordered else None,
        q=None if fused else f"{attn}.q_proj", k=None if fused else f"{attn}.k_proj",
        v=None if fused else f"{attn}.v_proj", qkv=f"{attn}.qkv_proj" if fused else None,
        q_norm=f"{attn}.q_norm" if qk_norm else None, k_norm=f"{attn}.k_norm" if qk_norm else None)



_GEMMA = Quirks(norm="rms_offset", embed_scale=True)
_GEMMA2 = dataclasses.replace(_GEMMA, post_attention_norm=True, sliding_window=True,
                              attn_softcap="attn_logit_softcapping", final_softcap="final_logit_softcapping",
                              query_scale="query_pre_attn_scalar")
_GEMMA3 = dataclasses.replace(_GEMMA2, qk_norm="per_head")



ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("llama", _llama_like()),
    Architecture("mistral", _llama_like(), Quirks(sliding_window=True)),
    Architecture("qwen2", _llama_like(), Quirks(sliding_window=True)),
    Architecture("qwen3", _llama_like(qk_norm=True), Quirks(qk_norm="per_head", sliding_window=True)),
    Architecture("gemma", _llama_like(), _GEMMA),
    Architecture("gemma2", _llama_like(sandwich=True), _GEMMA2),
    # Gemma3ForCausalLM (the 1B, or a text-only load)
    Architecture("gemma3_text", _llama_like(sandwich=True, qk_norm=True), _GEMMA3),
    # Gemma3ForConditionalGeneration: the language model inside the multimodal wrapper
    Architecture("gemma3", _llama_like("model.language_model", sandwich=True, qk_norm=True),
                 dataclasses.replace(_GEMMA3, text_config=True)),
    Architecture("phi3", _llama_like(fused=True),
                 Quirks(fused_qkv="qkv_proj", fused_qkv_layout="q|k|v", sliding_window=True, partial_rotary=True)),
    Architecture("olmo2", _llama_like(reordered=True, qk_norm=True),
                 Quirks(qk_norm="across_heads", post_attention_norm=True, pre_attention_norm=False)),
    Architecture("gpt2", Paths(
        embed="transformer.wte", pos_embed="transformer.wpe", layer="transformer.h.{i}",
        attn="transformer.h.{i}.attn", qkv="transformer.h.{i}.attn.c_attn", o="transformer.h.{i}.attn.c_proj",
        attn_norm="transformer.h.{i}.ln_1", mlp_norm="transformer.h.{i}.ln_2", mlp="transformer.h.{i}.mlp",
        final_norm="transformer.ln_f", lm_head="lm_head"),
        Quirks(fused_qkv="c_attn", fused_qkv_layout="q|k|v", query_scale="gpt2", norm="layernorm",
               absolute_positions=True, conv1d=True)),
    Architecture("gpt_neox", Paths(
        embed="gpt_neox.embed_in", layer="gpt_neox.layers.{i}", attn="gpt_neox.layers.{i}.attention",
        qkv="gpt_neox.layers.{i}.attention.query_key_value", o="gpt_neox.layers.{i}.attention.dense",
        attn_norm="gpt_neox.layers.{i}.input_layernorm", mlp_norm="gpt_neox.layers.{i}.post_attention_layernorm",
        mlp="gpt_neox.layers.{i}.mlp", final_norm="gpt_neox.final_layer_norm", lm_head="lm_head",
        rotary="gpt_neox.rotary_emb"),
        Quirks(fused_qkv="query_key_value", fused_qkv_layout="per_head", partial_rotary=True,
               parallel_residual="use_parallel_residual", norm="layernorm")),
)}


def architecture(model_type: str | None, analysis: str = "heads") -> Architecture:
    """The table's row for ``model_type``, refused by name (and with the reason) when it is not in
    the table or ``analysis`` (a key of :data:`ANALYSES`) does not support it."""
    what = ANALYSES[analysis]
    supported = ", ".join(sorted(t for t, a in ARCHITECTURES.items() if a.supports(analysis)))
    arch = ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None
    if arch is None:
        raise GARConfigError(f"unsupported architecture {model_type!r} for {what}; supported: {supported}")
    if not arch.supports(analysis):
        raise GARConfigError(f"unsupported architecture {model_type!r} for {what} "
                             f"({arch.unsupported[analysis]}); supported: {supported}")
    return arch


__all__ = ["ANALYSES", "ARCHITECTURES", "Architecture", "PATH_KEYS", "Paths", "Quirks", "architecture"]
