"""The seed's MLP truth probe (interp.probe): reproduction on the released features, and the
attention feature of our own models against a direct computation."""

from __future__ import annotations

import pytest

from shared_data import shared_path
from tiny_models import one_thread, tiny_model, tokenizer

from interp.probe import (PAPER_HEADS, attention_feature, evaluate_got, evaluate_snli, head_features, kfold_indices,
                          load_feature_csv, snli_span, train_probe, got_span)


SNLI = "reference/mlp/SNLI_zero_shot"


@pytest.mark.integration
@pytest.mark.parametrize("heads, expected", [(PAPER_HEADS, 0.870), (None, 0.878)])
def test_snli_reproduces_seed(heads, expected):
    directory = shared_path(SNLI)
    with one_thread():
        res = evaluate_snli(directory, heads)
    assert len(res.accuracies) == 5
    assert abs(res.mean - expected) <= 0.02, res
    assert res.std < 0.02


@pytest.mark.integration
@pytest.mark.parametrize("heads, expected", [(PAPER_HEADS, 0.853), (None, 0.866)])
def test_got_companies_reproduces_seed(heads, expected):
    path = shared_path("reference/mlp/GoT_zero_shot/companies_true_false.csv")
    with one_thread():
        res = evaluate_got(path, heads)
    assert len(res.accuracies) == 5
    assert abs(res.mean - expected) <= 0.02, res


@pytest.mark.unit
def test_load_feature_csv_selects_and_orders_heads():
    path = shared_path(f"{SNLI}/snli_YesNo_head_feature_3000_test_zero_shot.csv")
    X, y, heads = load_feature_csv(path)
    assert X.shape == (3000, 8) and len(heads) == 8 and set(y.tolist()) == {0, 1}
    X4, y4, heads4 = load_feature_csv(path, [(14, 46), (15, 51)])
    assert heads4 == [(14, 46), (15, 51)] and (y4 == y).all()
    assert (X4[:, 0] == X[:, heads.index((14, 46))]).all() and (X4[:, 1] == X[:, heads.index((15, 51))]).all()


@pytest.mark.unit
def test_train_probe_is_seeded_and_leaves_global_rng_alone():
    import torch

    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 3, generator=g)
    y = (X[:, 0] > 0).long()
    state = torch.get_rng_state()
    with one_thread():
        m1, acc1 = train_probe(X[:150], y[:150], X[150:], y[150:], seed=3)
        m2, acc2 = train_probe(X[:150], y[:150], X[150:], y[150:], seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert acc1 == acc2 and all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert acc1 > 0.8


@pytest.mark.unit
def test_kfold_partitions():
    import numpy as np

    folds = kfold_indices(23, 5, 42)
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests.tolist()) == list(range(23)) and [len(t) for _, t in folds] == [5, 5, 5, 4, 4]
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == 23
    assert all((a[1] == b[1]).all() for a, b in zip(folds, kfold_indices(23, 5, 42)))


@pytest.mark.unit
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_head_features_match_direct_computation(arch):
    import torch

    model, tok = tiny_model(arch), tokenizer()
    texts = ["A man plays a guitar on stage. So a person makes music.", "The cat sleeps. So the dog runs fast."]
    items = [snli_span(tok, t) for t in texts]
    with one_thread():
        feats = head_features(model, [ids for ids, _ in items], [span for _, span in items])
        picked = head_features(model, [ids for ids, _ in items], [span for _, span in items], heads=[(1, 2), (0, 3)])
        for i, (ids, (start, end)) in enumerate(items):
            assert 0 < start < end == len(ids)
            with torch.no_grad():
                attn = model(torch.tensor([ids]), output_attentions=True).attentions
            for layer in range(2):
                for head in range(4):
                    best = max(float(attn[layer][0, head, q, 1:].max() - attn[layer][0, head, q, 0])
                               for q in range(start, end))
                    assert feats[i, layer * 4 + head].item() == pytest.approx(best, abs=1e-6)
            assert picked[i].tolist() == pytest.approx([feats[i, 6].item(), feats[i, 3].item()])


@pytest.mark.unit
def test_attention_feature_by_hand():
    import torch

    attn = torch.zeros(1, 1, 3, 3)
    attn[0, 0, 0] = torch.tensor([1.0, 0, 0])
    attn[0, 0, 1] = torch.tensor([0.5, 0.5, 0])
    attn[0, 0, 2] = torch.tensor([0.1, 0.3, 0.6])
    assert attention_feature(attn, 1, 3).item() == pytest.approx(0.5)
    assert attention_feature(attn, 0, 2).item() == pytest.approx(0.0)


@pytest.mark.unit
def test_query_spans_cover_the_statement():
    tok = tokenizer()
    ids, (start, end) = snli_span(tok, "A dog runs in the park. So an animal is outside.")
    assert tok.decode(ids[start:end]).strip() == "an animal is outside."
    ids, (start, end) = got_span(tok, "Please answer with Yes or No. Is it true that Paris is in France? Answer: Yes")
    assert tok.decode(ids[start:end]).strip() == "it true that Paris is in France?"
