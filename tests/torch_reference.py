"""The slow plain-torch references of the interp tests, in one place.

Each runs one sequence at a time, unpadded, without nnsight: forward pre-hooks on the head-site
modules (:mod:`interp.core.sites`) read or overwrite the head outputs, and ``torch.autograd.grad`` takes
gradients. The fast, batched, nnsight (or hooked) code of :mod:`interp` is tested allclose against
them on tiny random models (``tiny_models``).
"""

from __future__ import annotations

import contextlib

import numpy as np

from interp.core.sites import head_sites


def captures(model, sites):
    """The head-site inputs of every layer, recorded by pre-hooks (remove the handles after)."""
    caps: dict[int, object] = {}
    handles = [model.get_submodule(sites.path(i)).register_forward_pre_hook(
        lambda m, args, i=i: caps.__setitem__(i, args[0])) for i in range(sites.n_layers)]
    return caps, handles


def pair_metric(model, ids, pair):
    """logit(clean target) - logit(corrupt target) at the last position of one unpadded sequence."""
    import torch

    logits = model(torch.tensor([ids])).logits[0, -1]
    return logits[pair.clean_target] - logits[pair.corrupt_target]


@contextlib.contextmanager
def capture(model):
    """Record the input each head-site module receives (after any intervention hooks already
    installed, as forward pre-hooks run in registration order)."""
    sites = head_sites(model)
    seen, handles = {}, []
    for layer in range(sites.n_layers):
        def hook(module, args, layer=layer):
            seen[layer] = args[0].detach().clone()
        handles.append(model.get_submodule(sites.path(layer)).register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def reference_atp(model, pairs):
    """Per pair: AtP terms ``[layers, heads, positions]`` (unpadded positions)."""
    import torch

    sites = head_sites(model)
    model.requires_grad_(True)  # an ordinary graph, grads w.r.t. intermediate tensors
    out = []
    caps, handles = captures(model, sites)
    try:
        for p in pairs:
            with torch.no_grad():
                model(torch.tensor([p.corrupt_ids]))
            corrupt = {i: caps[i].detach().clone() for i in caps}
            metric = pair_metric(model, p.clean_ids, p)
            clean = [caps[i] for i in range(sites.n_layers)]
            grads = torch.autograd.grad(metric, clean)
            terms = torch.stack([((corrupt[i] - clean[i]) * grads[i])[0].detach()
                                 .reshape(p.length, sites.n_heads, sites.head_dim).sum(-1).T
                                 for i in range(sites.n_layers)])
            out.append(terms.numpy().astype(np.float64))
    finally:
        for h in handles:
            h.remove()
        model.requires_grad_(False)
    return out


def reference_exact(model, pairs, heads):
    """Mean over pairs of metric(clean with head's slice from corrupt) - metric(clean)."""
    import torch

    sites = head_sites(model)
    scores = []
    with torch.no_grad():
        for layer, head in heads:
            cols = sites.columns(head)
            total = 0.0
            for p in pairs:
                caps, handles = captures(model, sites)
                model(torch.tensor([p.corrupt_ids]))
                source = caps[layer].clone()
                for h in handles:
                    h.remove()

                def patch(m, args):
                    x = args[0].clone()
                    x[..., cols] = source[..., cols]
                    return (x,) + args[1:]

                handle = model.get_submodule(sites.path(layer)).register_forward_pre_hook(patch)
                try:
                    patched = pair_metric(model, p.clean_ids, p)
                finally:
                    handle.remove()
                total += float(patched - pair_metric(model, p.clean_ids, p))
            scores.append(total / len(pairs))
    return np.array(scores)


def reference_graddrop(model, pairs):
    """Per pair ``[layers, heads]``: ``1/(L-1) * sum_l |AtP with block l's residual contribution
    cut from the backward|``, with plain forward hooks and ``torch.autograd.grad``."""
    import torch

    sites = head_sites(model)
    L = sites.n_layers
    model.requires_grad_(True)
    caps, handles = captures(model, sites)
    out = []

    def cut(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.detach() + (x - x.detach())
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    try:
        for p in pairs:
            with torch.no_grad():
                model(torch.tensor([p.corrupt_ids]))
            corrupt = {i: caps[i].detach().clone() for i in caps}
            total = np.zeros(sites.shape)
            for drop in range(L):
                h = model.get_submodule(sites.block_path(drop)).register_forward_hook(cut, with_kwargs=True)
                try:
                    metric = pair_metric(model, p.clean_ids, p)
                finally:
                    h.remove()
                clean = [caps[i] for i in range(L)]
                grads = torch.autograd.grad(metric, clean, allow_unused=True)
                for i in range(L):
                    g = grads[i] if grads[i] is not None else torch.zeros_like(clean[i])
                    t = ((corrupt[i] - clean[i]) * g)[0].detach().reshape(p.length, sites.n_heads, sites.head_dim)
                    total[i] += np.abs(t.sum((0, 2)).numpy())
            out.append(total / (L - 1))
    finally:
        for h in handles:
            h.remove()
        model.requires_grad_(False)
    return out


def reference_effects(model, rs):
    """Two passes, one record at a time, unpadded, hooks + autograd: the mean head output over
    every token, then per record ``sum (a - mean) * dm/da`` per head; also the metric and the
    answer-position outputs."""
    import torch

    sites = head_sites(model)
    L, H, D = sites.n_layers, sites.n_heads, sites.head_dim
    caps: dict[int, object] = {}
    handles = [model.get_submodule(sites.path(i)).register_forward_pre_hook(
        lambda m, args, i=i: caps.__setitem__(i, args[0])) for i in range(L)]
    model.requires_grad_(True)  # an ordinary graph; grads w.r.t. the captured tensors only
    try:
        total, count = torch.zeros(L, H * D, dtype=torch.float64), 0
        with torch.no_grad():
            for ids in rs.ids:
                model(torch.tensor([ids]))
                total += torch.stack([caps[i][0].double().sum(0) for i in range(L)])
                count += len(ids)
        mean = (total / count).float()
        effects, metrics, last = [], [], []
        for ids, y, n in zip(rs.ids, rs.yes, rs.no):
            logits = model(torch.tensor([ids])).logits[0, -1]
            m = logits[y] - logits[n]
            acts = [caps[i] for i in range(L)]
            grads = torch.autograd.grad(m, acts)
            effects.append(torch.stack([((acts[i][0] - mean[i]) * grads[i][0]).detach()
                                        .reshape(len(ids), H, D).sum((0, 2)) for i in range(L)]).numpy())
            metrics.append(float(m.detach()))
            last.append(torch.stack([acts[i][0, -1].detach().reshape(H, D) for i in range(L)]).numpy())
    finally:
        for h in handles:
            h.remove()
        model.requires_grad_(False)
    return np.array(effects), mean.reshape(L, H, D).numpy(), np.array(metrics), np.array(last)


__all__ = ["capture", "captures", "pair_metric", "reference_atp", "reference_effects", "reference_exact",
           "reference_graddrop"]
