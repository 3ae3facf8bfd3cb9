"""The measurements of ``gar intervene`` (:mod:`interp.commands.intervene`): classification accuracy
before and after a head intervention, against random heads.

What is measured. For every GAR ``cls`` record (prompt ending in ``... Answer:``, gold label
``Yes`` or ``No``) the model runs once on the prompt and the logits of the first tokens of
``" Yes"`` and ``" No"`` (:func:`interp.core.encode.next_tokens`, tokenized in context) are read at
the last prompt token. The record counts as correct when the gold label's logit is the larger
(a tie counts as ``Yes``). That is exactly lm-eval's ``acc`` for the ``multiple_choice`` cls
tasks: both answers are single tokens, so each choice's log-likelihood is
``log_softmax(logits)[token]`` at that position, the normaliser is shared, and lm-eval's
``argmax`` over ``[" Yes", " No"]`` (first index on a tie) picks the larger logit. (Up to
rounding: lm-eval takes the ``log_softmax`` in the model's dtype, we compare float32 copies
of the logits.) Besides accuracy the mean margin ``logit(gold) - logit(other)`` is reported:
a small model that answers the same label to every prompt has a flat 50% accuracy that no
intervention moves, while the margin still shows in which direction the heads push.

Arms. ``baseline`` (no hooks), ``targeted`` (the chosen heads, :func:`interp.intervene.install`),
and ``random``: ``--random-draws`` controls with the same number of heads drawn by
:func:`interp.intervene.random_heads` with seeds ``seed .. seed + R - 1``, disjoint from the
targets (label mode: as many random True heads and random False heads as targeted, one draw
of ``n_true + n_false`` heads split by a shuffle seeded alike, so the two sets are disjoint
from each other and from every targeted head). Random arms are summarised by mean, sample
standard deviation, min and max over draws, per task and overall.

Tasks. Each selected ``cls`` slice (``(n_r, pair)``, named by its lm-eval leaf, e.g.
``gar_cls_nr1_gender_city``) is a task; ``--n`` records are chosen per task with ``--seed``,
balanced by label (``ceil(n/2)`` Yes, ``floor(n/2)`` No) so that a model answering one label
everywhere scores 50%. ``overall`` pools every chosen record.

Forwards are batched with left padding and explicit ``position_ids``
(:func:`interp.core.encode.left_pad`), on the plain Hugging Face model: the hooks are plain torch
forward pre-hooks. Token ids are made with ``add_special_tokens=True``, as :mod:`interp.pairs`
(hence ``gar patch`` / ``gar heads``) does.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

from gar_tasks.errors import GARConfigError

from .core.encode import ClsPrompts
from .core.loader import input_device, request_device
from .core.model import check_remote, forward_kwargs
from .core.sites import head_sites
from .intervene import Head, format_heads, head_edits, install, random_heads, traced_logits

OUTPUTS = ("intervene.json", "intervene.md")
ARMS = ("baseline", "targeted", "random")


# ------------------------------------------------------------------------------------------
# head plans


@dataclass(frozen=True)
class HeadPlan:
    """One arm's intervention: the mode and its heads (``heads`` or, in label mode, true/false)."""

    mode: str
    heads: tuple[Head, ...] = ()
    true_heads: tuple[Head, ...] = ()
    false_heads: tuple[Head, ...] = ()
    factor: float = 0.0
    up: float = 2.0
    down: float = 0.0

    @property
    def all_heads(self) -> list[Head]:
        return sorted(set(self.heads) | set(self.true_heads) | set(self.false_heads))

    def to_dict(self) -> dict[str, Any]:
        if self.mode == "label":
            return {"true_heads": [list(h) for h in self.true_heads],
                    "false_heads": [list(h) for h in self.false_heads]}
        return {"heads": [list(h) for h in self.heads]}

    def edits(self, sites: Any, means: Any = None, labels: Any = None) -> dict[int, list]:
        """The plan as per-layer slice edits for a traced forward (:func:`interp.intervene.head_edits`)."""
        return head_edits(sites, self.heads, self.mode, factor=self.factor, means=means, true_heads=self.true_heads,
                          false_heads=self.false_heads, up=self.up, down=self.down, labels=labels)

    @contextlib.contextmanager
    def installed(self, model: Any, means: Any = None) -> Iterator[Any]:
        """The plan's hooks on ``model`` for the duration (label mode: set ``.labels`` per batch)."""
        iv = install(model, self.heads, self.mode, factor=self.factor, means=means,
                     true_heads=self.true_heads, false_heads=self.false_heads, up=self.up, down=self.down)
        try:
            yield iv
        finally:
            iv.remove()


