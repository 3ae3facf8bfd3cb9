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

Features of our own models: :func:`head_features` (the seed's attention feature, one unpadded
forward per sequence: the reference) and :func:`batched_head_features` (the same feature for every
head, batched, plus our projection feature: a head's output at the last token projected on its
unit True-minus-False direction). ``gar probe`` (:mod:`interp.probe_run`) runs both.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from gar_tasks.errors import GARConfigError

from .core.encode import left_pad, length_batches
from .core.loader import input_device
from .core.sites import head_sites

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
    data = {s: load_feature_csv(snli_csv(directory, s), heads)[:2] for s in SNLI_SPLITS}
    return evaluate_split(data["train"], data["validation"], data["test"], runs=runs, seed=seed, **train_kw)


def evaluate_split(train: tuple[Any, Any], validation: tuple[Any, Any], test: tuple[Any, Any], *, runs: int = 5,
                   seed: int = 0, **train_kw: Any) -> ProbeResult:
    """The SNLI protocol on ``(X, y)`` arrays of a given split: ``runs`` runs seeded ``seed + run``,
    each tested at its best validation epoch."""
    import torch

    Xte, yte = torch.as_tensor(test[0], dtype=torch.float32), torch.as_tensor(test[1], dtype=torch.long)
    accs = []
    for run in range(runs):
        model, _ = train_probe(*train, *validation, seed=seed + run, **train_kw)
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
    X, y, _ = load_feature_csv(path, heads)
    return evaluate_cv(X, y, folds=folds, seed=seed, val_fraction=val_fraction, **train_kw)


def evaluate_cv(X: Any, y: Any, *, folds: int = 5, seed: int = 42, val_fraction: float = 0.25,
                **train_kw: Any) -> ProbeResult:
    """The Geometry-of-Truth protocol on ``(X, y)`` arrays: shuffled ``folds``-fold CV, each
    training fold split ``1 - val_fraction`` / ``val_fraction`` train/validation."""
    import numpy as np
    import torch

    X, y = np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64)
    if len(y) < folds:
        raise GARConfigError(f"{folds}-fold cross-validation needs at least {folds} items, got {len(y)}")
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
    device = input_device(model)
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


def unit_directions(directions: Any) -> Any:
    """``directions`` ``[layers, heads, head_dim]`` scaled to unit length per head (float32 tensor);
    a zero direction stays zero (its projection feature is then 0)."""
    import torch

    d = torch.as_tensor(directions, dtype=torch.float32)
    if d.ndim != 3:
        raise GARConfigError(f"directions must be [layers, heads, head_dim], got shape {tuple(d.shape)}")
    norm = d.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, d / norm.clamp_min(1e-30), torch.zeros_like(d))


def checked_feature_args(sites: Any, input_ids: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]],
                         directions: Any) -> Any:
    """Refuse spans outside their sequences or directions of another head shape; the unit directions
    (None without directions)."""
    unit = None if directions is None else unit_directions(directions)
    want = (sites.n_layers, sites.n_heads, sites.head_dim)
    if unit is not None and tuple(unit.shape) != want:
        raise GARConfigError(f"directions have shape {tuple(unit.shape)}, the model's heads are {want} "
                             "(layers, heads, head_dim)")
    if len(spans) != len(input_ids):
        raise GARConfigError(f"{len(input_ids)} sequences but {len(spans)} spans")
    for ids, (start, end) in zip(input_ids, spans):
        if not 0 <= start < end <= len(ids):
            raise GARConfigError(f"span {(start, end)} outside a sequence of {len(ids)} tokens")
    return unit


