"""interp.patching against slow plain-torch references, on tiny random Llama (GQA) and GPT-2.

The references run one pair at a time, unpadded, without nnsight: forward pre-hooks on the
output projections read (or overwrite) the head outputs, and ``torch.autograd.grad`` takes the
gradient. So they also check the batching: left padding, position ids (GPT-2 has absolute
positions), several heads patched in one forward.
"""

from __future__ import annotations

import numpy as np
import pytest

from gar_tasks.errors import GARConfigError
from interp.core.model import as_nnsight
from interp.pairs import make_pairs
from interp.patching import (agreement, attribution_scores, exact_patch_scores, select_heads)
from interp.core.sites import head_sites
from tiny_models import one_thread_module, tiny_model  # noqa: F401 (autouse fixture)
from tiny_tokenizers import bpe_tokenizer, gar_records
from torch_reference import reference_atp, reference_exact, reference_graddrop

pytestmark = pytest.mark.unit

ARCHS = ("llama", "gpt2")


@pytest.fixture(scope="module")
def pairs():
    """A dozen short pairs of both families, of several lengths (so batches are padded)."""
    full = make_pairs(gar_records("paper")[:300], bpe_tokenizer())
    cls = [i for i in range(len(full)) if full[i].family == "cls"]
    gen = [i for i in range(len(full)) if full[i].family == "gen"]
    chosen = sorted(gen, key=lambda i: full[i].length)[:6] + sorted(cls, key=lambda i: full[i].length)[:6]
    sub = full.subset(chosen)
    assert len({p.length for p in sub}) > 3
    return sub


def _close(ours, ref):
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("arch", ARCHS)
def test_atp_matches_plain_torch_reference(arch, pairs):
    model = tiny_model(arch, scale=3.0)  # not near-linear: the gradient itself must be right
    nn_model = as_nnsight(model, bpe_tokenizer())
    ref = reference_atp(model, pairs)
    total = sum(r.sum(-1) for r in ref) / len(pairs)
    _close(attribution_scores(nn_model, pairs, batch_size=5), total)

    width = pairs.max_length
    aligned = sum(np.pad(r, ((0, 0), (0, 0), (width - r.shape[-1], 0))) for r in ref) / len(pairs)
    per_pos = attribution_scores(nn_model, pairs, batch_size=5, per_position=True)
    _close(per_pos, aligned)
    np.testing.assert_allclose(per_pos.sum(-1), total, rtol=1e-3, atol=1e-4 * np.abs(total).max())
    # chunks (as a checkpointed run would do them) add up to the whole, weighted by size
    halves = [pairs.subset(range(0, 5)), pairs.subset(range(5, len(pairs)))]
    chunked = sum(attribution_scores(nn_model, h, batch_size=5, per_position=True, n_positions=width) * len(h)
                  for h in halves) / len(pairs)
    _close(chunked, aligned)

    roles = ("Q", "END", "K")
    by_role = np.stack([sum(r[..., s:e].sum(-1) for r, p in zip(ref, pairs) for s, e in p.roles.get(role, []))
                        for role in roles], -1) / len(pairs)
    _close(attribution_scores(nn_model, pairs, batch_size=5, roles=roles), by_role)


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_patching_matches_plain_torch_reference(arch, pairs):
    model = tiny_model(arch, scale=3.0)
    heads = [(0, 1), (1, 3), (1, 0), (0, 2)]  # two layers, two heads in one layer
    some = pairs.subset([0, 5, 6, 11])  # gen and cls, of different lengths: padded batches
    ref = reference_exact(model, some, heads)
    got = exact_patch_scores(model, some, heads, batch_size=4, heads_per_forward=3,
                             tokenizer=bpe_tokenizer())
    _close(np.array([got.scores[h] for h in heads]), ref)
    assert np.isnan(got.scores).sum() == got.scores.size - len(heads)
    assert got.heads == tuple(heads)


@pytest.mark.parametrize("arch", ARCHS)
def test_atp_agrees_with_exact_patching_near_linear(arch, pairs):
    """HF's init (std 0.02) keeps heads small perturbations of the residual stream, so the
    model is close to linear in them and AtP (first order) must track exact patching."""
    model = as_nnsight(tiny_model(arch, scale=1.0), bpe_tokenizer())
    atp = attribution_scores(model, pairs, batch_size=6)
    heads = [(layer, head) for layer in range(2) for head in range(4)]
    exact = exact_patch_scores(model, pairs, heads, batch_size=6, heads_per_forward=8)
    ag = agreement(atp, exact, k=3)
    assert ag.n == 8 and ag.pearson > 0.99 and ag.spearman > 0.9 and ag.topk_overlap >= 2 / 3
    # and it is a real check: far from linear (weights x10), first order no longer suffices
    far = as_nnsight(tiny_model(arch, scale=10.0), bpe_tokenizer())
    far_ag = agreement(attribution_scores(far, pairs, batch_size=6),
                       exact_patch_scores(far, pairs, heads, batch_size=6), k=3)
    assert far_ag.pearson < 0.999 < ag.pearson