def normalize_heads(heads: Sequence[Head]) -> tuple[Head, ...]:
    """Distinct ``(layer, head)`` int pairs, sorted."""
    return tuple(sorted({(int(l), int(h)) for l, h in heads}))


def check_heads(heads: Sequence[Head], n_layers: int, n_heads: int, what: str = "head") -> None:
    """Refuse a head outside the model (before any forward)."""
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise GARConfigError(f"{what} {layer}:{head} is out of range: the model has {n_layers} layers x "
                                 f"{n_heads} heads (layer 0..{n_layers - 1}, head 0..{n_heads - 1})")


def control_plans(plan: HeadPlan, n_layers: int, n_heads: int, draws: int, seed: int = 0) -> list[HeadPlan]:
    """``draws`` random controls of ``plan`` (same mode and head counts, disjoint from its heads).

    Draw ``i`` uses seed ``seed + i``. Label mode draws ``n_true + n_false`` heads at once and
    splits them with a shuffle seeded the same, so random True and False heads never overlap.
    """
    if draws < 1:
        raise GARConfigError(f"--random-draws must be at least 1, got {draws}")
    targets = plan.all_heads
    out = []
    for i in range(draws):
        s = seed + i
        if plan.mode == "label":
            nt, nf = len(plan.true_heads), len(plan.false_heads)
            drawn = random_heads(nt + nf, exclude=targets, n_layers=n_layers, n_heads=n_heads, seed=s)
            random.Random(s).shuffle(drawn)
            out.append(replace(plan, true_heads=normalize_heads(drawn[:nt]), false_heads=normalize_heads(drawn[nt:])))
        else:
            drawn = random_heads(len(plan.heads), exclude=targets, n_layers=n_layers, n_heads=n_heads, seed=s)
            out.append(replace(plan, heads=normalize_heads(drawn)))
    return out


# ------------------------------------------------------------------------------------------
# scoring


def yes_no_logits(model: Any, enc: ClsPrompts, batch_size: int = 16, intervention: Any = None,
                  progress: Callable[[int, int], Any] | None = None) -> tuple[Any, Any]:
    """``(logit_yes, logit_no)`` per record (float64 numpy arrays, in ``enc`` order).

    Batches of similar length, left-padded (:func:`interp.core.encode.left_pad`), on the model's input
    device. ``intervention`` (label mode) gets each batch's gold labels as ``.labels``.
    """
    import numpy as np
    import torch

    if batch_size < 1:
        raise GARConfigError(f"--batch-size must be at least 1, got {batch_size}")
    inner = getattr(model, "_module", model)
    device = input_device(inner)
    extra = forward_kwargs(inner)
    batches = enc.length_batches(batch_size)
    ly = np.zeros(len(enc))
    ln = np.zeros(len(enc))
    with torch.no_grad():
        for k, idx in enumerate(batches):
            if intervention is not None:
                intervention.labels = torch.tensor([enc.gold_yes[i] for i in idx], dtype=torch.bool)
            logits = inner(**enc.padded(idx).inputs(device, **extra)).logits[:, -1].float().cpu()
            rows = torch.arange(len(idx))
            ly[idx] = logits[rows, torch.tensor([enc.yes[i] for i in idx])].double().numpy()
            ln[idx] = logits[rows, torch.tensor([enc.no[i] for i in idx])].double().numpy()
            del logits
            if progress is not None:
                progress(k + 1, len(batches))
    return ly, ln