def batched_head_features(model: Any, input_ids: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]],
                          directions: Any = None, *, batch_size: int = 32,
                          progress: Any = None) -> dict[str, Any]:
    """Both per-head features of every head, from length-sorted, left-padded batched forwards.

    * ``"attn"`` ``[n, layers, heads]``: the seed's attention feature (:func:`attention_feature`)
      over the query span ``spans[i]`` (positions in the unpadded sequence); "first token" is the
      sequence's own first token, not a pad.
    * ``"proj"`` ``[n, layers, heads]`` (only with ``directions`` ``[layers, heads, head_dim]``): the
      head's output (its columns of the head-site input, :mod:`interp.core.sites`) at the sequence's
      last token, dotted with the head's unit direction (:func:`unit_directions`).

    Left padding puts every sequence's last token in the last column; explicit ``position_ids``
    count from each row's first real token, so a row sees what it would see unpadded (up to
    rounding). Sorting by length keeps padding small. The model's base (no LM head) is run, with
    ``output_attentions``: it must use eager attention. ``progress(done, total)`` after each batch.
    """
    import numpy as np
    import torch

    inner = getattr(model, "_module", model)
    impl = getattr(inner.config, "_attn_implementation", None)
    if impl not in (None, "eager"):
        raise GARConfigError(f"attention features need attn_implementation='eager' (model uses {impl!r})")
    sites = head_sites(inner)
    n_layers, n_heads, d = sites.n_layers, sites.n_heads, sites.head_dim
    unit = checked_feature_args(sites, input_ids, spans, directions)
    n = len(input_ids)
    attn_out = np.zeros((n, n_layers, n_heads), dtype=np.float32)
    proj_out = np.zeros((n, n_layers, n_heads), dtype=np.float32) if unit is not None else None
    device = input_device(inner)
    base = inner.base_model
    last: dict[int, Any] = {}

    def make_hook(layer: int):
        def hook(module, args):
            last[layer] = args[0][:, -1, :].detach().float().cpu()
        return hook

    handles = []
    if unit is not None:
        for layer in range(n_layers):
            handles.append(inner.get_submodule(sites.path(layer)).register_forward_pre_hook(make_hook(layer)))
    batches = length_batches([len(x) for x in input_ids], max(1, batch_size))
    try:
        with torch.no_grad():
            for done, idx in enumerate(batches, 1):
                padded = left_pad([input_ids[i] for i in idx], 0)  # the pad id is masked: any will do
                out = base(**padded.inputs(device), output_attentions=True, use_cache=False)
                for r, (i, p) in enumerate(zip(idx, padded.pads)):
                    attn = torch.stack([a[r, :, p:, p:] for a in out.attentions]).float()  # [L, H, T, T]
                    attn_out[i] = attention_feature(attn, *spans[i]).cpu().numpy()
                if unit is not None:
                    heads_out = torch.stack([last[layer] for layer in range(n_layers)], 1)  # [B, L, H*d]
                    heads_out = heads_out.view(len(idx), n_layers, n_heads, d)
                    proj = torch.einsum("blhd,lhd->blh", heads_out, unit).numpy()
                    proj_out[idx] = proj
                last.clear()
                del out
                if progress is not None:
                    progress(done, len(batches))
    finally:
        for h in handles:
            h.remove()
    out_d = {"attn": attn_out}
    if proj_out is not None:
        out_d["proj"] = proj_out
    return out_d


def attention_call(model: Any, layer_path: str) -> str:
    """The name, in nnsight's ``.source`` of an attention module, of its ``attention_interface(...)``
    call: transformers' one seam where every modern architecture hands over q, k (after rotary and
    q/k norms), v, the mask and its scaling."""
    names = [n for n in model.get(layer_path).source.names if n.startswith("attention_interface_")]
    if not names:
        raise GARConfigError(f"{layer_path} calls no transformers attention interface: its attention weights "
                             "cannot be read in a remote trace")
    return names[-1]


