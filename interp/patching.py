"""Attribution patching (AtP) and exact activation patching of attention heads, through nnsight.

Both score a head by how much of the pair metric ``m = logit(clean_target) - logit(corrupt_target)``
(at the answer position, see :mod:`interp.pairs`) moves when the head's output on the clean
prompt is replaced by its output on the corrupted prompt:

* **AtP** (Nanda 2023; Kramar et al. 2024) estimates it to first order for every head at once:
  ``(a_corrupt - a_clean) . dm/da_clean``, summed over the head's ``head_dim`` columns of the
  output projection's input and over positions, averaged over pairs. Per batch, one nnsight
  session (one request on NDIF): a graph-free forward of the corrupted rows, then a forward and
  backward of the clean rows, parameters frozen, gradients only w.r.t. the head outputs (made
  to require grad inside the trace). The metric is summed over the clean rows, so each row's
  gradient is its own pair's.
* **Exact patching** measures it for chosen heads: the clean prompt is run again with one head's
  output slice taken from the corrupted run, at every position. One forward holds the clean
  rows, the corrupted rows and one copy of the clean rows per patched head.

AtP* (Kramar et al. 2024) has two fixes. **GradDrop** is here (:func:`graddrop_batch`,
``attribution_scores(..., grad_drop=True)``, ``gar patch --grad-drop``): plain AtP can miss a
head whose direct and indirect effects cancel in the gradient; GradDrop re-runs the backward
once per layer ``l`` with the gradient through layer ``l``'s residual-stream contribution cut, and
scores ``1/(L-1) * sum_l |AtP_l|`` (a magnitude; for a head in layer ``l`` the ``l`` term is 0,
hence ``L-1``). It costs ``L`` forward+backward passes of the clean rows per batch. The **QK
fix** does not apply to the nodes scored here: it makes the effect of patching a head's
*queries or keys* exact through that head's softmax, while our nodes are head *outputs*, which
sit after their own softmax (scoring query/key nodes is not implemented).

All traced code is plain torch on captured tensors, ints and nnsight envoys (never a function of
this package: the NDIF server has no copy of it, and ``remote="local"`` checks that), so ``remote=True``
(NDIF) and ``remote="local"`` (nnsight's offline simulation of it) run the same block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from gar_tasks.errors import GARConfigError

from .core.loader import request_device
from .core.model import Remote, as_nnsight, check_remote, forward_kwargs, frozen, is_nnsight
from .core.sites import HeadSites, head_sites
from .pairs import PairBatch, Pairs

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

Head = tuple[int, int]
Progress = Callable[[int, int], Any]


def _inputs(batch: PairBatch, copies: int, extra: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """Model inputs: the clean rows, the corrupted rows, then ``copies`` more clean rows."""
    import torch

    ids = torch.cat([batch.clean_ids, batch.corrupt_ids] + [batch.clean_ids] * copies)
    reps = 2 + copies
    d = {"input_ids": ids, "attention_mask": batch.attention_mask.repeat(reps, 1),
         "position_ids": batch.position_ids.repeat(reps, 1)}
    return {**({k: v.to(device) for k, v in d.items()} if device is not None else d), **extra}


def _split_inputs(model: Any, batch: PairBatch, device: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model inputs of the corrupted rows and of the clean rows (two passes of one session)."""
    extra = forward_kwargs(model)
    mask, pos, corrupt, clean = batch.attention_mask, batch.position_ids, batch.corrupt_ids, batch.clean_ids
    if device is not None:
        mask, pos, corrupt, clean = (t.to(device) for t in (mask, pos, corrupt, clean))
    return ({"input_ids": corrupt, "attention_mask": mask, "position_ids": pos, **extra},
            {"input_ids": clean, "attention_mask": mask, "position_ids": pos, **extra})


def _require_nnsight(model: Any, remote: Remote) -> HeadSites:
    check_remote(model, remote)
    if not is_nnsight(model):
        raise GARConfigError(f"expected an nnsight TransformersModel, got {type(model).__name__}: "
                             "wrap it with interp.core.model.as_nnsight(model, tokenizer)")
    return head_sites(model)