def correct_and_margin(logit_yes: Any, logit_no: Any, gold_yes: Sequence[bool]) -> tuple[Any, Any]:
    """Per record: correct (lm-eval's argmax over [Yes, No], a tie picks Yes) and logit(gold) - logit(other)."""
    import numpy as np

    ly, ln, g = np.asarray(logit_yes, float), np.asarray(logit_no, float), np.asarray(gold_yes, bool)
    correct = np.where(g, ly >= ln, ln > ly)
    margin = np.where(g, ly - ln, ln - ly)
    return correct, margin


def cls_accuracy(model: Any, enc: ClsPrompts, batch_size: int = 16, intervention: Any = None) -> tuple[float, float]:
    """``(accuracy, mean margin)`` of ``model`` (with whatever hooks it has) on ``enc``."""
    ly, ln = yes_no_logits(model, enc, batch_size, intervention)
    c, m = correct_and_margin(ly, ln, enc.gold_yes)
    return float(c.mean()), float(m.mean())


def run_arm(model: Any, enc: ClsPrompts, plan: HeadPlan | None, means: Any = None, batch_size: int = 16,
            progress: Callable[[int, int], Any] | None = None) -> tuple[Any, Any]:
    """Per-record ``(correct, margin)`` with ``plan`` installed (``None``: the baseline)."""
    if plan is None:
        ly, ln = yes_no_logits(model, enc, batch_size, progress=progress)
    else:
        with plan.installed(model, means) as iv:
            ly, ln = yes_no_logits(model, enc, batch_size, iv if plan.mode == "label" else None, progress)
    return correct_and_margin(ly, ln, enc.gold_yes)


def traced_arms(model: Any, enc: ClsPrompts, plans: Sequence[HeadPlan | None], means: Any = None,
                batch_size: int = 16, remote: Any = False,
                progress: Callable[[int, int], Any] | None = None) -> list[tuple[Any, Any]]:
    """:func:`run_arm` of every plan through nnsight traces (``model``: an nnsight model, e.g. a
    remote skeleton): per batch one session (one NDIF request) runs every arm, so requests =
    batches. Same batches, padding and logits as the hooks, hence the same numbers."""
    import numpy as np
    import torch

    if batch_size < 1:
        raise GARConfigError(f"--batch-size must be at least 1, got {batch_size}")
    check_remote(model, remote)
    sites = head_sites(model)
    dev = request_device(model, remote)
    extra = forward_kwargs(model)
    batches = enc.length_batches(batch_size)
    ly, ln = np.zeros((len(plans), len(enc))), np.zeros((len(plans), len(enc)))
    for k, idx in enumerate(batches):
        labels = [enc.gold_yes[i] for i in idx]
        arms = [{} if p is None else p.edits(sites, means, labels) for p in plans]
        targets = torch.tensor([[enc.yes[i], enc.no[i]] for i in idx])
        got = traced_logits(model, enc.padded(idx).inputs(dev, **extra), targets, arms, remote)
        for a, t in enumerate(got):
            ly[a, idx] = t[:, 0].double().numpy()
            ln[a, idx] = t[:, 1].double().numpy()
        if progress is not None:
            progress(k + 1, len(batches))
    return [correct_and_margin(ly[a], ln[a], enc.gold_yes) for a in range(len(plans))]


def _spread(values: Sequence[float]) -> dict[str, Any]:
    import numpy as np

    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "per_draw": [float(x) for x in v]}


