"""Architectures beyond Llama / Mistral / Qwen2 on tiny random models: Qwen3, Gemma-3 (text model and the
multimodal wrapper), Phi-3 and OLMo-2.

For each: the site table resolves to real modules of the right width, nnsight finds them, AtP,
GradDrop and exact patching match the plain-torch references of ``test_interp_patching`` (one
pair at a time, unpadded: so left padding is also checked against sliding windows that bite),
head interventions act on the right slices, and the quirks recorded in ``interp.core.sites.QUIRKS``
are what the modules do.
"""

from __future__ import annotations

import numpy as np
import pytest

from gar_tasks.errors import GARConfigError
from interp.intervene import intervened
from interp.core.model import as_nnsight
from interp.patching import attribution_scores, exact_patch_scores
from interp.core.sites import HEAD_OUTPUT_SITES, QUIRKS, head_sites
from test_interp_intervene import capture
from test_interp_patching import pairs, reference_atp, reference_exact, reference_graddrop  # noqa: F401 (fixture)
from tiny_models import HEAD_DIM, N_HEADS, N_LAYERS, TINY_WINDOW, one_thread_module, tiny_model  # noqa: F401
from tiny_tokenizers import bpe_tokenizer

pytestmark = pytest.mark.integration

NEW_ARCHS = ("qwen3", "gemma3_text", "gemma3", "phi3", "olmo2")
# what each tiny config sets (tests/tiny_models.py): which layers attend over a local window
SLIDING = {"qwen3": (), "gemma3_text": (0,), "gemma3": (0,), "phi3": (0, 1), "olmo2": ()}
IDS = [[5, 17, 42, 99, 3, 250, 7, 8, 9, 10, 11, 12], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]


def assert_close(ours, ref):
    """The patching tests' tolerance: relative 1e-3, absolute 1e-4 of the largest reference value."""
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * scale)


def _logits(model, ids=IDS):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits


def _attention(model, layer):
    return model.get_submodule(head_sites(model).block_path(layer)).self_attn


# ------------------------------------------------------------------------------------------
# the table


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_sites_resolve_on_real_modules(arch):
    import torch

    model = tiny_model(arch)
    sites = head_sites(model)
    assert (sites.model_type, sites.shape, sites.head_dim) == (arch, (N_LAYERS, N_HEADS), HEAD_DIM)
    assert sites.template == HEAD_OUTPUT_SITES[arch] and sites.quirks is QUIRKS[arch]
    for layer in range(N_LAYERS):
        site = model.get_submodule(sites.path(layer))
        assert isinstance(site, torch.nn.Linear) and site.in_features == N_HEADS * HEAD_DIM
        assert site is _attention(model, layer).o_proj
        assert type(model.get_submodule(sites.block_path(layer))).__name__.endswith("DecoderLayer")
    assert sites.sliding_layers == SLIDING[arch]
    assert sites.sliding_window == (TINY_WINDOW if SLIDING[arch] else None)
    # the same answer from the config alone (what a remote run has before any weights)
    assert head_sites(model.config) == sites


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_nnsight_reads_the_site_input(arch):
    """nnsight's envoy at the table's path sees what a plain pre-hook sees."""
    import nnsight
    import torch

    model = tiny_model(arch)
    sites = head_sites(model)
    nn_model = as_nnsight(model, bpe_tokenizer())
    with capture(model) as seen:
        _logits(model)
    envoys = [nn_model.get(sites.path(layer)) for layer in range(N_LAYERS)]
    with torch.no_grad():
        with nn_model.trace(torch.tensor(IDS)):
            got = nnsight.save([envoy.input for envoy in envoys])  # a list: saved as a whole
    for layer in range(N_LAYERS):
        assert got[layer].shape == (2, len(IDS[0]), N_HEADS * HEAD_DIM)
        assert torch.allclose(got[layer], seen[layer], atol=1e-6)


