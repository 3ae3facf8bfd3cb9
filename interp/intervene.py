"""Head interventions: ablate, mean-replace, scale, or label-guided scaling of chosen heads.

Mechanism: plain torch ``forward_pre_hook``s on the head-site module of each targeted layer
(the ``o_proj`` / ``c_proj`` / ``dense`` of :mod:`interp.core.sites`), whose *input* holds head ``h`` in
columns ``h * head_dim : (h + 1) * head_dim``. The hook returns a modified copy of that input, so
only the targeted heads' slices change. Plain hooks rather than nnsight because the intervention
must persist across arbitrary forward calls made by code we do not control (lm-eval's HFLM
batching, ``generate``), on a plain Hugging Face model, with no tracing context and no wrapper
copy of the model; they cost nothing when removed.

A model that runs elsewhere (NDIF) cannot take hooks: there the same edits are written into nnsight
traces (:func:`head_edits` gives each targeted head's slice as ``x * a + b``, which reproduces
every mode exactly; :func:`traced_logits` runs several arms of one batch in one request).

Modes: ``ablate`` (zero), ``mean`` (replace by a mean activation, supplied or computed by
:func:`head_means` on reference prompts), ``scale`` (multiply by ``factor``) and ``label`` (the
paper's label-guided intervention: for rows whose gold answer is Yes the True heads are multiplied
by ``up`` and the False heads by ``down``; reversed for gold No).
"""

from __future__ import annotations

import contextlib
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from gar_tasks.errors import GARConfigError

from .core.loader import input_device
from .core.model import frozen
from .core.sites import head_sites

Head = tuple[int, int]
MODES = ("ablate", "mean", "scale", "label")
LABEL_FREE_MODES = ("ablate", "mean", "scale")
_HEAD = re.compile(r"^(\d+)[:.\-/](\d+)$")


def _module(model: Any, path: str) -> Any:
    return getattr(model, "_module", model).get_submodule(path)


def _by_layer(heads: Sequence[Head], sites: Any) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        sites.path(int(layer)), sites.columns(int(head))  # range checks
        out.setdefault(int(layer), [])
        if int(head) not in out[int(layer)]:
            out[int(layer)].append(int(head))
    return out


@dataclass
class Intervention:
    """Installed hooks (see :func:`install`); ``remove()`` takes them out again."""

    handles: list = field(default_factory=list)
    labels: Any = None  # label mode: bool tensor [batch] (True = gold Yes), set per batch

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def install(model: Any, heads: Sequence[Head] = (), mode: str = "ablate", *, factor: float = 0.0,
            means: Any = None, true_heads: Sequence[Head] = (), false_heads: Sequence[Head] = (),
            up: float = 2.0, down: float = 0.0, labels: Any = None) -> Intervention:
    """Install the intervention's hooks on ``model`` (HF or nnsight-wrapped) and return them.

    ``means``: ``[layers, heads, head_dim]`` tensor or ``{(layer, head): [head_dim]}`` (mode ``mean``).
    Label mode uses ``true_heads`` / ``false_heads`` (``heads`` is ignored) and ``labels`` (bool
    per batch row, settable later as ``intervention.labels``).
    """
    import torch

    if mode not in MODES:
        raise GARConfigError(f"unknown intervention mode {mode!r}; choose from {', '.join(MODES)}")
    sites = head_sites(model)
    d = sites.head_dim
    iv = Intervention(labels=labels)

    if mode == "label":
        groups = {"true": _by_layer(true_heads, sites), "false": _by_layer(false_heads, sites)}
        if not (groups["true"] or groups["false"]):
            raise GARConfigError("label mode needs true_heads and/or false_heads")
        layers = sorted(set(groups["true"]) | set(groups["false"]))
    else:
        per_layer = _by_layer(heads, sites)
        layers = sorted(per_layer)
        if mode == "mean":
            if means is None:
                raise GARConfigError("mode 'mean' needs means= (see head_means)")
            table = {}
            for layer in layers:
                for h in per_layer[layer]:
                    v = means[(layer, h)] if isinstance(means, dict) else means[layer, h]
                    table[(layer, h)] = torch.as_tensor(v).flatten()
                    if table[(layer, h)].numel() != d:
                        raise GARConfigError(f"mean for head {(layer, h)} has {table[(layer, h)].numel()} values, "
                                             f"head_dim is {d}")

    def make_hook(layer: int):
        def hook(module, args):
            x = args[0].clone()
            if mode == "label":
                if iv.labels is None:
                    raise GARConfigError("label mode: set labels (one bool per batch row) before the forward")
                yes = torch.as_tensor(iv.labels, dtype=torch.bool, device=x.device).view(-1, *([1] * (x.ndim - 1)))
                up_t = torch.tensor(float(up), dtype=x.dtype, device=x.device)
                down_t = torch.tensor(float(down), dtype=x.dtype, device=x.device)
                for kind, heads_here in groups.items():
                    f = torch.where(yes, up_t, down_t) if kind == "true" else torch.where(yes, down_t, up_t)
                    for h in heads_here.get(layer, []):
                        cols = sites.columns(h)
                        x[..., cols] = x[..., cols] * f
            else:
                for h in per_layer[layer]:
                    cols = sites.columns(h)
                    if mode == "ablate":
                        x[..., cols] = 0
                    elif mode == "scale":
                        x[..., cols] = x[..., cols] * factor
                    else:
                        x[..., cols] = table[(layer, h)].to(x.device, x.dtype)
            return (x, *args[1:])

        return hook

    try:
        for layer in layers:
            iv.handles.append(_module(model, sites.path(layer)).register_forward_pre_hook(make_hook(layer)))
    except Exception:
        iv.remove()
        raise
    return iv


