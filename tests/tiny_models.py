"""Tiny random causal LMs (Llama with grouped-query attention, GPT-2) for the interp tests.

Built from configs with the offline BPE tokenizer of ``tiny_tokenizers``, seeded, float32, eval
mode, so every test sees the same weights without touching the Hub. ``scale`` multiplies every
weight matrix (not the norms' gains): a small scale keeps each layer close to linear, which is
the regime where attribution patching (a first-order approximation) must match exact patching.
"""

from __future__ import annotations

import pytest

import contextlib
from functools import lru_cache
from typing import Any, Iterator

from tiny_tokenizers import bpe_tokenizer

N_LAYERS = 2
N_HEADS = 4
HEAD_DIM = 8


def _scaled(model: Any, scale: float, embed_scale: float) -> Any:
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2:  # norm gains and biases stay as they are
                continue
            p.mul_(embed_scale if ("emb" in name or name.endswith(("wte.weight", "wpe.weight"))) else scale)
    return model.eval()


def tiny_llama(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """LlamaForCausalLM: 2 layers, 4 query heads, 2 KV heads (GQA), head_dim 8."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bpe_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=N_HEADS * HEAD_DIM, intermediate_size=64,
                      num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, attn_implementation="eager")
    return _scaled(LlamaForCausalLM(cfg), scale, embed_scale)


def tiny_gpt2(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """GPT2LMHeadModel: 2 layers, 4 heads, head_dim 8, absolute positions, tied embeddings."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = bpe_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=N_HEADS * HEAD_DIM, n_layer=N_LAYERS, n_head=N_HEADS,
                     n_positions=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, attn_implementation="eager",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return _scaled(GPT2LMHeadModel(cfg), scale, embed_scale)


BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


@lru_cache(maxsize=None)
def tiny_model(arch: str, seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """Cached per process: do not mutate the returned model."""
    return TABLE_BUILDERS[arch](seed=seed, scale=scale, embed_scale=embed_scale)


def tokenizer() -> Any:
    return bpe_tokenizer()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the duration: tiny models gain nothing from more, and on a busy
    2-core machine the thread pool's waiting makes each forward ~100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def one_thread_module() -> Iterator[None]:
    """Autouse in every test module that imports it: the whole module runs torch on one thread."""
    with one_thread():
        yield


# ------------------------------------------------------------------------------------------
# Architectures beyond Llama / Mistral / Qwen2: same sizes (2 layers, 4 query heads, 2 KV heads, head_dim 8)


def _decoder_kwargs() -> dict[str, Any]:
    """Config arguments shared by the Llama-like tiny models below."""
    tok = bpe_tokenizer()
    return dict(vocab_size=len(tok), hidden_size=N_HEADS * HEAD_DIM, intermediate_size=64,
                num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2,
                max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, tie_word_embeddings=False, attn_implementation="eager")


#: Gemma-3's local window in the tiny models: shorter than every test prompt, so it bites
TINY_WINDOW = 4


def tiny_qwen3(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """Qwen3ForCausalLM: per-head RMSNorm on queries and keys (q_norm, k_norm)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return _scaled(Qwen3ForCausalLM(Qwen3Config(**_decoder_kwargs(), head_dim=HEAD_DIM)), scale, embed_scale)


def _gemma3_text_config() -> Any:
    """Gemma-3 text config: layer 0 on a sliding window of TINY_WINDOW keys, layer 1 global."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**_decoder_kwargs(), head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM,
                            sliding_window=TINY_WINDOW, layer_types=["sliding_attention", "full_attention"])


def tiny_gemma3_text(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """Gemma3ForCausalLM: q/k norms, sandwich norms (one after o_proj), a sliding-window layer."""
    import torch
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    return _scaled(Gemma3ForCausalLM(_gemma3_text_config()), scale, embed_scale)


def tiny_gemma3(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """Gemma3ForConditionalGeneration (what AutoModelForCausalLM loads for a Gemma-3 4B+ checkpoint):
    the text model above inside the multimodal wrapper, with a one-layer SigLIP vision tower that
    text-only prompts never use. Its image token id lies outside the text vocabulary."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    text = _gemma3_text_config()
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    torch.manual_seed(seed)
    cfg = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                       image_token_index=text.vocab_size, attn_implementation="eager")
    return _scaled(Gemma3ForConditionalGeneration(cfg), scale, embed_scale)


def tiny_phi3(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """Phi3ForCausalLM: one fused qkv_proj, every layer on a sliding window of TINY_WINDOW keys."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    return _scaled(Phi3ForCausalLM(Phi3Config(**_decoder_kwargs(), sliding_window=TINY_WINDOW)), scale, embed_scale)


def tiny_olmo2(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """Olmo2ForCausalLM: q/k RMSNorm across heads, norms after attention and MLP (none before)."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(seed)
    return _scaled(Olmo2ForCausalLM(Olmo2Config(**_decoder_kwargs())), scale, embed_scale)


BUILDERS.update({"qwen3": tiny_qwen3, "gemma3_text": tiny_gemma3_text, "gemma3": tiny_gemma3,
                 "phi3": tiny_phi3, "olmo2": tiny_olmo2})


# ------------------------------------------------------------------------------------------
# The rest of the architecture table (same sizes), built from AutoConfig for the table's own tests


def _auto(model_type: str, **kw: Any) -> Any:
    """A tiny random causal LM of ``model_type`` from its AutoConfig."""
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw), attn_implementation="eager")


def tiny_mistral(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """MistralForCausalLM: every layer on a sliding window of TINY_WINDOW keys."""
    import torch

    torch.manual_seed(seed)
    return _scaled(_auto("mistral", **_decoder_kwargs(), head_dim=HEAD_DIM, sliding_window=TINY_WINDOW),
                   scale, embed_scale)


def tiny_qwen2(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """Qwen2ForCausalLM: biases on q/k/v."""
    import torch

    torch.manual_seed(seed)
    return _scaled(_auto("qwen2", **_decoder_kwargs()), scale, embed_scale)


def tiny_gemma(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """GemmaForCausalLM: RMSNorm gain 1 + w, embeddings scaled by sqrt(hidden_size)."""
    import torch

    torch.manual_seed(seed)
    return _scaled(_auto("gemma", **_decoder_kwargs(), head_dim=HEAD_DIM), scale, embed_scale)


def tiny_gemma2(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """Gemma2ForCausalLM: sandwich norms, attention and final logit soft-capping, layer 0 sliding."""
    import torch

    torch.manual_seed(seed)
    return _scaled(_auto("gemma2", **_decoder_kwargs(), head_dim=HEAD_DIM, query_pre_attn_scalar=2 * HEAD_DIM,
                         sliding_window=TINY_WINDOW, layer_types=["sliding_attention", "full_attention"]),
                   scale, embed_scale)


def tiny_gpt_neox(seed: int = 0, scale: float = 1.0, embed_scale: float = 1.0) -> Any:
    """GPTNeoXForCausalLM: LayerNorm, parallel attention and MLP, rotary on a quarter of each head."""
    import torch

    tok = bpe_tokenizer()
    torch.manual_seed(seed)
    return _scaled(_auto("gpt_neox", vocab_size=len(tok), hidden_size=N_HEADS * HEAD_DIM, intermediate_size=64,
                         num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, hidden_dropout=0.0, attention_dropout=0.0),
                   scale, embed_scale)


#: one builder per row of the architecture table (BUILDERS: the ones the interp analyses are tested on)
TABLE_BUILDERS = {**BUILDERS, "mistral": tiny_mistral, "qwen2": tiny_qwen2, "gemma": tiny_gemma,
                  "gemma2": tiny_gemma2, "gpt_neox": tiny_gpt_neox}


def save_folders(root: str, types: list[str]) -> list[str]:
    """Save the tiny model of each type with its tokenizer under ``root/<type>``; the NDIF deploy
    specs ``gar-eval/tiny-<type>=<folder>`` (``_`` as ``-`` in the id)."""
    import os

    specs = []
    for t in types:
        folder = os.path.join(root, t)
        tiny_model(t).save_pretrained(folder)
        bpe_tokenizer().save_pretrained(folder)
        specs.append(f"{remote_id(t)}={folder}")
    return specs


def remote_id(model_type: str) -> str:
    """The Hub-style id the test NDIF serves a tiny model of ``model_type`` under."""
    return f"gar-eval/tiny-{model_type.replace('_', '-')}"


if __name__ == "__main__":  # python tests/tiny_models.py ROOT TYPE...: the folders, deploy specs on stdout
    import sys

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(" ".join(save_folders(sys.argv[1], sys.argv[2:])))