@pytest.mark.parametrize("model_type, kw, expected", [
    # Qwen3-0.6B: head_dim is its own knob (16 * 128 != 1024); no sliding window unless enabled
    ("qwen3", dict(num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, hidden_size=1024,
                   head_dim=128), ("model.layers.{i}.self_attn.o_proj", 28, 16, 128, 0)),
    # Gemma-3-4B through the multimodal wrapper: sizes from text_config; 5 local layers to 1 global
    ("gemma3", dict(text_config=dict(num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4,
                                     hidden_size=2560, head_dim=256, sliding_window=1024)),
     ("model.language_model.layers.{i}.self_attn.o_proj", 34, 8, 256, 29)),
    ("gemma3_text", dict(num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, hidden_size=1152,
                         head_dim=256, sliding_window=512), ("model.layers.{i}.self_attn.o_proj", 26, 4, 256, 22)),
    # Phi-3-mini-4k: every layer on a 2047-token window
    ("phi3", dict(num_hidden_layers=32, num_attention_heads=32, hidden_size=3072, sliding_window=2047),
     ("model.layers.{i}.self_attn.o_proj", 32, 32, 96, 32)),
    ("olmo2", dict(num_hidden_layers=32, num_attention_heads=32, hidden_size=4096),
     ("model.layers.{i}.self_attn.o_proj", 32, 32, 128, 0)),
])
def test_sites_from_real_size_configs(model_type, kw, expected):
    from transformers import AutoConfig

    sites = head_sites(AutoConfig.for_model(model_type, **kw))
    assert (sites.template, sites.n_layers, sites.n_heads, sites.head_dim, len(sites.sliding_layers)) == expected
    if model_type.startswith("gemma3"):  # every sixth layer is global
        assert [i for i in range(sites.n_layers) if i not in sites.sliding_layers][:2] == [5, 11]


def test_every_site_has_its_quirks_and_the_rest_are_refused():
    assert set(QUIRKS) == set(HEAD_OUTPUT_SITES)
    from transformers import AutoConfig

    for near_miss in ("qwen3_moe", "gemma3n_text", "phimoe", "olmoe"):
        with pytest.raises(GARConfigError) as err:
            head_sites(AutoConfig.for_model(near_miss))
        msg = str(err.value)
        assert "\n" not in msg and f"unsupported architecture {near_miss!r}" in msg
        assert all(name in msg for name in NEW_ARCHS)


# ------------------------------------------------------------------------------------------
# the quirks, checked against what the modules do


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_qk_norm_and_fused_qkv_quirks_match_the_modules(arch):
    model = tiny_model(arch)
    quirks = head_sites(model).quirks
    attn = _attention(model, 0)
    n_kv = model.config.get_text_config().num_key_value_heads
    width = {"per_head": HEAD_DIM, "across_heads": N_HEADS * HEAD_DIM}
    if quirks.qk_norm is None:
        assert not hasattr(attn, "q_norm")
    else:
        assert attn.q_norm.weight.shape == (width[quirks.qk_norm],)
    if quirks.fused_qkv:  # q|k|v: all query heads, then the key heads, then the value heads
        fused = getattr(attn, quirks.fused_qkv)
        assert quirks.fused_qkv_layout == "q|k|v" and not hasattr(attn, "q_proj")
        assert fused.out_features == (N_HEADS + 2 * n_kv) * HEAD_DIM
    else:
        assert attn.q_proj.out_features == N_HEADS * HEAD_DIM
    block = model.get_submodule(head_sites(model).block_path(0))
    assert hasattr(block, "input_layernorm") == quirks.pre_attention_norm


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_post_attention_norm_undoes_scaling_a_whole_layer(arch):
    """With a norm after o_proj (Gemma-3, OLMo-2), scaling every head of a layer by 3 leaves the
    output as it was up to the norm's epsilon (RMSNorm is scale-invariant): a head's effect is
    relative to its layer's other heads. Without one (Qwen3, Phi-3) it moves the output as much
    as scaling one head does."""
    model = tiny_model(arch, scale=3.0)  # activations well above the norms' epsilon
    base = _logits(model)
    change = {}
    for name, heads in (("layer", [(1, h) for h in range(N_HEADS)]), ("head", [(1, 0)])):
        with intervened(model, heads, "scale", factor=3.0):
            change[name] = float((_logits(model) - base).abs().max())
    assert change["head"] > 0.1
    if head_sites(model).quirks.post_attention_norm:
        assert change["layer"] < 0.01 * change["head"]
    else:
        assert change["layer"] > 0.5 * change["head"]


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_sliding_window_limits_how_far_back_the_last_token_reads(arch):
    """Changing the first token reaches the last position only through a global layer: with
    every layer on a window of 4 (Phi-3 here), 2 layers reach back at most 6 tokens."""
    import torch

    model = tiny_model(arch)
    sites = head_sites(model)
    changed = [[IDS[0][0] + 1] + IDS[0][1:]]
    moved = not torch.allclose(_logits(model, changed)[0, -1], _logits(model, IDS[:1])[0, -1], atol=1e-6)
    assert moved == (len(sites.sliding_layers) < sites.n_layers)
    assert len(IDS[0]) > N_LAYERS * (TINY_WINDOW - 1) + 1  # the prompt is longer than the reach