def _prepare(model: Any, pairs: Pairs, remote: Remote, tokenizer: Any) -> tuple[Any, HeadSites]:
    check_remote(model, remote)
    if not isinstance(pairs, Pairs):
        raise GARConfigError(f"pairs must be a Pairs object (interp.pairs.make_pairs), got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise GARConfigError(f"no pairs to patch (rejected: {pairs.rejected or 'none'})")
    sites = head_sites(model)
    return as_nnsight(model, tokenizer), sites


# ------------------------------------------------------------------------------------------
# attribution patching


def attribution_batch(model: Any, batch: PairBatch, *, roles: Sequence[str] | None = None,
                      remote: Remote = False) -> "np.ndarray":
    """AtP terms of one batch: ``[pairs, positions, layers, heads]`` (positions of the padded
    batch, ending at the answer position; padding contributes 0).

    With ``roles`` the terms are reduced where they are computed (on NDIF, what travels back no
    longer grows with the sequence length): ``[layers, heads, 1 + len(roles)]`` float64, index 0
    summed over every row and position, index ``1 + k`` over the tokens of role ``k``
    (:meth:`PairBatch.role_weights`).

    ``model`` must be an nnsight model (see :func:`interp.core.model.as_nnsight`); the lower-level
    building block of :func:`attribution_scores`, for callers that checkpoint per batch.
    """
    import nnsight
    import torch

    sites = _require_nnsight(model, remote)
    envoys = [model.get(sites.path(layer)) for layer in range(sites.n_layers)]
    n, width = batch.size, batch.width
    n_heads, head_dim = sites.n_heads, sites.head_dim
    clean_target, corrupt_target = batch.clean_target[:, None], batch.corrupt_target[:, None]
    real = batch.attention_mask.bool()[:, :, None]  # padding adds exactly 0, even were it NaN
    corrupt_in, clean_in = _split_inputs(model, batch, request_device(model, remote))
    weights = None if roles is None else batch.role_weights(roles)
    # One session (one request when remote): the corrupted rows in a forward that builds no graph
    # (nothing requires grad), then the clean rows forward + backward. Two passes rather than one
    # batch of both, so the backward runs over the clean rows only: ~1/3 less compute and half
    # the autograd memory. Values flow between the traces inside the session.
    with frozen(model), model.session(remote=remote):
        with model.trace(corrupt_in):
            corrupt = [envoy.input.detach() for envoy in envoys]
        with model.trace(clean_in):
            # inline, not a helper: traced code may call only torch (NDIF has no copy of this package)
            acts = []
            for envoy in envoys:
                x = envoy.input
                if not x.requires_grad:  # the first head site: nothing upstream requires grad
                    x.requires_grad_(True)
                acts.append(x)
            logits = model.output.logits[:, -1, :]
            device = logits.device  # the model's (here, or on the NDIF server)
            metric = (logits.gather(1, clean_target.to(device)) - logits.gather(1, corrupt_target.to(device))).sum()
            with metric.backward():
                terms = []
                for layer in reversed(range(len(acts))):  # gradients arrive in reverse forward order
                    x = acts[layer]
                    delta = (corrupt[layer].to(x.device) - x).detach()
                    term = (delta * x.grad).reshape(n, width, n_heads, head_dim).sum(-1).to(device)
                    terms.append(torch.where(real.to(device), term, torch.zeros_like(term)))
                terms.reverse()
                stacked = torch.stack(terms, 2).detach()
                if weights is None:
                    out = nnsight.save(stacked.float().cpu())
                else:
                    t = stacked.double()
                    by_role = torch.einsum("btlh,btr->lhr", t, weights.to(t.device))
                    out = nnsight.save(torch.cat([t.sum((0, 1))[..., None], by_role], -1).cpu())
    return out.numpy()


def graddrop_batch(model: Any, batch: PairBatch, *, remote: Remote = False) -> "np.ndarray":
    """AtP* GradDrop magnitudes of one batch: ``[pairs, layers, heads]``, each
    ``1/(L-1) * sum_l |AtP of the head with the backward through block l's residual
    contribution cut|`` (per pair, positions summed before the absolute value).

    One nnsight session: a graph-free forward of the corrupted rows, then ``L`` forward+backward
    passes of the clean rows; in pass ``l`` block ``l``'s output becomes
    ``out.detach() + (x - x.detach())`` (same value; the gradient reaches the block's input only
    through the residual skip, not through its attention and MLP).
    """
    import nnsight
    import torch

    sites = _require_nnsight(model, remote)
    L = sites.n_layers
    if L < 2:
        raise GARConfigError("GradDrop needs a model with at least two layers")
    envoys = [model.get(sites.path(layer)) for layer in range(L)]
    blocks = [model.get(sites.block_path(layer)) for layer in range(L)]
    n, width = batch.size, batch.width
    n_heads, head_dim = sites.n_heads, sites.head_dim
    clean_target, corrupt_target = batch.clean_target[:, None], batch.corrupt_target[:, None]
    real = batch.attention_mask.bool()[:, :, None, None]
    corrupt_in, clean_in = _split_inputs(model, batch, request_device(model, remote))
    with frozen(model), model.session(remote=remote):
        with model.trace(corrupt_in):
            corrupt = [envoy.input.detach() for envoy in envoys]
        total = None
        for drop in range(L):
            with model.trace(clean_in):
                acts = []
                for layer in range(L):  # in forward order: block input, head site, block output
                    if layer == drop:
                        block_in = blocks[layer].input
                    x = envoys[layer].input
                    if not x.requires_grad:
                        x.requires_grad_(True)
                    acts.append(x)
                    if layer == drop:
                        out = blocks[layer].output
                        hidden = out[0] if isinstance(out, tuple) else out
                        cut = hidden.detach() + (block_in - block_in.detach())
                        blocks[layer].output = (cut, *out[1:]) if isinstance(out, tuple) else cut
                logits = model.output.logits[:, -1, :]
                device = logits.device
                metric = (logits.gather(1, clean_target.to(device))
                          - logits.gather(1, corrupt_target.to(device))).sum()
                with metric.backward():
                    terms = []
                    for layer in reversed(range(L)):
                        x = acts[layer]
                        if layer == drop:  # its block's output is cut: no gradient ever arrives
                            terms.append(torch.zeros(n, width, n_heads, device=device, dtype=x.dtype))
                            continue
                        grad = x.grad
                        delta = (corrupt[layer].to(x.device) - x).detach()
                        term = (delta * grad).reshape(n, width, n_heads, head_dim).sum(-1).to(device)
                        terms.append(torch.where(real[:, :, :, 0].to(device), term, torch.zeros_like(term)))
                    terms.reverse()
                    per_pair = torch.stack(terms, 1).sum(2).abs().detach().float()  # [B, L, H]
                    total = per_pair if total is None else total + per_pair
        out_total = nnsight.save((total / (L - 1)).cpu())
    return out_total.numpy()


def attribution_scores(model: Any, pairs: Pairs, batch_size: int = 8, *, per_position: bool = False,
                       roles: Sequence[str] | None = None, n_positions: int | None = None,
                       remote: Remote = False, progress: Progress | None = None,
                       tokenizer: Any = None, grad_drop: bool = False) -> "np.ndarray":
    """AtP score of every head, averaged over pairs: ``[layers, heads]``.

    * ``grad_drop=True``: the AtP* GradDrop magnitude instead (see :func:`graddrop_batch`;
      non-negative, ``L`` times the cost), ``[layers, heads]`` only.

    * ``per_position=True``: ``[layers, heads, positions]`` with ``positions = pairs.max_length``,
      aligned on the answer position (index ``-1``; ``-2`` the token before it, ...); a pair
      shorter than the longest adds 0 at positions it does not have. Summing the last axis gives
      the ``[layers, heads]`` scores. ``n_positions`` widens the axis (default
      ``pairs.max_length``), so runs over chunks of pairs (checkpoints) give arrays that add up.
    * ``roles=("Q", "END", ...)``: ``[layers, heads, len(roles)]``, each the sum over the tokens
      of that role of the test row (record spans mapped to tokens); a pair lacking a role
      (``R`` outside negated tasks) adds 0.

    ``model``: an nnsight model, or an HF model plus ``tokenizer``. ``progress(done, total)``
    is called after each batch with counts of pairs.
    """
    import numpy as np

    if per_position and roles:
        raise GARConfigError("per_position and roles are exclusive: choose one reduction over positions")
    if grad_drop and (per_position or roles):
        raise GARConfigError("grad_drop gives one magnitude per head and pair: it takes no per_position or roles")
    nn_model, sites = _prepare(model, pairs, remote, tokenizer)
    roles = list(roles or [])
    positions = pairs.max_length if n_positions is None else int(n_positions)
    if per_position and positions < pairs.max_length:
        raise GARConfigError(f"n_positions={positions} is shorter than the longest pair ({pairs.max_length})")
    shape = sites.shape + ((positions,) if per_position else (len(roles),) if roles else ())
    total = np.zeros(shape, dtype=np.float64)
    done = 0
    for idx in pairs.batch_indices(batch_size):
        batch = pairs.batch(idx)
        if grad_drop:
            total += graddrop_batch(nn_model, batch, remote=remote).sum(0)
            done += batch.size
            if progress is not None:
                progress(done, len(pairs))
            continue
        if per_position:
            terms = attribution_batch(nn_model, batch, remote=remote)  # [B, T, L, H]
            total[..., positions - batch.width:] += terms.sum(0).transpose(1, 2, 0)
        else:
            reduced = attribution_batch(nn_model, batch, roles=roles, remote=remote)  # [L, H, 1 + R]
            total += reduced[..., 1:] if roles else reduced[..., 0]
        done += batch.size
        if progress is not None:
            progress(done, len(pairs))
    return total / len(pairs)


# ------------------------------------------------------------------------------------------
# exact activation patching


def exact_patch_batch(model: Any, batch: PairBatch, heads: Sequence[Head], *,
                      remote: Remote = False) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """One forward patching each of ``heads`` in its own copy of the clean rows.

    Returns ``(patched - clean metric [len(heads), pairs], clean metric [pairs],
    corrupted metric [pairs])``. ``model`` must be an nnsight model.
    """
    import nnsight

    sites = _require_nnsight(model, remote)
    heads = [(int(layer), int(head)) for layer, head in heads]
    n, reps = batch.size, 2 + len(heads)
    by_layer: dict[int, list[tuple[int, int, int]]] = {}
    for k, (layer, head) in enumerate(heads):
        cols = sites.columns(head)
        sites.path(layer)  # range check
        by_layer.setdefault(layer, []).append(((2 + k) * n, cols.start, cols.stop))
    layers = sorted(by_layer)
    envoys = [model.get(sites.path(layer)) for layer in layers]
    patches = [by_layer[layer] for layer in layers]
    clean_target = batch.clean_target.repeat(reps)[:, None]
    corrupt_target = batch.corrupt_target.repeat(reps)[:, None]
    inputs = _inputs(batch, len(heads), forward_kwargs(model), request_device(model, remote))
    with frozen(model), model.trace(inputs, remote=remote):
        for envoy, layer_patches in zip(envoys, patches):  # forward order
            x = envoy.input.clone()
            for row, start, stop in layer_patches:
                x[row:row + n, :, start:stop] = x[n:2 * n, :, start:stop]
            envoy.input = x
        logits = model.output.logits[:, -1, :]
        device = logits.device
        metric = nnsight.save((logits.gather(1, clean_target.to(device))
                               - logits.gather(1, corrupt_target.to(device)))[:, 0].detach().float().cpu())
    values = metric.numpy().reshape(reps, n)
    return values[2:] - values[0], values[0], values[1]


@dataclass(frozen=True)
class ExactResult:
    """Exact patching of some heads: ``scores`` is ``[layers, heads]`` with NaN where unchecked.

    ``clean_metric``/``corrupt_metric`` are the pair metric on the unpatched prompts, averaged
    over pairs (useful to normalise: patching every head would move ``clean`` toward ``corrupt``).
    """

    scores: "np.ndarray"
    heads: tuple[Head, ...]
    clean_metric: float
    corrupt_metric: float


def exact_patch_scores(model: Any, pairs: Pairs, heads: Sequence[Head], batch_size: int = 8, *,
                       heads_per_forward: int = 8, remote: Remote = False,
                       progress: Progress | None = None, tokenizer: Any = None) -> ExactResult:
    """Mean metric change when each of ``heads`` is patched from the corrupted run (all
    positions), as a ``[layers, heads]`` array with NaN for heads not in ``heads``.

    ``heads_per_forward`` heads share a forward (``batch_size * (2 + heads_per_forward)`` rows).
    ``progress(done, total)`` counts (pair, head) evaluations.
    """
    import numpy as np

    nn_model, sites = _prepare(model, pairs, remote, tokenizer)
    heads = list(dict.fromkeys((int(layer), int(head)) for layer, head in heads))
    if not heads:
        raise GARConfigError("no heads to patch")
    for layer, head in heads:
        sites.path(layer), sites.columns(head)  # clear range errors before any work
    if heads_per_forward < 1:
        raise GARConfigError(f"heads_per_forward must be at least 1, got {heads_per_forward}")
    sums = np.zeros(len(heads))
    clean = corrupt = 0.0
    done, total = 0, len(pairs) * len(heads)
    for idx in pairs.batch_indices(batch_size):
        batch = pairs.batch(idx)
        for start in range(0, len(heads), heads_per_forward):
            chunk = heads[start:start + heads_per_forward]
            delta, c, x = exact_patch_batch(nn_model, batch, chunk, remote=remote)
            sums[start:start + len(chunk)] += delta.sum(1)
            done += batch.size * len(chunk)
            if progress is not None:
                progress(done, total)
        clean += float(c.sum())
        corrupt += float(x.sum())
    scores = np.full(sites.shape, np.nan)
    for (layer, head), s in zip(heads, sums):
        scores[layer, head] = s / len(pairs)
    return ExactResult(scores=scores, heads=tuple(heads), clean_metric=clean / len(pairs),
                       corrupt_metric=corrupt / len(pairs))


def select_heads(atp: "np.ndarray", k: int = 10, n_random: int | None = None, seed: int = 0) -> list[Head]:
    """Heads to check exactly: the top ``k`` by ``|AtP|`` plus ``n_random`` (default ``k``)
    others drawn uniformly with ``seed`` (so the check is not only on heads AtP likes)."""
    import numpy as np

    scores = np.asarray(atp, dtype=float)
    if scores.ndim != 2:
        raise GARConfigError(f"atp must be [layers, heads], got shape {scores.shape}")
    flat = np.argsort(-np.abs(scores), axis=None, kind="stable")
    top = [tuple(int(v) for v in np.unravel_index(i, scores.shape)) for i in flat[:k]]
    rest = [tuple(int(v) for v in np.unravel_index(i, scores.shape)) for i in flat[k:]]
    n_random = k if n_random is None else n_random
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(rest), size=min(n_random, len(rest)), replace=False) if rest else []
    return top + [rest[i] for i in sorted(int(i) for i in picked)]


