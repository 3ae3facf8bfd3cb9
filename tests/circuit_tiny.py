"""Tiny models and batches for the circuit engine tests (every type of the architecture table).

``model(arch, dtype)`` is a private copy (the cached tiny models of ``tiny_models`` are shared and
must not be converted in place); biases that the types initialise to zero are randomised, so the
bias paths are exercised. ``random_batch`` builds a CircuitBatch of random tokens with
random roles (END last), optionally left-padded, with one of the three corruptions.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from tiny_models import HEAD_DIM, N_HEADS, N_LAYERS, TABLE_BUILDERS, tiny_model
from tiny_tokenizers import bpe_tokenizer

ARCHS = ("llama", "qwen2")
#: every type of the architecture table
ALL_ARCHS = tuple(TABLE_BUILDERS)
N_ROLES = 4
END = 3


@lru_cache(maxsize=None)
def _tiny_qwen2(seed: int = 0) -> Any:
    """Qwen2ForCausalLM: 2 layers, 4 query heads, 2 KV heads, q/k/v biases."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = bpe_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=N_HEADS * HEAD_DIM, intermediate_size=64,
                      num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases (they are zero-initialised), so the bias path is exercised
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


@lru_cache(maxsize=None)
def _with_biases(arch: str, seed: int = 0) -> Any:
    """The tiny model of ``arch`` with every bias (zero-initialised) drawn at random."""
    import torch

    out = copy.deepcopy(tiny_model(arch))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return out


def model(arch: str, dtype: str = "float64") -> Any:
    import torch

    base = _tiny_qwen2() if arch == "qwen2" else _with_biases(arch) if arch in ("gpt2", "gpt_neox") else tiny_model(arch)
    return copy.deepcopy(base).to(getattr(torch, dtype)).eval()


def embed_module(hf: Any) -> Any:
    """The model's token embedding (its path in the architecture table)."""
    from interp.circuit.ports import circuit_shape

    return hf.get_submodule(circuit_shape(hf).path("embed"))


def random_batch(hf: Any, *, rows: int = 2, width: int = 7, pad: tuple[int, ...] = (), corruption: str = "ids",
                 eps: float = 1e-3, seed: int = 0, means: Any = None) -> Any:
    """Random tokens and roles; ``pad[b]`` left-padding tokens in row ``b``; corruption ``ids``
    (last 3 tokens resampled), ``embeds`` (clean embeddings + ``eps`` noise) or ``means``."""
    import torch

    from interp.circuit.batch import CircuitBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 900, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    for b, n in enumerate(pad):
        mask[b, :n] = 0
        ids[b, :n] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    roles = torch.randint(0, N_ROLES - 1, (rows, width), generator=g)
    roles[:, -1] = END
    roles[mask == 0] = -1
    kw: dict[str, Any] = {}
    if corruption == "ids":
        cids = ids.clone()
        cids[:, -3:] = torch.randint(5, 900, (rows, 3), generator=g)
        kw["corrupt_ids"] = cids
    elif corruption == "embeds":
        emb = embed_module(hf)(ids).detach()
        kw["corrupt_embeds"] = emb + eps * torch.randn(emb.shape, generator=g, dtype=emb.dtype)
    else:
        kw["role_means"] = means
    targets = torch.randint(5, 900, (2, rows), generator=g)
    return CircuitBatch(ids, mask, pos, roles, targets[0], targets[1], N_ROLES, END, **kw)


def hf_metric(hf: Any, batch: Any, corrupt: bool = False) -> Any:
    """The metric per row from the model's own forward, one unpadded row at a time (transformers
    gives NaN at padded float64 positions, so rows are never padded here)."""
    import torch

    out = []
    for b in range(batch.size):
        keep = batch.attention_mask[b].bool()
        ids = (batch.corrupt_ids if corrupt else batch.input_ids)[b, keep][None]
        with torch.no_grad():
            logits = hf(input_ids=ids).logits[0, -1]
        out.append(float(logits[batch.clean_target[b]] - logits[batch.corrupt_target[b]]))
    return out