# ------------------------------------------------------------------------------------------
# attribution and exact patching against the plain-torch references


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_atp_and_exact_patching_match_plain_torch_references(arch, pairs):
    """AtP at the site input is the true gradient there even when a norm follows o_proj (the
    reference takes ``torch.autograd.grad`` at the same tensor); batches are left padded."""
    model = tiny_model(arch, scale=3.0)  # not near-linear: the gradient itself must be right
    nn_model = as_nnsight(model, bpe_tokenizer())
    ref = reference_atp(model, pairs)
    assert_close(attribution_scores(nn_model, pairs, batch_size=5), sum(r.sum(-1) for r in ref) / len(pairs))
    width = pairs.max_length
    aligned = sum(np.pad(r, ((0, 0), (0, 0), (width - r.shape[-1], 0))) for r in ref) / len(pairs)
    assert_close(attribution_scores(nn_model, pairs, batch_size=5, per_position=True), aligned)

    heads = [(0, 1), (1, 3), (1, 0)]
    some = pairs.subset([0, 5, 6, 11])  # gen and cls, of different lengths
    got = exact_patch_scores(nn_model, some, heads, batch_size=4, heads_per_forward=2)
    assert_close(np.array([got.scores[h] for h in heads]), reference_exact(model, some, heads))


@pytest.mark.parametrize("arch", ["gemma3", "olmo2", "phi3"])
def test_graddrop_matches_plain_torch_reference(arch, pairs):
    """GradDrop cuts whole blocks (``block_path``): the multimodal wrapper's nested path, OLMo-2's
    norm-after blocks and Phi-3's fused projection."""
    model = tiny_model(arch, scale=3.0)
    some = pairs.subset(range(6))
    ours = attribution_scores(as_nnsight(model, bpe_tokenizer()), some, batch_size=3, grad_drop=True)
    assert_close(ours, sum(reference_graddrop(model, some)) / len(some))


# ------------------------------------------------------------------------------------------
# head interventions


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_ablation_hits_one_head_and_equals_zero_scale(arch):
    import torch

    model = tiny_model(arch)
    base = _logits(model)
    with capture(model) as clean:
        _logits(model)
    with intervened(model, [(1, 2)], "ablate"), capture(model) as hit:
        ablated = _logits(model)
    cols = head_sites(model).columns(2)
    assert torch.equal(hit[0], clean[0])  # upstream layer untouched
    assert torch.count_nonzero(hit[1][..., cols]) == 0
    rest = torch.ones(N_HEADS * HEAD_DIM, dtype=torch.bool)
    rest[cols] = False
    assert torch.equal(hit[1][..., rest], clean[1][..., rest])
    assert not torch.allclose(ablated, base, atol=1e-4)
    with intervened(model, [(1, 2)], "scale", factor=0.0):
        assert torch.allclose(_logits(model), ablated, atol=1e-6)
    with intervened(model, [(0, 1), (1, 2)], "scale", factor=1.0):
        assert torch.allclose(_logits(model), base, atol=1e-6)
    assert torch.equal(_logits(model), base)  # hooks removed


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_ablating_a_whole_layer_removes_its_attention(arch):
    """Every head of layer 0 ablated = the attention module returning zeros (no o_proj bias in
    these models), also where a norm follows o_proj: norm(0) = 0."""
    import torch

    model = tiny_model(arch)
    attn = _attention(model, 0)
    assert attn.o_proj.bias is None

    def zero(module, args, output):
        return (torch.zeros_like(output[0]), *output[1:])

    handle = attn.register_forward_hook(zero)
    try:
        reference = _logits(model)
    finally:
        handle.remove()
    with intervened(model, [(0, h) for h in range(N_HEADS)], "ablate"):
        ablated = _logits(model)
    assert torch.allclose(ablated, reference, atol=1e-6)
    assert not torch.allclose(ablated, _logits(model), atol=1e-4)