# ------------------------------------------------------------------------------------------
# agreement


@dataclass(frozen=True)
class Agreement:
    """How well AtP ranks the heads exact patching checked."""

    n: int  # heads compared
    pearson: float
    spearman: float
    topk_overlap: float  # |top-k by |AtP|  &  top-k by |exact||  /  k, among the checked heads
    k: int


def ranks(x: "np.ndarray") -> "np.ndarray":
    """Ranks with ties averaged (what Spearman's rho needs)."""
    import numpy as np

    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def pearson(a: "np.ndarray", b: "np.ndarray") -> float:
    import numpy as np

    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def agreement(atp: "np.ndarray", exact: "np.ndarray | ExactResult", k: int = 10) -> Agreement:
    """Pearson and Spearman correlation of AtP and exact scores over the heads exact patching
    checked (non-NaN entries of ``exact``), and the overlap of their top-``k`` by magnitude."""
    import numpy as np

    exact_scores = exact.scores if isinstance(exact, ExactResult) else np.asarray(exact, dtype=float)
    atp = np.asarray(atp, dtype=float)
    if atp.shape != exact_scores.shape:
        raise GARConfigError(f"atp {atp.shape} and exact {exact_scores.shape} scores differ in shape")
    checked = ~np.isnan(exact_scores)
    a, e = atp[checked], exact_scores[checked]
    if len(a) < 2:
        raise GARConfigError("agreement needs at least two checked heads")
    k = min(k, len(a))
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    top_e = set(np.argsort(-np.abs(e), kind="stable")[:k].tolist())
    return Agreement(n=len(a), pearson=pearson(a, e), spearman=pearson(ranks(a), ranks(e)),
                     topk_overlap=len(top_a & top_e) / k if k else float("nan"), k=k)


__all__ = ["Agreement", "ExactResult", "agreement", "attribution_batch", "attribution_scores", "pearson", "ranks",
           "exact_patch_batch", "exact_patch_scores", "graddrop_batch", "select_heads"]