def traced_head_features(model: Any, input_ids: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]],
                         directions: Any = None, *, batch_size: int = 32, remote: Any = False,
                         progress: Any = None) -> dict[str, Any]:
    """:func:`batched_head_features` through nnsight traces, for a model that runs elsewhere (NDIF),
    where no attention weights are returned: each layer's pattern is recomputed inside the trace
    from the q and k its attention interface receives (``softmax(q k^T * scaling + mask)`` in
    float32, as eager attention does), and only the ``[rows, layers, heads]`` features travel.
    Same batches and padding as :func:`batched_head_features`; one request per batch."""
    import nnsight
    import numpy as np
    import torch

    from .core.model import frozen

    sites = head_sites(model)
    n_layers, n_heads, d = sites.n_layers, sites.n_heads, sites.head_dim
    unit = checked_feature_args(sites, input_ids, spans, directions)
    n = len(input_ids)
    attn_paths = [sites.path(layer).rsplit(".", 1)[0] for layer in range(n_layers)]
    call = attention_call(model, attn_paths[0])
    site_paths = [sites.path(layer) for layer in range(n_layers)]
    attn_out = np.zeros((n, n_layers, n_heads), dtype=np.float32)
    proj_out = np.zeros((n, n_layers, n_heads), dtype=np.float32) if unit is not None else None
    batches = length_batches([len(x) for x in input_ids], max(1, batch_size))
    for done, idx in enumerate(batches, 1):
        padded = left_pad([input_ids[i] for i in idx], 0)
        T = padded.width
        pads = torch.tensor(padded.pads)
        pos = torch.arange(T)
        # query rows inside each sequence's span; keys after its first real token
        lo = torch.tensor([spans[i][0] for i in idx]) + pads
        hi = torch.tensor([spans[i][1] for i in idx]) + pads
        in_span = (pos[None] >= lo[:, None]) & (pos[None] < hi[:, None])  # [B, T(i)]
        later = pos[None] > pads[:, None]  # [B, T(j)]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        with frozen(model), model.trace(padded.inputs(), remote=remote):
            feats, projs = [], []
            for layer in range(n_layers):
                args, kwargs = getattr(model.get(attn_paths[layer]).source, call).inputs
                q, k, mask = args[1].detach(), args[2].detach(), args[4]
                k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
                sc = torch.matmul(q, k.transpose(2, 3)) * kwargs.get("scaling", q.shape[-1] ** -0.5)
                cap = kwargs.get("softcap")
                if cap:
                    sc = torch.tanh(sc / cap) * cap
                if mask is None:
                    mask = causal.to(sc.device)[None, None]
                mask = mask[..., :k.shape[-2]]
                if mask.dtype == torch.bool:
                    sc = sc.masked_fill(~mask, torch.finfo(sc.dtype).min)
                else:
                    sc = sc + mask.to(sc.dtype)
                probs = torch.softmax(sc, -1, dtype=torch.float32)  # [B, H, T, T]
                dev = probs.device
                first = probs.gather(3, pads.to(dev)[:, None, None, None].expand(-1, n_heads, T, 1))[..., 0]
                rest = probs.masked_fill(~later.to(dev)[:, None, None, :], float("-inf")).amax(-1)
                f = (rest - first).masked_fill(~in_span.to(dev)[:, None, :], float("-inf")).amax(-1)  # [B, H]
                feats.append(f.cpu())
                if unit is not None:
                    z = model.get(site_paths[layer]).input[:, -1].detach().float().reshape(len(idx), n_heads, d)
                    projs.append(torch.einsum("bhd,hd->bh", z, unit[layer].to(z.device)).cpu())
            got = nnsight.save((torch.stack(feats, 1), torch.stack(projs, 1) if projs else None))
        attn_out[idx] = got[0].numpy()
        if proj_out is not None:
            proj_out[idx] = got[1].numpy()
        if progress is not None:
            progress(done, len(batches))
    return {"attn": attn_out, **({"proj": proj_out} if proj_out is not None else {})}


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


__all__ = ["FALSE_HEADS", "PAPER_HEADS", "ProbeResult", "TRUE_HEADS", "attention_call", "attention_feature",
           "batched_head_features", "checked_feature_args", "evaluate_cv", "evaluate_got", "evaluate_snli",
           "evaluate_split", "got_span", "head_features", "kfold_indices", "load_feature_csv", "snli_span",
           "traced_head_features", "train_probe", "unit_directions"]
