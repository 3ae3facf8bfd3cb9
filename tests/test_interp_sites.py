"""interp.core.sites: the one table of per-head output sites, read from configs (no weights built)."""

from __future__ import annotations

import pytest

from gar_tasks.errors import GARConfigError
from interp.core.sites import HEAD_OUTPUT_SITES, head_sites

pytestmark = pytest.mark.unit


def _config(model_type: str, **kw):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **kw)


@pytest.mark.parametrize("model_type, kw, expected", [
    # grouped-query attention: one output per *query* head
    ("llama", dict(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576),
     ("model.layers.{i}.self_attn.o_proj", 30, 9, 64)),
    ("mistral", dict(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, hidden_size=256, head_dim=None),
     ("model.layers.{i}.self_attn.o_proj", 4, 8, 32)),
    ("qwen2", dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=64),
     ("model.layers.{i}.self_attn.o_proj", 3, 4, 16)),
    # gemma: head_dim is its own knob (n_heads * head_dim != hidden_size)
    ("gemma", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=64, head_dim=32),
     ("model.layers.{i}.self_attn.o_proj", 2, 4, 32)),
    ("gemma2", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64, head_dim=24),
     ("model.layers.{i}.self_attn.o_proj", 2, 4, 24)),
    ("gpt2", dict(n_layer=12, n_head=12, n_embd=768), ("transformer.h.{i}.attn.c_proj", 12, 12, 64)),
    ("gpt_neox", dict(num_hidden_layers=6, num_attention_heads=8, hidden_size=512),
     ("gpt_neox.layers.{i}.attention.dense", 6, 8, 64)),
])
def test_sites_from_config(model_type, kw, expected):
    sites = head_sites(_config(model_type, **kw))
    assert (sites.template, sites.n_layers, sites.n_heads, sites.head_dim) == expected
    assert sites.path(1) == expected[0].format(i=1)
    assert sites.block_path(11 % expected[1]) == expected[0].split("{i}")[0] + str(11 % expected[1])
    assert sites.columns(2) == slice(2 * expected[3], 3 * expected[3])
    assert sites.shape == expected[1:3]


def test_sites_resolve_on_real_modules():
    """The table's paths name real modules, whose input width is n_heads * head_dim."""
    import torch

    from tiny_models import tiny_model

    for arch in ("llama", "gpt2"):
        model = tiny_model(arch)
        sites = head_sites(model)
        assert (sites.n_layers, sites.n_heads, sites.head_dim) == (2, 4, 8)
        assert type(model.get_submodule(sites.block_path(1))).__name__ in ("LlamaDecoderLayer", "GPT2Block")
        seen = {}
        hooks = [model.get_submodule(sites.path(i)).register_forward_pre_hook(
            lambda m, args, i=i: seen.__setitem__(i, args[0].shape)) for i in range(sites.n_layers)]
        try:
            with torch.no_grad():
                model(torch.tensor([[5, 6, 7]]))
        finally:
            for h in hooks:
                h.remove()
        assert seen == {i: (1, 3, sites.n_heads * sites.head_dim) for i in range(2)}


def test_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(GARConfigError) as err:
        head_sites(_config("bert"))
    msg = str(err.value)
    assert "'bert'" in msg and all(name in msg for name in HEAD_OUTPUT_SITES)


def test_out_of_range_layer_and_head():
    sites = head_sites(_config("gpt2", n_layer=2, n_head=4, n_embd=32))
    with pytest.raises(GARConfigError, match="layer 2"):
        sites.path(2)
    with pytest.raises(GARConfigError, match="head 4"):
        sites.columns(4)
    with pytest.raises(GARConfigError, match="config"):
        head_sites(object())
