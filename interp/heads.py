"""``gar heads``: True/False head discovery on the GAR cls (Yes/No) tasks.

A *True head* pushes the answer toward ``Yes`` when the statement is true; a *False head* pushes
it toward ``No`` when the statement is false; both consistently across tasks. Everything is
measured on the metric ``m = logit(" Yes") - logit(" No")`` at the last prompt token (targets as
in :func:`interp.pairs._next_tokens`).

**Per-head effect** of head ``h`` on record ``r``: attribution against mean ablation,
``e_h(r) = sum over positions and head_dim of (a_h - mean_h) * dm/da_h`` (first-order estimate of
``m(r) - m(r with head h replaced by its mean)``; positive = the head pushes ``Yes``). ``a_h`` is
the head's slice of the output projection's input (:mod:`interp.core.sites`), ``mean_h`` its mean over
every real token of the chosen records (per ``head_dim``). Since the effect is linear in
``mean_h``, one forward+backward per batch suffices: the batch stores ``sum a*g`` per head and
``sum_t g`` per head and ``head_dim``, plus the activation sums that give ``mean_h``, and
``e = sum a*g - mean . sum_t g`` is formed once every batch is done (so the mean needs no
separate pass; the tests check it against a two-pass plain-torch reference).

**Plain AtP** (:mod:`interp.patching`) is computed in the same pass: the two twins of a cls pair
(same ``pair_id``, Yes and No) share a batch, and for the Yes twin (clean) the AtP term is
``sum (a_No - a_Yes) * dm/da_Yes``, exactly :func:`interp.patching.attribution_scores` on
``make_pairs(records, families=("cls",))`` (twins of unequal token length are skipped, as there;
the tests check the two agree).

**Scores** (:func:`score_heads`, a pure function of the effects). A *task* is one slice
(family cls, n_r, schema pair). Per task ``t`` and head ``h``:

* ``Y[t,h]`` = mean of ``e_h`` over gold-Yes records of ``t`` (true-statement evidence);
* ``N[t,h]`` = mean of ``e_h`` over gold-No records of ``t``; ``F[t,h] = -N[t,h]`` (false-statement
  evidence: positive = pushes ``No`` on false statements).

``consistency_true[h]`` = fraction of tasks with ``Y > 0`` (tasks without gold-Yes records are
left out), ``consistency_false[h]`` likewise with ``F > 0``. Reported beside them (not used for
labelling): ``specific_true`` = fraction of tasks with ``Y - max(0, N) > 0`` (the push toward
``Yes`` is larger on true than on false statements, task by task), ``specific_false`` likewise
with ``F - max(0, -Y)``. ``effect_true = mean_t Y``,
``effect_false = mean_t F``; ``opposite_true = mean_t N`` (the True head's push toward ``Yes`` on
*false* statements: a plain Yes bias, not truth-tracking) and ``opposite_false = -mean_t Y``.
Scores reward label specificity::

    score_true  = effect_true  - max(0, opposite_true)
    score_false = effect_false - max(0, opposite_false)

A head is *labelled* True if ``consistency_true >= min_consistency`` and ``score_true > 0``
(False likewise); a head labelled both gets the kind with the larger score, so the True and
False lists are disjoint. ``d_true`` / ``d_false`` are standardized effects: mean over gold-Yes
(gold-No, sign flipped) records of ``e`` divided by its standard deviation over those records.
The discovery score compared with ``|AtP|`` (Spearman over all heads) is
``max(score_true, score_false)``.

The **True-minus-False direction** of a head is its mean output at the answer position over
gold-Yes records minus that over gold-No records, ``[layers, heads, head_dim]``.

Outputs (``--out DIR``, each file written atomically): ``heads.json``, ``directions.npz``,
``heads.png``, ``summary.md``; :func:`load_heads` reads them back. ``DIR`` may be new, empty, or
a previous ``gar heads`` output (overwritten); any other non-empty folder is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from gar_tasks.errors import GARConfigError

from .core.encode import ClsBatch, ClsPrompts
from .core.loader import request_device
from .core.model import Remote, as_nnsight, check_remote, forward_kwargs, frozen, is_nnsight
from .core.sites import head_sites

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

Head = tuple[int, int]
OUTPUTS = ("heads.json", "directions.npz", "heads.png", "summary.md")
Progress = Callable[[int, int], Any]


# ------------------------------------------------------------------------------------------
# the pass


def effect_batch(model: Any, batch: ClsBatch, *, remote: Remote = False) -> dict[str, "np.ndarray"]:
    """One nnsight forward+backward of a batch (parameters frozen, gradients only w.r.t. the
    head-site inputs). Per row ``b`` and layer/head: ``ag`` = ``sum_{t,d} a*g`` [B,L,H],
    ``g`` = ``sum_t g`` [B,L,H,D], ``cross`` = ``sum_{t,d} a[partner[b]]*g[b]`` [B,L,H], ``last``
    = ``a`` at the answer position [B,L,H,D]; over the batch ``act_sum`` = ``sum_{b,t} a``
    [L,H,D] and ``n_tokens``; and ``metric`` [B]. Padding contributes nothing. ``remote``: as
    :func:`interp.patching.attribution_batch` (one request per batch; only these sums travel).
    """
    import nnsight
    import numpy as np
    import torch

    check_remote(model, remote)
    if not is_nnsight(model):
        raise GARConfigError(f"expected an nnsight TransformersModel, got {type(model).__name__}: "
                             "wrap it with interp.core.model.as_nnsight(model, tokenizer)")
    sites = head_sites(model)
    L, H, D = sites.n_layers, sites.n_heads, sites.head_dim
    envoys = [model.get(sites.path(layer)) for layer in range(L)]
    n, width = batch.input_ids.shape
    real = batch.attention_mask.bool()[:, :, None]
    yes, no, partner = batch.yes[:, None], batch.no[:, None], batch.partner
    dev = request_device(model, remote)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids}
    inputs = {**({k: v.to(dev) for k, v in inputs.items()} if dev is not None else inputs), **forward_kwargs(model)}
    with frozen(model), model.trace(inputs, remote=remote):
        acts = []
        for envoy in envoys:
            x = envoy.input
            if not x.requires_grad:  # the first head site: nothing upstream requires grad
                x.requires_grad_(True)
            acts.append(x)
        logits = model.output.logits[:, -1, :]
        device = logits.device
        m = logits.gather(1, yes.to(device)) - logits.gather(1, no.to(device))
        metric = nnsight.save(m[:, 0].detach().float().cpu())
        with m.sum().backward():  # rows are independent: each row's gradient is its own metric's
            ag, gs, cross, last, asum = [], [], [], [], []
            for layer in reversed(range(L)):  # gradients arrive in reverse forward order
                x = acts[layer]
                r = real.to(x.device)
                a = torch.where(r, x.detach().float(), torch.zeros((), device=x.device))
                g = torch.where(r, x.grad.float(), torch.zeros((), device=x.device))
                a4, g4 = a.reshape(n, width, H, D), g.reshape(n, width, H, D)
                ag.append((a4 * g4).sum((1, 3)).to(device))  # a split model: every layer's to one device
                gs.append(g4.sum(1).to(device))
                cross.append((a4[partner.to(x.device)] * g4).sum((1, 3)).to(device))
                last.append(a4[:, -1].to(device))
                asum.append(a4.sum((0, 1)).to(device))
            for lst in (ag, gs, cross, last, asum):
                lst.reverse()
            out = nnsight.save({"ag": torch.stack(ag, 1).cpu(), "g": torch.stack(gs, 1).cpu(),
                                "cross": torch.stack(cross, 1).cpu(), "last": torch.stack(last, 1).cpu(),
                                "act_sum": torch.stack(asum, 0).cpu()})
    res = {k: v.numpy().astype(np.float64) for k, v in out.items()}
    res["metric"] = metric.numpy().astype(np.float64)
    res["n_tokens"] = np.array(int(batch.attention_mask.sum()))
    return res


@dataclass
class Effects:
    """What the pass gives: per-record effects, the mean used for mean ablation, AtP, directions."""

    effects: "np.ndarray"  # [records, L, H]
    mean: "np.ndarray"  # [L, H, D]
    direction: "np.ndarray"  # [L, H, D]: mean answer-position output, gold Yes minus gold No
    atp: "np.ndarray"  # [L, H]: mean AtP over twin pairs (NaN if none)
    atp_terms: "np.ndarray"  # [records, L, H]: AtP per Yes record with a twin (0 elsewhere)
    metric: "np.ndarray"  # [records]
    n_atp_pairs: int


def head_effects(model: Any, rs: ClsPrompts, batch_size: int = 8, *, progress: Progress | None = None,
                 tokenizer: Any = None, remote: Remote = False) -> Effects:
    """Run :func:`effect_batch` over every batch and assemble the effects (see module docstring).

    ``model``: an nnsight model, or an HF model plus ``tokenizer``.
    """
    import numpy as np

    model = as_nnsight(model, tokenizer)
    sites = head_sites(model)
    L, H, D = sites.n_layers, sites.n_heads, sites.head_dim
    N = len(rs)
    if N == 0:
        raise GARConfigError("no records to analyse")
    ag = np.zeros((N, L, H))
    g = np.zeros((N, L, H, D))
    atp_terms = np.zeros((N, L, H))
    metric = np.zeros(N)
    last_sum = {True: np.zeros((L, H, D)), False: np.zeros((L, H, D))}
    act_sum = np.zeros((L, H, D))
    n_tokens = 0
    batches = rs.twin_batches(batch_size)
    for k, idx in enumerate(batches):
        batch = rs.batch(idx)
        d = effect_batch(model, batch, remote=remote)
        ag[idx], g[idx], metric[idx] = d["ag"], d["g"], d["metric"]
        for b, i in enumerate(idx):
            last_sum[rs.labels[i]] += d["last"][b]
            if batch.atp_valid[b]:
                atp_terms[i] = d["cross"][b] - d["ag"][b]
        act_sum += d["act_sum"]
        n_tokens += int(d["n_tokens"])
        if progress is not None:
            progress(k + 1, len(batches))
    mean = act_sum / max(n_tokens, 1)
    effects = ag - np.einsum("nlhd,lhd->nlh", g, mean)
    labels = np.asarray(rs.labels, dtype=bool)
    n_yes, n_no = int(labels.sum()), int((~labels).sum())
    if n_yes and n_no:
        direction = last_sum[True] / n_yes - last_sum[False] / n_no
    else:
        direction = np.full((L, H, D), np.nan)
    n_pairs = rs.n_atp_pairs
    atp = atp_terms.sum(0) / n_pairs if n_pairs else np.full((L, H), np.nan)
    return Effects(effects=effects, mean=mean, direction=direction, atp=atp, atp_terms=atp_terms,
                   metric=metric, n_atp_pairs=n_pairs)


# ------------------------------------------------------------------------------------------
# scoring (pure numpy)


def score_heads(effects: Any, labels: Any, task_index: Any, n_tasks: int | None = None,
                min_consistency: float = 0.75) -> dict[str, "np.ndarray"]:
    """True/False scores of every head from per-record effects (see the module docstring).

    ``effects`` [records, L, H]; ``labels`` [records] (True / 1 / "Yes" = gold Yes);
    ``task_index`` [records] in ``0..n_tasks-1``. Returns arrays: ``Y`` and ``F`` [tasks, L, H]
    (NaN where a task lacks that label), ``consistency_true``/``_false``, ``specific_true``/``_false``, ``effect_true``/``_false``,
    ``opposite_true``/``_false``, ``d_true``/``_false``, ``score_true``/``_false``,
    ``is_true``/``is_false`` (labelled; disjoint) and ``kind`` (``"true"``/``"false"``/``"none"``), all [L, H].
    """
    import numpy as np

    e = np.asarray(effects, dtype=float)
    if e.ndim != 3:
        raise GARConfigError(f"effects must be [records, layers, heads], got shape {e.shape}")
    lab = np.asarray(labels)
    yes = (lab == "Yes") if lab.dtype.kind in "US" else lab.astype(bool)
    t = np.asarray(task_index, dtype=int)
    if len(yes) != len(e) or len(t) != len(e):
        raise GARConfigError(f"{len(e)} effects but {len(yes)} labels and {len(t)} task indices")
    if not 0 <= min_consistency <= 1:
        raise GARConfigError(f"min_consistency must be in [0, 1], got {min_consistency}")
    T = int(n_tasks if n_tasks is not None else (t.max() + 1 if len(t) else 0))
    shape = e.shape[1:]
    Y = np.full((T,) + shape, np.nan)
    N = np.full((T,) + shape, np.nan)
    for k in range(T):
        ys, ns = (t == k) & yes, (t == k) & ~yes
        if ys.any():
            Y[k] = e[ys].mean(0)
        if ns.any():
            N[k] = e[ns].mean(0)
    F = -N

    def frac_pos(x: Any) -> Any:
        valid = ~np.isnan(x)
        n = valid.sum(0)
        return np.where(n > 0, (np.where(valid, x, 0) > 0).sum(0) / np.maximum(n, 1), np.nan)

    def nanmean0(x: Any) -> Any:
        valid = ~np.isnan(x)
        n = valid.sum(0)
        return np.where(n > 0, np.where(valid, x, 0).sum(0) / np.maximum(n, 1), np.nan)

    def standardized(x: Any) -> Any:
        if len(x) < 2:
            return np.full(shape, np.nan)
        sd = x.std(0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 0, x.mean(0) / np.where(sd > 0, sd, 1), np.nan)

    effect_true, effect_false = nanmean0(Y), nanmean0(F)
    opposite_true, opposite_false = nanmean0(N), -effect_true
    score_true = effect_true - np.maximum(0, np.nan_to_num(opposite_true))
    score_false = effect_false - np.maximum(0, np.nan_to_num(opposite_false))
    cons_true, cons_false = frac_pos(Y), frac_pos(F)
    with np.errstate(invalid="ignore"):  # NaN (a task lacking a label) stays NaN and is left out
        spec_true = frac_pos(Y - np.maximum(0, N))
        spec_false = frac_pos(F - np.maximum(0, -Y))
    ok_true = (np.nan_to_num(cons_true) >= min_consistency) & (np.nan_to_num(score_true) > 0)
    ok_false = (np.nan_to_num(cons_false) >= min_consistency) & (np.nan_to_num(score_false) > 0)
    both = ok_true & ok_false
    is_true = ok_true & ~(both & (score_false > score_true))
    is_false = ok_false & ~(both & is_true)
    kind = np.where(is_true, "true", np.where(is_false, "false", "none"))
    return {"Y": Y, "F": F, "consistency_true": cons_true, "consistency_false": cons_false,
            "specific_true": spec_true, "specific_false": spec_false,
            "effect_true": effect_true, "effect_false": effect_false,
            "opposite_true": opposite_true, "opposite_false": opposite_false,
            "d_true": standardized(e[yes]), "d_false": standardized(-e[~yes]),
            "score_true": score_true, "score_false": score_false,
            "is_true": is_true, "is_false": is_false, "kind": kind}


def top_labelled(scores: dict[str, Any], kind: str, k: int) -> list[Head]:
    """The top ``k`` heads labelled ``kind`` ("true"/"false"), by their score, best first."""
    import numpy as np

    s = np.where(scores[f"is_{kind}"], scores[f"score_{kind}"], -np.inf)
    order = np.argsort(-s, axis=None, kind="stable")
    out = []
    for i in order[:k]:
        if not np.isfinite(s.flat[i]):
            break
        out.append(tuple(int(v) for v in np.unravel_index(i, s.shape)))
    return out


def discovery_score(scores: dict[str, Any]) -> "np.ndarray":
    import numpy as np

    return np.fmax(scores["score_true"], scores["score_false"])


def atp_overlap(atp: Any, scores: dict[str, Any], k: int) -> dict[str, Any]:
    """Overlap of the top-``k`` heads by ``|AtP|`` with the top True and False heads, and
    Spearman between ``|AtP|`` and :func:`discovery_score` over all heads."""
    import numpy as np

    from .patching import pearson, ranks

    atp = np.abs(np.asarray(atp, dtype=float))
    disc = discovery_score(scores)
    union = set(top_labelled(scores, "true", k)) | set(top_labelled(scores, "false", k))
    out: dict[str, Any] = {"k": k, "n_discovered": len(union), "overlap": None, "overlap_fraction": None,
                           "spearman": None, "top_atp": []}
    if np.isnan(atp).all():
        return out
    flat = np.argsort(-np.nan_to_num(atp, nan=-np.inf), axis=None, kind="stable")[:k]
    top_atp = [tuple(int(v) for v in np.unravel_index(i, atp.shape)) for i in flat]
    both = [h for h in top_atp if h in union]
    a, d = atp.ravel(), disc.ravel()
    ok = ~(np.isnan(a) | np.isnan(d))
    rho = pearson(ranks(a[ok]), ranks(d[ok])) if ok.sum() > 1 else float("nan")
    out.update(overlap=len(both), overlap_fraction=len(both) / k if k else None, spearman=rho,
               top_atp=[list(h) for h in top_atp], shared=[list(h) for h in both])
    return out


def atp_ranks(atp: Any) -> "np.ndarray":
    """1-based rank of every head by ``|AtP|`` (1 = largest)."""
    import numpy as np

    a = np.nan_to_num(np.abs(np.asarray(atp, dtype=float)), nan=-np.inf)
    ranks = np.empty(a.size, dtype=int)
    ranks[np.argsort(-a, axis=None, kind="stable")] = np.arange(1, a.size + 1)
    return ranks.reshape(a.shape)


# ------------------------------------------------------------------------------------------
# outputs


def plot_heads(scores: dict[str, Any], path: str | Path, true_heads: Sequence[Head] = (),
               false_heads: Sequence[Head] = (), title: str = "") -> Path:
    """Two layer x head heatmaps (True score, False score), the listed heads outlined; atomic."""
    import numpy as np

    from .plots import head_panel, pyplot, save_png

    n_layers, n_heads = np.asarray(scores["score_true"]).shape
    fig, axes = pyplot().subplots(1, 2, figsize=(2.5 + 0.9 * n_heads, 1.5 + 0.22 * n_layers))
    for ax, key, heads, name in ((axes[0], "score_true", true_heads, "True score"),
                                 (axes[1], "score_false", false_heads, "False score")):
        head_panel(fig, ax, scores[key], heads, f"{name} (top {len(heads)} outlined)", lw=1.2)
    fig.suptitle(title, fontsize=8)
    return save_png(fig, path)


def _fmt(x: Any, spec: str = "+.3f") -> str:
    return "" if x is None else format(x, spec)


def summary_md(info: dict[str, Any]) -> str:
    """The markdown summary: tasks, the top True and False heads, and the AtP overlap."""
    s = info["settings"]
    by_head = {(d["layer"], d["head"]): d for d in info["heads"]}
    c = info["counts"]
    lines = [f"# gar heads: {info['model_arg']} ({s['config']})", "",
             f"`{info['command']}`", "",
             f"{c['records']} cls records ({c['yes']} gold Yes, {c['no']} gold No) in {c['tasks']} tasks; "
             f"{info['n_layers']} layers x {info['n_heads']} heads, dtype {s['dtype']}. Effect of a head on a "
             "record: attribution of logit(Yes) - logit(No) against mean ablation (positive = pushes Yes). "
             f"Labelled when its sign holds in at least {s['min_consistency']:.0%} of tasks and its score is "
             f"positive: {info['n_labelled']['true']} True, {info['n_labelled']['false']} False heads. Score = mean "
             "effect minus the head's push the same way on the other label (a plain Yes/No bias scores 0); "
             "'label-specific in' = fraction of tasks where that difference is positive.", "",
             "| task | records | Yes | No | model accuracy | mean m (gold Yes) | mean m (gold No) |",
             "|---|---|---|---|---|---|---|"]
    for p in c["per_task"]:
        lines.append(f"| {p['task']} | {p['n']} | {p['n_yes']} | {p['n_no']} | {_fmt(p['accuracy'], '.2f')} | "
                     f"{_fmt(p['mean_metric_yes'])} | {_fmt(p['mean_metric_no'])} |")
    for kind, heads in (("True", info["true_heads"]), ("False", info["false_heads"])):
        k = kind.lower()
        other = "on gold No (+ = pushes Yes)" if k == "true" else "on gold Yes (+ = pushes No)"
        lines += ["", f"## Top {kind} heads", ""]
        if not heads:
            lines.append(f"No head reaches the {kind} criteria.")
            continue
        lines += [f"| rank | head (L.H) | score | consistency | label-specific in | mean effect | standardized | "
                  f"effect {other} | AtP | AtP rank |", "|---|---|---|---|---|---|---|---|---|---|"]
        for i, (layer, head) in enumerate(heads, 1):
            d = by_head[(layer, head)]
            opp = d["effect_on_no"] if k == "true" else (None if d["effect_on_yes"] is None else -d["effect_on_yes"])
            lines.append(f"| {i} | {layer}.{head} | {_fmt(d[f'score_{k}'])} | {_fmt(d[f'consistency_{k}'], '.2f')} | "
                         f"{_fmt(d[f'specific_{k}'], '.2f')} | {_fmt(d[f'effect_{k}'])} | {_fmt(d[f'd_{k}'], '+.2f')} | {_fmt(opp)} | "
                         f"{_fmt(d['atp'])} | {d['atp_rank'] if d['atp_rank'] is not None else ''} |")
    ov = info["atp_overlap"]
    lines += ["", "## Overlap with plain AtP", ""]
    if ov["overlap"] is None:
        lines.append("No AtP pairs (no twin pair of equal token length): no comparison.")
    else:
        lines.append(f"AtP on {c['atp_pairs']} twin pairs (clean = Yes twin, corrupted = No twin). Of the top-{ov['k']} "
                     f"heads by |AtP|, {ov['overlap']} are among the {ov['n_discovered']} top True/False heads "
                     f"({ov['overlap_fraction']:.0%}); Spearman(|AtP|, max(True, False score)) over all heads: "
                     f"{_fmt(ov['spearman'], '+.3f')}.")
    lines += ["", "![True and False scores](heads.png)", ""]
    return "\n".join(lines)


def load_heads(path: str | Path) -> tuple[list[Head], list[Head], dict[str, Any]]:
    """``(true_heads, false_heads, directions)`` from a ``gar heads`` output folder or its
    ``heads.json`` (``directions.npz`` beside it: ``direction``, ``mean``, ``effects``, ``labels``,
    ``task_index``, ... as numpy arrays)."""
    import numpy as np

    p = Path(path)
    f = p / "heads.json" if p.is_dir() else p
    if not f.is_file():
        raise GARConfigError(f"no gar heads output at {path} (expected a folder with heads.json, or heads.json)")
    try:
        info = json.loads(f.read_text())
        true_heads = [(int(a), int(b)) for a, b in info["true_heads"]]
        false_heads = [(int(a), int(b)) for a, b in info["false_heads"]]
    except (ValueError, KeyError, TypeError) as e:
        raise GARConfigError(f"{f} is not a gar heads output: {e}") from None
    npz = f.parent / "directions.npz"
    if not npz.is_file():
        raise GARConfigError(f"{npz} is missing (gar heads writes it beside heads.json)")
    with np.load(npz) as z:
        directions = {k: z[k] for k in z.files}
    return true_heads, false_heads, directions


def heads_model(path: str | Path) -> dict[str, Any]:
    """What model a ``gar heads`` output was made on (``model_arg``, ``model_type``, ``n_layers``,
    ``n_heads``, ``head_dim``, ``model_fingerprint``; absent keys for older outputs)."""
    p = Path(path)
    f = p / "heads.json" if p.is_dir() else p
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot read {f}: {e}") from None
    keys = ("model_arg", "model_type", "n_layers", "n_heads", "head_dim", "model_fingerprint")
    return {k: info.get(k) for k in keys} if isinstance(info, dict) else {}


def check_heads_model(path: str | Path, model: str, sites: Any, fingerprint: str) -> None:
    """Refuse heads (and their directions) discovered on another model than ``model``: another
    architecture or head shape, or (outputs that record it) other content (a copy of the model
    is the same model)."""
    got = heads_model(path)
    shape = (got.get("model_type"), got.get("n_layers"), got.get("n_heads"))
    if None not in shape and shape != (sites.model_type, sites.n_layers, sites.n_heads):
        raise GARConfigError(f"the heads in {path} were discovered on {got.get('model_arg')!r}, a {shape[0]} with "
                             f"{shape[1]} layers x {shape[2]} heads; model {model!r} is a {sites.model_type} with "
                             f"{sites.n_layers} x {sites.n_heads}: run gar heads on it first")
    from .core.identity import comparable

    fp = got.get("model_fingerprint")
    if comparable(fp, fingerprint) and fp != fingerprint:
        raise GARConfigError(f"the heads in {path} were discovered on {got.get('model_arg')!r} ({fp}), not on model "
                             f"{model!r} ({fingerprint}: other weights, config or tokenizer); heads and their "
                             "directions belong to the model they were found on: run gar heads on it first")


__all__ = ["OUTPUTS", "Effects", "atp_overlap", "check_heads_model", "heads_model",
           "atp_ranks", "discovery_score", "effect_batch", "head_effects", "load_heads",
           "plot_heads", "score_heads", "summary_md", "top_labelled"]
