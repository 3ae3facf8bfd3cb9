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
    return BUILDERS[arch](seed=seed, scale=scale, embed_scale=embed_scale)


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