@contextlib.contextmanager
def intervened(model: Any, heads: Sequence[Head] = (), mode: str = "ablate", **kwargs: Any) -> Iterator[Intervention]:
    """Context manager: :func:`install` on entry, hooks removed on exit (even on error)."""
    iv = install(model, heads, mode, **kwargs)
    try:
        yield iv
    finally:
        iv.remove()


def head_edits(sites: Any, heads: Sequence[Head] = (), mode: str = "ablate", *, factor: float = 0.0,
               means: Any = None, true_heads: Sequence[Head] = (), false_heads: Sequence[Head] = (),
               up: float = 2.0, down: float = 0.0, labels: Any = None) -> dict[int, list[tuple[int, int, Any, Any]]]:
    """The edits of :func:`install`'s hooks as data, per layer: ``(start, end, a, b)``, meaning the
    head-site input's columns ``start:end`` become ``x * a + b`` (ablate: a = b = 0; scale: a =
    factor; mean: a = 0, b = the mean; label: a = the row's factor, a ``[rows, 1, 1]`` tensor)."""
    import torch

    if mode not in MODES:
        raise GARConfigError(f"unknown intervention mode {mode!r}; choose from {', '.join(MODES)}")
    out: dict[int, list[tuple[int, int, Any, Any]]] = {}

    def add(layer: int, head: int, a: Any, b: Any) -> None:
        cols = sites.columns(head)
        out.setdefault(layer, []).append((cols.start, cols.stop, a, b))

    if mode == "label":
        if labels is None:
            raise GARConfigError("label mode: give labels (one bool per batch row)")
        yes = torch.as_tensor(labels, dtype=torch.bool).view(-1, 1, 1)
        f_true = torch.where(yes, torch.tensor(float(up)), torch.tensor(float(down)))
        f_false = torch.where(yes, torch.tensor(float(down)), torch.tensor(float(up)))
        for kind, group, f in (("true", true_heads, f_true), ("false", false_heads, f_false)):
            for layer, hs in _by_layer(group, sites).items():
                for h in hs:
                    add(layer, h, f, 0.0)
        return dict(sorted(out.items()))
    for layer, hs in _by_layer(heads, sites).items():
        for h in hs:
            if mode == "ablate":
                add(layer, h, 0.0, 0.0)
            elif mode == "scale":
                add(layer, h, float(factor), 0.0)
            else:
                if means is None:
                    raise GARConfigError("mode 'mean' needs means= (see head_means)")
                v = means[(layer, h)] if isinstance(means, dict) else means[layer, h]
                v = torch.as_tensor(v).flatten()
                if v.numel() != sites.head_dim:
                    raise GARConfigError(f"mean for head {(layer, h)} has {v.numel()} values, "
                                         f"head_dim is {sites.head_dim}")
                add(layer, h, 0.0, v)
    return dict(sorted(out.items()))


def traced_logits(model: Any, inputs: dict[str, Any], targets: Any, arms: Sequence[dict[int, list]],
                  remote: Any = False) -> list[Any]:
    """Last-position logits of ``targets`` (``[rows, k]`` token ids) for each arm's
    :func:`head_edits` (``{}``: no edit), all arms of one batch in one nnsight session (one request
    on NDIF). Returns one float32 CPU tensor ``[rows, k]`` per arm. The traced code is plain torch."""
    import nnsight
    import torch

    sites = head_sites(model)
    paths = {layer: sites.path(layer) for arm in arms for layer in arm}
    rows = torch.arange(targets.shape[0])[:, None]
    with frozen(model), model.session(remote=remote):
        got = []  # mutated, never rebound: names bound inside a trace do not reach the session on NDIF
        for arm in arms:
            with model.trace(inputs):
                for layer in sorted(arm):
                    site = model.get(paths[layer])
                    x = site.input.clone()
                    for start, end, a, b in arm[layer]:
                        a = a.to(x.device, x.dtype) if isinstance(a, torch.Tensor) else a
                        b = b.to(x.device, x.dtype) if isinstance(b, torch.Tensor) else b
                        x[..., start:end] = x[..., start:end] * a + b
                    site.input = x
                logits = model.output.logits[:, -1]
                got.append(logits[rows.to(logits.device), targets.to(logits.device)].detach().float().cpu())
        out = nnsight.save(got)
    return list(out)