def summarize(enc: ClsPrompts, baseline: tuple[Any, Any], targeted: tuple[Any, Any],
              randoms: Sequence[tuple[Any, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-task rows and the overall row: n, each arm's accuracy and mean margin, deltas."""
    import numpy as np

    tasks = list(dict.fromkeys(enc.record_tasks))
    names = np.asarray(enc.record_tasks)

    def row(sel: Any, name: str) -> dict[str, Any]:
        def stat(arm: tuple[Any, Any]) -> dict[str, float]:
            return {"acc": float(arm[0][sel].mean()), "metric": float(arm[1][sel].mean())}

        r = {"task": name, "n": int(sel.sum()), "n_yes": int(np.asarray(enc.gold_yes)[sel].sum()),
             "baseline": stat(baseline), "targeted": stat(targeted)}
        rs = [stat(a) for a in randoms]
        r["random"] = {k: _spread([x[k] for x in rs]) for k in ("acc", "metric")}
        r["delta"] = {k: r["targeted"][k] - r["random"][k]["mean"] for k in ("acc", "metric")}
        r["delta_vs_baseline"] = {"targeted": {k: r["targeted"][k] - r["baseline"][k] for k in ("acc", "metric")},
                                  "random": {k: r["random"][k]["mean"] - r["baseline"][k] for k in ("acc", "metric")}}
        return r

    rows = [row(names == t, t) for t in tasks]
    return rows, row(np.ones(len(enc), bool), "overall")


# ------------------------------------------------------------------------------------------
# the report


def _fmt_heads(heads: Sequence[Sequence[int]]) -> str:
    return format_heads(heads) or "-"


def report_md(info: dict[str, Any]) -> str:
    """Markdown: settings, the heads of both arms, and accuracy / margin tables per task and overall."""
    s = info["settings"]
    t = info["targeted_heads"]
    mode = s["mode"]
    what = {"ablate": "zeroed", "mean": f"replaced by their mean activation ({info['means_source']})",
            "scale": f"scaled by {s['factor']}",
            "label": f"label-guided: gold Yes -> True heads x{s['up']}, False heads x{s['down']}; gold No -> reversed"}
    lines = [f"# gar intervene: {s['model']} on `{s['tasks']}` ({s['config']}), mode {mode}", "",
             f"Heads {what[mode]}. Targeted: " + (
                 f"True {_fmt_heads(t['true_heads'])}; False {_fmt_heads(t['false_heads'])}" if mode == "label"
                 else _fmt_heads(t["heads"])) + f" (from {info['heads_source']}).",
             f"Control: {s['random_draws']} draws of as many random heads, disjoint from the targets "
             f"(seeds {s['seed']}..{s['seed'] + s['random_draws'] - 1}); random = mean ± sample std over draws "
             f"[min, max]. Up to {s['n']} records per task (label-balanced), dtype {s['dtype']}.",
             "Accuracy = lm-eval's acc (gold answer's logit larger at the last prompt token); margin = mean "
             "logit(gold) - logit(other). delta = targeted - random mean.", ""]
    for key, title, fmt in (("acc", "Accuracy", "{:.3f}"), ("metric", "Margin logit(gold) - logit(other)", "{:+.3f}")):
        lines += [f"## {title}", "", "| task | n | baseline | targeted | random mean ± std [min, max] | "
                  "delta targeted - random |", "|---|---|---|---|---|---|"]
        for r in [*info["tasks"], info["overall"]]:
            rd = r["random"][key]
            name = f"**{r['task']}**" if r["task"] == "overall" else r["task"]
            lines.append(f"| {name} | {r['n']} | {fmt.format(r['baseline'][key])} | {fmt.format(r['targeted'][key])} | "
                         f"{fmt.format(rd['mean'])} ± {rd['std']:.3f} [{fmt.format(rd['min'])}, {fmt.format(rd['max'])}] | "
                         f"{r['delta'][key]:+.3f} |")
        lines.append("")
    lines += ["## Random draws", "", "| draw | seed | heads | overall acc | overall margin |", "|---|---|---|---|---|"]
    for i, d in enumerate(info["random_draws"]):
        hs = (f"True {_fmt_heads(d['true_heads'])}; False {_fmt_heads(d['false_heads'])}" if mode == "label"
              else _fmt_heads(d["heads"]))
        lines.append(f"| {i} | {d['seed']} | {hs} | {info['overall']['random']['acc']['per_draw'][i]:.3f} | "
                     f"{info['overall']['random']['metric']['per_draw'][i]:+.3f} |")
    lines.append("")
    return "\n".join(lines)


__all__ = ["ARMS", "HeadPlan", "OUTPUTS", "check_heads", "cls_accuracy", "control_plans", "correct_and_margin",
           "normalize_heads", "report_md", "run_arm", "summarize", "traced_arms", "yes_no_logits"]