def test_sdpa_attention_gives_the_eager_scores(pairs):
    """Left padding under SDPA (the default implementation of real checkpoints) is harmless."""
    from tiny_models import tiny_llama

    heads = [(0, 1), (1, 2)]
    got = {}
    for impl in ("eager", "sdpa"):
        model = tiny_llama(scale=3.0)
        model.set_attn_implementation(impl)
        nn_model = as_nnsight(model, bpe_tokenizer())
        got[impl] = (attribution_scores(nn_model, pairs, batch_size=12, per_position=True),
                     exact_patch_scores(nn_model, pairs, heads, batch_size=12).scores[tuple(zip(*heads))])
    for eager, sdpa in zip(got["eager"], got["sdpa"]):
        _close(sdpa, eager)


def test_select_heads_top_k_plus_seeded_random():
    atp = np.array([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3]])
    heads = select_heads(atp, k=2, n_random=2, seed=1)
    assert heads[:2] == [(0, 1), (1, 0)] and len(set(heads)) == 4
    assert heads == select_heads(atp, k=2, n_random=2, seed=1)
    assert set(select_heads(atp, k=2, n_random=10)[2:]) == {(0, 0), (0, 2), (1, 1), (1, 2)}


def test_agreement_statistics():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    atp = rng.normal(size=(3, 4))
    exact = np.full((3, 4), np.nan)
    exact[0] = atp[0] * 2 + rng.normal(size=4) * 0.1
    exact[2, :2] = [1.0, 1.0]  # ties
    ag = agreement(atp, exact, k=2)
    a, e = atp[~np.isnan(exact)], exact[~np.isnan(exact)]
    assert ag.n == 6
    assert ag.pearson == pytest.approx(scipy_stats.pearsonr(a, e)[0])
    assert ag.spearman == pytest.approx(scipy_stats.spearmanr(a, e)[0])
    assert agreement(atp, np.where(np.isnan(exact), np.nan, atp), k=3).topk_overlap == 1.0


def test_bad_patching_arguments(pairs):
    model = tiny_model("llama")
    tok = bpe_tokenizer()
    with pytest.raises(GARConfigError, match="tokenizer"):
        attribution_scores(model, pairs)
    with pytest.raises(GARConfigError, match="head 9"):
        exact_patch_scores(model, pairs, [(0, 9)], tokenizer=tok)
    with pytest.raises(GARConfigError, match="no pairs"):
        attribution_scores(model, pairs.subset([]), tokenizer=tok)
    with pytest.raises(GARConfigError, match="exclusive"):
        attribution_scores(model, pairs, per_position=True, roles=("Q",), tokenizer=tok)
    with pytest.raises(GARConfigError, match="shape"):
        agreement(np.zeros((2, 4)), np.zeros((2, 3)))
    from interp.patching import attribution_batch

    with pytest.raises(GARConfigError, match="as_nnsight"):
        attribution_batch(model, pairs.batch([0]))


def test_unsupported_architecture_is_refused_before_any_work(pairs):
    from transformers import BertConfig, BertLMHeadModel

    bert = BertLMHeadModel(BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=16, is_decoder=True))
    with pytest.raises(GARConfigError, match="unsupported architecture 'bert'"):
        attribution_scores(bert, pairs, tokenizer=bpe_tokenizer())


@pytest.mark.parametrize("arch", ARCHS)
def test_graddrop_matches_plain_torch_reference(arch, pairs):
    model = tiny_model(arch, scale=3.0)
    nn_model = as_nnsight(model, bpe_tokenizer())
    ref = sum(reference_graddrop(model, pairs)) / len(pairs)
    ours = attribution_scores(nn_model, pairs, batch_size=5, grad_drop=True)
    _close(ours, ref)
    assert (ours >= 0).all()
    # cutting a later block changes some head's gradient (else GradDrop would equal |AtP|)
    plain = np.abs(attribution_scores(nn_model, pairs, batch_size=5))
    assert not np.allclose(ours, plain * head_sites(model).n_layers / (head_sites(model).n_layers - 1))
    with pytest.raises(GARConfigError, match="grad_drop"):
        attribution_scores(nn_model, pairs, grad_drop=True, per_position=True)