def head_means(model: Any, input_ids: Sequence[Sequence[int]]) -> Any:
    """Mean head-site input over every token of the reference sequences: ``[layers, heads, head_dim]``.

    One forward per sequence (no padding, so pad tokens never enter the mean).
    """
    import torch

    sites = head_sites(model)
    sums = torch.zeros(sites.n_layers, sites.n_heads * sites.head_dim, dtype=torch.float64)
    count = 0
    handles = []

    def make_hook(layer: int):
        def hook(module, args):
            sums[layer] += args[0].detach().reshape(-1, args[0].shape[-1]).double().sum(0).cpu()
        return hook

    inner = getattr(model, "_module", model)
    device = input_device(inner)
    try:
        for layer in range(sites.n_layers):
            handles.append(_module(model, sites.path(layer)).register_forward_pre_hook(make_hook(layer)))
        with torch.no_grad():
            for ids in input_ids:
                inner(torch.tensor([list(ids)], device=device))
                count += len(ids)
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise GARConfigError("head_means needs at least one non-empty reference sequence")
    return (sums / count).float().view(sites.n_layers, sites.n_heads, sites.head_dim)


def traced_head_means(model: Any, input_ids: Sequence[Sequence[int]], remote: Any = False, chunk: int = 64) -> Any:
    """:func:`head_means` through nnsight traces (a remote model): the same unpadded forwards, ``chunk``
    sequences per session (one NDIF request), only per-layer sums travel back."""
    import nnsight
    import torch

    sites = head_sites(model)
    seqs = [list(x) for x in input_ids if len(x)]
    if not seqs:
        raise GARConfigError("head_means needs at least one non-empty reference sequence")
    paths = [sites.path(layer) for layer in range(sites.n_layers)]
    sums = torch.zeros(sites.n_layers, sites.n_heads * sites.head_dim, dtype=torch.float64)
    for lo in range(0, len(seqs), chunk):
        part = seqs[lo:lo + chunk]
        with frozen(model), model.session(remote=remote):
            got = []  # mutated, never rebound (see traced_logits)
            for ids in part:
                with model.trace(torch.tensor([ids])):
                    got.append(torch.stack([model.get(path).input.detach().reshape(-1, sites.n_heads * sites.head_dim)
                                            .double().sum(0).cpu() for path in paths]))
            out = nnsight.save(got)
        for t in out:
            sums += t
    count = sum(len(x) for x in seqs)
    return (sums / count).float().view(sites.n_layers, sites.n_heads, sites.head_dim)


def random_heads(n: int, exclude: Sequence[Head] = (), n_layers: int = 0, n_heads: int = 0,
                 seed: int = 0) -> list[Head]:
    """``n`` distinct heads drawn (seeded, reproducible) from all heads minus ``exclude``, sorted.

    The control for an intervention: same count, disjoint from the targets.
    """
    excluded = {(int(l), int(h)) for l, h in exclude}
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excluded]
    if n > len(pool):
        raise GARConfigError(f"cannot draw {n} control heads: only {len(pool)} heads outside the targets")
    return sorted(random.Random(seed).sample(pool, n))


def format_heads(heads: Sequence[Sequence[int]]) -> str:
    """``"14:0;15:3"``: the spec ``parse_heads`` reads back (and lm-eval's command line keeps)."""
    return ";".join(f"{int(l)}:{int(h)}" for l, h in heads)


def parse_heads(spec: Any) -> list[Head]:
    """Heads from ``"14:0;15:3"`` (also ``"14.0;15.3"``, ``"14-0"``; ``;`` or whitespace between heads).

    ``:`` is the safe form on lm-eval's command line: a single ``14.0`` is turned into the float
    14.0 by lm-eval's argument parsing (and ``14.10`` would become 14.1), so floats are refused.
    """
    if spec is None or spec == "":
        return []
    if isinstance(spec, (list, tuple)):
        return [(int(l), int(h)) for l, h in spec]
    if not isinstance(spec, str):
        raise GARConfigError(f"heads={spec!r} is ambiguous (lm-eval parsed it as a number): "
                             "write layer:head, e.g. heads=14:0;15:3")
    out = []
    for part in re.split(r"[;\s]+", spec.strip()):
        if not part:
            continue
        m = _HEAD.match(part)
        if m is None:
            raise GARConfigError(f"cannot read head {part!r} in heads={spec!r}: write layer:head, e.g. heads=14:0;15:3")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


__all__ = ["Intervention", "LABEL_FREE_MODES", "MODES", "format_heads", "head_edits", "head_means", "install",
           "intervened", "parse_heads", "random_heads", "traced_head_means", "traced_logits"]
