"""interp.core.architectures: every row of the one architecture table against a tiny random model of
its type (tests/tiny_models.py): each path resolves to a module of the right kind and width, each
quirk is what the config and the modules do, and the analyses refused are refused by name."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from gar_tasks.errors import GARConfigError
from interp.circuit.ports import circuit_shape
from interp.core.architectures import ARCHITECTURES, PATH_KEYS, architecture
from interp.core.sites import HEAD_OUTPUT_SITES, QUIRKS, head_sites
from tiny_models import HEAD_DIM, N_HEADS, N_LAYERS, one_thread_module, tiny_model  # noqa: F401

pytestmark = pytest.mark.unit

ARCHS = sorted(ARCHITECTURES)
#: the circuit engine's unrolled forward models these blocks, and only these


def _text(model):
    return model.config.get_text_config()


def _n_kv(model) -> int:
    cfg = _text(model)
    return int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)


def _module(model, arch, key, layer=0):
    return model.get_submodule(arch.path(key, layer))


def test_the_table_covers_every_tiny_model_and_the_views_read_it():
    from tiny_models import TABLE_BUILDERS

    assert set(ARCHS) == set(TABLE_BUILDERS) and len(ARCHS) == 12
    assert HEAD_OUTPUT_SITES == {t: a.paths.o for t, a in ARCHITECTURES.items()}
    assert all(QUIRKS[t] is a.quirks for t, a in ARCHITECTURES.items())


@pytest.mark.parametrize("name", ARCHS)
def test_every_path_resolves_to_a_module_of_the_tiny_model(name):
    import torch

    model, arch = tiny_model(name), ARCHITECTURES[name]
    resolved = 0
    for key in PATH_KEYS:
        template = getattr(arch.paths, key)
        if template is None:
            continue
        for layer in range(N_LAYERS) if "{i}" in template else (None,):
            assert isinstance(model.get_submodule(arch.path(key, layer)), torch.nn.Module), (key, layer)
            resolved += 1
    assert resolved >= 10
    # what they are: widths of the projections, kinds of the other modules
    width, kv = N_HEADS * HEAD_DIM, _n_kv(model) * HEAD_DIM
    hidden = int(_text(model).hidden_size)
    o = _module(model, arch, "o")
    assert (o.weight.shape[0] if arch.quirks.conv1d else o.in_features) == width
    assert (type(o).__name__ == "Conv1D") == arch.quirks.conv1d
    if arch.paths.qkv is None:
        assert [_module(model, arch, k).out_features for k in "qkv"] == [width, kv, kv]
    else:
        fused = _module(model, arch, "qkv")
        assert (fused.weight.shape[1] if arch.quirks.conv1d else fused.out_features) == width + 2 * kv
        assert arch.paths.q is arch.paths.k is arch.paths.v is None
    assert isinstance(_module(model, arch, "embed"), torch.nn.Embedding)
    assert _module(model, arch, "embed").embedding_dim == hidden
    assert _module(model, arch, "lm_head").out_features == _text(model).vocab_size
    assert type(_module(model, arch, "layer")).__name__.endswith(("DecoderLayer", "Block", "Layer"))
    assert type(_module(model, arch, "attn")).__name__.endswith("Attention")
    assert type(_module(model, arch, "mlp")).__name__.endswith("MLP")
    assert _module(model, arch, "o") is getattr(_module(model, arch, "attn"), arch.paths.o.rsplit(".", 1)[1])
    for key in ("attn_norm", "mlp_norm", "post_attn_norm", "post_mlp_norm", "final_norm", "q_norm", "k_norm"):
        if getattr(arch.paths, key) is not None:
            assert "Norm" in type(_module(model, arch, key)).__name__, key
    # every norm the block holds is in the table (none left out: the maths would be wrong)
    block_norms = {n for n, m in _module(model, arch, "layer").named_children() if "Norm" in type(m).__name__}
    listed = {getattr(arch.paths, k).rsplit(".", 1)[1] for k in ("attn_norm", "mlp_norm", "post_attn_norm",
                                                                 "post_mlp_norm") if getattr(arch.paths, k)}
    assert block_norms == listed
    with pytest.raises(GARConfigError, match="per layer"):
        arch.path("o")
    with pytest.raises(GARConfigError, match="no module 'nonsense'"):
        arch.path("nonsense", 0)


@pytest.mark.parametrize("name", ARCHS)
def test_each_quirk_matches_the_config_and_the_modules(name):
    import torch

    model, arch = tiny_model(name), ARCHITECTURES[name]
    q, cfg, text = arch.quirks, model.config, _text(model)
    attn = _module(model, arch, "attn")
    # soft-capping and query scaling: what each attention module multiplies its scores by
    assert (q.attn_softcap is not None) == hasattr(text, "attn_logit_softcapping")
    assert (q.final_softcap is not None) == hasattr(text, "final_logit_softcapping")
    assert arch.attn_softcap(cfg) == getattr(text, "attn_logit_softcapping", None)
    for layer in range(N_LAYERS):
        assert arch.attention_scaling(cfg, layer) == pytest.approx(_module(model, arch, "attn", layer).scaling)
    assert (q.query_scale == "query_pre_attn_scalar") == hasattr(text, "query_pre_attn_scalar")
    # q/k norms: per head (head_dim wide) or across heads (all heads' width)
    if q.qk_norm is None:
        assert arch.paths.q_norm is None and not hasattr(attn, "q_norm") and not hasattr(attn, "k_norm")
    else:
        widths = {"per_head": (HEAD_DIM, HEAD_DIM), "across_heads": (N_HEADS * HEAD_DIM, _n_kv(model) * HEAD_DIM)}
        got = (_module(model, arch, "q_norm").weight.shape[0], _module(model, arch, "k_norm").weight.shape[0])
        assert got == widths[q.qk_norm]
    # norm placement
    assert q.pre_attention_norm == (arch.paths.attn_norm is not None)
    assert q.post_attention_norm == (arch.paths.post_attn_norm is not None)
    # fused q/k/v: the attention module's attribute
    assert (q.fused_qkv is None) == (arch.paths.qkv is None)
    if q.fused_qkv:
        assert arch.paths.qkv.rsplit(".", 1)[1] == q.fused_qkv and q.fused_qkv_layout in ("q|k|v", "per_head")
    # windows, wrappers, parallel residual
    assert q.sliding_window == hasattr(text, "sliding_window")
    assert q.text_config == (text is not cfg)
    assert (q.parallel_residual is not None) == hasattr(text, "use_parallel_residual")
    layer0 = _module(model, arch, "layer")
    assert arch.parallel_residual(cfg) == bool(getattr(layer0, "use_parallel_residual", False))
    # positions: rotary (on all or part of each head) or learned absolute
    assert q.absolute_positions == (arch.paths.pos_embed is not None) == (arch.paths.rotary is None)
    rope = getattr(text, "rope_parameters", None) or {}
    assert q.partial_rotary == ("partial_rotary_factor" in rope)
    if arch.paths.rotary is not None:
        freqs = {n: b.shape[0] for n, b in _module(model, arch, "rotary").named_buffers() if n.endswith("inv_freq")}
        assert freqs and set(freqs.values()) == {arch.rotary_dims(cfg) // 2}  # Gemma-3: one set per layer type
        assert arch.rotary_dims(cfg) < HEAD_DIM or not q.partial_rotary or rope["partial_rotary_factor"] == 1.0
    else:
        assert arch.rotary_dims(cfg) is None
    # the norm's formula, on the model's own gains
    norm = _module(model, arch, "final_norm")
    x = torch.randn(3, int(text.hidden_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = norm(x)
        if q.norm == "layernorm":
            assert isinstance(norm, torch.nn.LayerNorm) and norm.bias is not None
            want = torch.nn.functional.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)
        else:
            gain = norm.weight + (1.0 if q.norm == "rms_offset" else 0.0)
            eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
            want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # embedding scaling: sqrt(hidden_size) inside the embedding module
    emb = _module(model, arch, "embed")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        factor = math.sqrt(text.hidden_size) if q.embed_scale else 1.0
        torch.testing.assert_close(emb(ids), emb.weight[ids] * factor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ARCHS)
def test_every_row_supports_every_analysis(name):
    model, arch = tiny_model(name), ARCHITECTURES[name]
    assert head_sites(model).template == arch.paths.o
    assert arch.supports("heads") and arch.supports("circuit")
    assert circuit_shape(model).path("o", 1) == arch.path("o", 1)


def test_a_row_refused_for_an_analysis_names_itself_and_the_reason(monkeypatch):
    import dataclasses

    from interp.core import architectures

    row = dataclasses.replace(ARCHITECTURES["gpt2"], unsupported={"circuit": "fused Conv1D q/k/v: not modelled"})
    monkeypatch.setitem(architectures.ARCHITECTURES, "gpt2", row)
    with pytest.raises(GARConfigError) as err:
        circuit_shape(tiny_model("gpt2").config)
    msg = str(err.value)
    assert "\n" not in msg and "unsupported architecture 'gpt2' for circuit discovery" in msg
    assert "(fused Conv1D q/k/v: not modelled)" in msg and "gpt2" not in msg.split("supported: ")[1].split(", ")
    assert architecture("gpt2", "heads") is row  # refused for circuits only


def test_unknown_architectures_are_refused_for_every_analysis():
    for analysis, what in (("heads", "per-head patching"), ("circuit", "circuit discovery")):
        with pytest.raises(GARConfigError, match=f"unsupported architecture 'bert' for {what}; supported: "):
            architecture("bert", analysis)
        with pytest.raises(GARConfigError, match="unsupported architecture None"):
            architecture(None, analysis)


def test_one_file_names_module_paths():
    """The table is the only place a module path is spelled out."""
    root = Path(__file__).resolve().parents[1]
    found = subprocess.run(["grep", "-rl", "self_attn.o_proj", "interp", "--include=*.py"], cwd=root,
                           capture_output=True, text=True, check=False).stdout.split()
    assert found == ["interp/core/architectures.py"]
