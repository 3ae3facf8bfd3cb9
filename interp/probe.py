"""The seed's truth probe: an MLP on per-head attention features (GAR paper, SNLI / GoT transfer).

Protocol (the seed's, reproduced exactly): ``Linear(n, 32) -> ReLU -> Linear(32, 2)``, Adam lr 1e-3,
30 epochs, batch 32, cross-entropy; after every epoch the validation accuracy is measured and the
checkpoint with the best one (first best on ties) is the one tested.

* SNLI: the given train/validation/test split, ``runs`` (5) runs; mean and std of test accuracy.
* Geometry of Truth: 5-fold cross-validation (shuffled, seed 42); each training fold is split
  75/25 into train/validation; mean and std over the folds.

Randomness goes through seeded ``torch.Generator`` / ``numpy.random.default_rng`` objects only:
the global RNGs are never seeded or consumed (parameter init included), so results do not depend
on what ran before.

Features of our own models: :func:`head_features` (the seed's attention feature, see its doc).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from gar_tasks.errors import GARConfigError

Head = tuple[int, int]
PAPER_HEADS: tuple[Head, ...] = ((15, 51), (14, 0), (14, 18), (14, 46))
TRUE_HEADS: tuple[Head, ...] = ((14, 18), (14, 46))
FALSE_HEADS: tuple[Head, ...] = ((15, 51), (14, 0))
SNLI_SPLITS = ("train", "validation", "test")
_HEAD_COL = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


@dataclass(frozen=True)
class ProbeResult:
    """Test accuracy per run (SNLI) or per fold (GoT), with mean and (population) std."""

    accuracies: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def std(self) -> float:
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / len(self.accuracies))


def load_feature_csv(path: str | Path, heads: Sequence[Head] | None = None) -> tuple[Any, Any, list[Head]]:
    """``(X float32 [n, k], y int64 [n], heads)`` from a seed feature CSV.

    Columns ``"(layer,head)"`` and ``label``; ``heads`` picks (and orders) columns, all by default.
    """
    import numpy as np

    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [r for r in reader if r]
    cols: dict[Head, int] = {}
    for i, name in enumerate(header):
        m = _HEAD_COL.match(name.strip())
        if m:
            cols[(int(m.group(1)), int(m.group(2)))] = i
    if "label" not in header:
        raise GARConfigError(f"{path}: no 'label' column")
    chosen = list(cols) if heads is None else [tuple(h) for h in heads]
    missing = [h for h in chosen if h not in cols]
    if missing:
        raise GARConfigError(f"{path}: no column for heads {missing}; available: {list(cols)}")
    idx = [cols[h] for h in chosen]
    li = header.index("label")
    X = np.array([[float(r[i]) for i in idx] for r in rows], dtype=np.float32)
    y = np.array([int(float(r[li])) for r in rows], dtype=np.int64)
    return X, y, chosen


def _mlp(n_features: int, generator: Any, hidden: int = 32) -> Any:
    """The seed's MLP, initialised like ``nn.Linear`` (U(+-1/sqrt(fan_in))) from ``generator``."""
    import torch
    from torch import nn

    skip = torch.nn.utils.skip_init  # no default init: it would draw from the global RNG
    model = nn.Sequential(skip(nn.Linear, n_features, hidden), nn.ReLU(), skip(nn.Linear, hidden, 2))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            bound = 1.0 / math.sqrt(layer.in_features)
            for p in (layer.weight, layer.bias):
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
    return model


def _accuracy(model: Any, X: Any, y: Any) -> float:
    import torch

    with torch.no_grad():
        return float((model(X).argmax(-1) == y).float().mean())


def train_probe(X_train: Any, y_train: Any, X_val: Any, y_val: Any, *, seed: int = 0, epochs: int = 30,
                batch_size: int = 32, lr: float = 1e-3, hidden: int = 32) -> tuple[Any, float]:
    """Train the seed's MLP; return ``(model at its best validation epoch, best val accuracy)``."""
    import copy

    import torch

    Xt, yt = torch.as_tensor(X_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.long)
    Xv, yv = torch.as_tensor(X_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    model = _mlp(Xt.shape[1], gen, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    best_acc, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(Xt), generator=gen)
        for start in range(0, len(Xt), batch_size):
            b = order[start:start + batch_size]
            opt.zero_grad()
            loss_fn(model(Xt[b]), yt[b]).backward()
            opt.step()
        model.eval()
        acc = _accuracy(model, Xv, yv)
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), best_acc


def snli_csv(directory: str | Path, split: str) -> Path:
    """The seed's SNLI zero-shot feature CSV of ``split`` inside ``directory``."""
    matches = sorted(Path(directory).glob(f"*_{split}_zero_shot.csv")) or sorted(Path(directory).glob(f"*{split}*.csv"))
    if not matches:
        raise GARConfigError(f"no {split} feature CSV in {directory}")
    return matches[0]


def evaluate_snli(directory: str | Path, heads: Sequence[Head] | None = PAPER_HEADS, *, runs: int = 5,
                  seed: int = 0, **train_kw: Any) -> ProbeResult:
    """Test accuracy of the probe on the given SNLI split, ``runs`` runs seeded ``seed + run``."""
    import torch

    data = {s: load_feature_csv(snli_csv(directory, s), heads)[:2] for s in SNLI_SPLITS}
    Xte, yte = (torch.as_tensor(a) for a in data["test"])
    accs = []
    for run in range(runs):
        model, _ = train_probe(*data["train"], *data["validation"], seed=seed + run, **train_kw)
        accs.append(_accuracy(model, Xte, yte))
    return ProbeResult(tuple(accs))


