"""Head interventions (interp.intervene) on tiny Llama (GQA) and GPT-2: only the targeted heads'
slices of the head-site input change, scale 1 is the identity, a whole-layer ablation equals
zeroing the attention output, control heads are disjoint and seeded."""

from __future__ import annotations

import pytest

from tiny_models import N_HEADS, N_LAYERS, one_thread, tiny_model

from gar_tasks.errors import GARConfigError
from interp.intervene import format_heads, head_means, install, intervened, parse_heads, random_heads
from interp.core.sites import head_sites
from torch_reference import capture

pytestmark = pytest.mark.unit

ARCHS = ["llama", "gpt2"]
IDS = [[5, 17, 42, 99, 3, 250, 7], [11, 12, 13, 14, 15, 16, 17]]


def _ids():
    import torch

    return torch.tensor(IDS)


def _forward(model):
    import torch

    with torch.no_grad(), one_thread():
        return model(_ids()).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["ablate", "scale", "mean"])
def test_only_targeted_slices_change(arch, mode):
    import torch

    model = tiny_model(arch)
    sites = head_sites(model)
    targets = [(0, 1), (1, 3)]
    with capture(model) as clean:
        _forward(model)
    means = torch.randn(N_LAYERS, N_HEADS, sites.head_dim, generator=torch.Generator().manual_seed(0))
    with intervened(model, targets, mode, factor=3.0, means=means):
        with capture(model) as hit:
            _forward(model)
    # layer 0 is untouched upstream, so its unchanged heads must match exactly
    d = sites.head_dim
    for h in range(N_HEADS):
        cols = slice(h * d, (h + 1) * d)
        if (0, h) in targets:
            expected = {"ablate": torch.zeros_like(clean[0][..., cols]), "scale": clean[0][..., cols] * 3.0,
                        "mean": means[0, h].expand_as(clean[0][..., cols])}[mode]
            assert torch.allclose(hit[0][..., cols], expected, atol=1e-6)
        else:
            assert torch.equal(hit[0][..., cols], clean[0][..., cols])
    # layer 1: compare the intervened head with what the same input gives without its hook
    cols = sites.columns(3)
    if mode == "ablate":
        assert torch.count_nonzero(hit[1][..., cols]) == 0
    assert not torch.allclose(hit[1], clean[1])
    # hooks removed on exit
    with capture(model) as after:
        _forward(model)
    assert all(torch.equal(after[l], clean[l]) for l in clean)


@pytest.mark.parametrize("arch", ARCHS)
def test_only_targets_change_with_identical_upstream(arch):
    """Intervening on one head of the last layer: every other slice there is bit-identical."""
    import torch

    model = tiny_model(arch)
    d = head_sites(model).head_dim
    with capture(model) as clean:
        _forward(model)
    with intervened(model, [(1, 2)], "scale", factor=-2.0), capture(model) as hit:
        _forward(model)
    assert torch.equal(hit[0], clean[0])
    for h in range(N_HEADS):
        cols = slice(h * d, (h + 1) * d)
        if h == 2:
            assert torch.allclose(hit[1][..., cols], -2.0 * clean[1][..., cols])
        else:
            assert torch.equal(hit[1][..., cols], clean[1][..., cols])


@pytest.mark.parametrize("arch", ARCHS)
def test_scale_one_is_identity(arch):
    import torch

    model = tiny_model(arch)
    base = _forward(model)
    with intervened(model, [(l, h) for l in range(N_LAYERS) for h in range(N_HEADS)], "scale", factor=1.0):
        assert torch.allclose(_forward(model), base, atol=1e-6)
    with intervened(model, [(0, 0)], "ablate"):
        assert not torch.allclose(_forward(model), base, atol=1e-4)
    assert torch.equal(_forward(model), base)


def _attention_module(model, arch, layer):
    return model.model.layers[layer].self_attn if arch == "llama" else model.transformer.h[layer].attn


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer", [0, 1])
def test_ablating_a_whole_layer_zeroes_its_attention_output(arch, layer):
    import torch

    model = tiny_model(arch)
    site = model.get_submodule(head_sites(model).path(layer))
    bias = getattr(site, "bias", None)

    def zero_attention(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        new = torch.zeros_like(out) if bias is None else bias.expand_as(out).clone()  # o_proj(0) = bias
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = _attention_module(model, arch, layer).register_forward_hook(zero_attention)
    try:
        reference = _forward(model)
    finally:
        handle.remove()
    with intervened(model, [(layer, h) for h in range(N_HEADS)], "ablate"):
        ablated = _forward(model)
    assert torch.allclose(ablated, reference, atol=1e-6)
    assert not torch.allclose(ablated, _forward(model), atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_label_mode_scales_true_and_false_heads_per_row(arch):
    import torch

    model = tiny_model(arch)
    d = head_sites(model).head_dim
    with capture(model) as clean:
        _forward(model)
    with intervened(model, mode="label", true_heads=[(1, 0)], false_heads=[(1, 1)], up=2.0, down=0.0,
                    labels=[True, False]), capture(model) as hit:
        _forward(model)
    t, f = slice(0, d), slice(d, 2 * d)
    assert torch.allclose(hit[1][0, :, t], 2 * clean[1][0, :, t]) and torch.count_nonzero(hit[1][0, :, f]) == 0
    assert torch.count_nonzero(hit[1][1, :, t]) == 0 and torch.allclose(hit[1][1, :, f], 2 * clean[1][1, :, f])
    assert torch.equal(hit[1][..., 2 * d:], clean[1][..., 2 * d:])


def test_head_means_is_the_token_mean_of_the_site_input():
    import torch

    model = tiny_model("llama")
    with one_thread():
        means = head_means(model, IDS)
    with capture(model) as seen:
        _forward(model)
    d = head_sites(model).head_dim
    assert means.shape == (N_LAYERS, N_HEADS, d)
    assert torch.allclose(means[1].flatten(), seen[1].reshape(-1, N_HEADS * d).mean(0), atol=1e-5)


def test_random_heads_disjoint_and_seeded():
    targets = [(0, 1), (1, 3), (1, 0)]
    a = random_heads(3, targets, N_LAYERS, N_HEADS, seed=7)
    assert a == random_heads(3, targets, N_LAYERS, N_HEADS, seed=7)
    assert len(set(a)) == 3 and not set(a) & set(targets)
    assert all(0 <= l < N_LAYERS and 0 <= h < N_HEADS for l, h in a)
    draws = {tuple(random_heads(3, targets, 40, 64, seed=s)) for s in range(5)}
    assert len(draws) > 1
    with pytest.raises(GARConfigError):
        random_heads(6, targets, N_LAYERS, N_HEADS)


def test_bad_arguments():
    model = tiny_model("llama")
    for kwargs in ({"heads": [(2, 0)]}, {"heads": [(0, 4)]}, {"heads": [(0, 0)], "mode": "nope"},
                   {"heads": [(0, 0)], "mode": "mean"}):
        with pytest.raises(GARConfigError):
            install(model, **kwargs)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert parse_heads("14:0;15:3") == parse_heads("14.0;15.3") == [(14, 0), (15, 3)]
    assert format_heads([(14, 0), (15, 3)]) == "14:0;15:3" and parse_heads(format_heads([(3, 10)])) == [(3, 10)]
    for bad in (14.0, "14,0", "x:1"):
        with pytest.raises(GARConfigError):
            parse_heads(bad)