def kfold_indices(n: int, k: int = 5, seed: int = 42) -> list[tuple[Any, Any]]:
    """Shuffled k-fold ``(train_idx, test_idx)`` pairs (sklearn's KFold(shuffle=True) layout:
    the first ``n % k`` folds get one extra item), shuffled by a numpy Generator seeded ``seed``."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    out, start = [], 0
    for size in sizes:
        test = perm[start:start + size]
        train = np.concatenate([perm[:start], perm[start + size:]])
        out.append((train, test))
        start += size
    return out


def evaluate_got(path: str | Path, heads: Sequence[Head] | None = PAPER_HEADS, *, folds: int = 5,
                 seed: int = 42, val_fraction: float = 0.25, **train_kw: Any) -> ProbeResult:
    """5-fold CV test accuracy on a Geometry-of-Truth feature CSV (each training fold split
    75/25 train/validation, shuffled by a Generator seeded ``seed + fold``)."""
    import numpy as np
    import torch

    X, y, _ = load_feature_csv(path, heads)
    accs = []
    for fold, (train, test) in enumerate(kfold_indices(len(y), folds, seed)):
        train = np.random.default_rng(seed + fold).permutation(train)
        n_val = round(len(train) * val_fraction)
        val, tr = train[:n_val], train[n_val:]
        model, _ = train_probe(X[tr], y[tr], X[val], y[val], seed=seed + fold, **train_kw)
        accs.append(_accuracy(model, torch.as_tensor(X[test]), torch.as_tensor(y[test])))
    return ProbeResult(tuple(accs))


# --- features of our own models ---------------------------------------------------------------

def attention_feature(attn: Any, start: int, end: int) -> Any:
    """The seed's feature from one sequence's attention weights ``[layers, heads, q, k]``.

    For each query position ``q`` in ``[start, end)``: (largest weight to any key except the first
    token) minus (weight to the first token); the feature is the max over those positions.
    Returns ``[layers, heads]``.
    """
    window = attn[..., start:end, :]  # [L, H, Q, K]
    rest = window[..., 1:].max(dim=-1).values
    return (rest - window[..., 0]).max(dim=-1).values


def head_features(model: Any, input_ids: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]],
                  heads: Sequence[Head] | None = None) -> Any:
    """The seed's attention feature for each sequence (one forward each, no padding).

    ``spans[i] = (start, end)``: the statement's query token positions in sequence ``i`` (SNLI:
    the tokens after the last "So"; GoT: after "Is" and before "Answer"). The model must return
    attention weights (load it with ``attn_implementation="eager"``). Returns a float tensor
    ``[n, layers * heads]`` (layer-major) or ``[n, len(heads)]`` in the order of ``heads``.
    """
    import torch

    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in (None, "eager"):
        raise GARConfigError(f"attention features need attn_implementation='eager' (model uses {impl!r})")
    device = next(model.parameters()).device
    rows = []
    with torch.no_grad():
        for ids, (start, end) in zip(input_ids, spans, strict=True):
            if not 0 <= start < end <= len(ids):
                raise GARConfigError(f"span {(start, end)} outside a sequence of {len(ids)} tokens")
            out = model(torch.tensor([list(ids)], device=device), output_attentions=True)
            attn = torch.stack([a[0] for a in out.attentions]).float()  # [L, H, T, T]
            feat = attention_feature(attn, start, end)
            rows.append(feat.flatten() if heads is None else torch.stack([feat[l, h] for l, h in heads]))
    return torch.stack(rows).cpu()


def snli_span(tokenizer: Any, text: str, marker: str = " So") -> tuple[list[int], tuple[int, int]]:
    """Token ids of ``text`` and the span of tokens after the last ``marker`` (SNLI query)."""
    cut = text.rfind(marker)
    if cut < 0:
        raise GARConfigError(f"no {marker!r} in {text!r}")
    head = tokenizer(text[:cut + len(marker)])["input_ids"]
    ids = tokenizer(text)["input_ids"]
    return ids, (len(head), len(ids))


def got_span(tokenizer: Any, text: str, begin: str = " Is", stop: str = " Answer") -> tuple[list[int], tuple[int, int]]:
    """Token ids of ``text`` and the span of tokens after the last ``begin`` and before the last
    ``stop`` (Geometry-of-Truth query: ``... Is it true that <statement>? Answer: ...``)."""
    lo, hi = text.rfind(begin), text.rfind(stop)
    if lo < 0 or hi < lo + len(begin):
        raise GARConfigError(f"no {begin!r} ... {stop!r} in {text!r}")
    ids = tokenizer(text)["input_ids"]
    start = len(tokenizer(text[:lo + len(begin)])["input_ids"])
    end = len(tokenizer(text[:hi])["input_ids"])
    return ids, (start, end)


__all__ = ["FALSE_HEADS", "PAPER_HEADS", "ProbeResult", "TRUE_HEADS", "attention_feature", "evaluate_got",
           "evaluate_snli", "got_span", "head_features", "kfold_indices", "load_feature_csv", "snli_span", "train_probe"]
