"""``gar intervene``: classification accuracy before and after a head intervention, against random heads.

What is measured. For every GAR ``cls`` record (prompt ending in ``... Answer:``, gold label
``Yes`` or ``No``) the model runs once on the prompt and the logits of the first tokens of
``" Yes"`` and ``" No"`` (:func:`interp.pairs._next_tokens`, tokenized in context) are read at
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

Forwards are batched with left padding and explicit ``position_ids`` (as
:class:`interp.pairs.PairBatch`), on the plain Hugging Face model: the hooks are plain torch
forward pre-hooks. Token ids are made with ``add_special_tokens=True``, as :mod:`interp.pairs`
(hence ``gar patch`` / ``gar heads``) does.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from gar_tasks.errors import GARConfigError

from .heads import load_heads
from .intervene import MODES, Head, install, parse_heads, random_heads

DEFAULT_TASKS = "gender_city,gender_kind,gender_usage"
OUTPUTS = ("intervene.json", "intervene.md")
WHICH = ("true", "false", "both")
ARMS = ("baseline", "targeted", "random")


# ------------------------------------------------------------------------------------------
# arguments and head plans


@dataclass(frozen=True)
class InterveneArgs:
    """What ``gar intervene`` was asked (the CLI's flags, one field each)."""

    model: str
    mode: str
    out: str
    heads: str | None = None
    tasks: str = DEFAULT_TASKS
    config: str = "paper"
    n: int = 64
    batch_size: int = 16
    dtype: str = "float32"
    factor: float | None = None
    up: float = 2.0
    down: float = 0.0
    true_heads: str | None = None
    false_heads: str | None = None
    which: str | None = None
    random_draws: int = 5
    seed: int = 0


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

    @contextlib.contextmanager
    def installed(self, model: Any, means: Any = None) -> Iterator[Any]:
        """The plan's hooks on ``model`` for the duration (label mode: set ``.labels`` per batch)."""
        iv = install(model, self.heads, self.mode, factor=self.factor, means=means,
                     true_heads=self.true_heads, false_heads=self.false_heads, up=self.up, down=self.down)
        try:
            yield iv
        finally:
            iv.remove()


def _norm(heads: Sequence[Head]) -> tuple[Head, ...]:
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
            out.append(replace(plan, true_heads=_norm(drawn[:nt]), false_heads=_norm(drawn[nt:])))
        else:
            drawn = random_heads(len(plan.heads), exclude=targets, n_layers=n_layers, n_heads=n_heads, seed=s)
            out.append(replace(plan, heads=_norm(drawn)))
    return out


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or spec.endswith(".json") or spec.startswith((".", "~"))


def resolve_plan(args: InterveneArgs) -> tuple[HeadPlan, dict[str, Any]]:
    """The targeted arm from the flags, and where its heads (and means) came from.

    No model needed: range checks come later (:func:`check_heads`). Returns ``(plan, source)``
    with ``source = {"heads": "spec" | path, "means": array or None}``.
    """
    if args.mode not in MODES:
        raise GARConfigError(f"unknown intervention mode {args.mode!r}; choose from {', '.join(MODES)}")
    if args.which is not None and args.which not in WHICH:
        raise GARConfigError(f"--which must be one of {', '.join(WHICH)}, got {args.which!r}")
    true_h: list[Head] = []
    false_h: list[Head] = []
    spec_heads: list[Head] = []
    dirs: dict[str, Any] = {}
    source: dict[str, Any] = {"heads": None, "means": None}
    if args.heads:
        p = Path(args.heads).expanduser()
        if p.exists():
            if p.is_dir() and not (p / "heads.json").exists():
                raise GARConfigError(f"--heads {args.heads}: folder has no heads.json (expected `gar heads` output)")
            true_h, false_h, dirs = load_heads(p)
            source["heads"] = str(p)
        elif _looks_like_path(args.heads):
            raise GARConfigError(f"--heads {args.heads!r}: no such file or folder")
        else:
            spec_heads = parse_heads(args.heads)
            if not spec_heads:
                raise GARConfigError(f"--heads {args.heads!r} names no head")
            source["heads"] = "spec"
    explicit = args.true_heads is not None or args.false_heads is not None
    if args.mode == "label":
        if args.which is not None:
            raise GARConfigError("--which applies to modes ablate/mean/scale; label mode uses both sets")
        if explicit:
            if args.heads:
                raise GARConfigError("label mode: give either --heads DIR or --true-heads/--false-heads, not both")
            true_h, false_h = parse_heads(args.true_heads or ""), parse_heads(args.false_heads or "")
            source["heads"] = "spec"
        elif source["heads"] == "spec":
            raise GARConfigError("label mode needs True and False heads: --heads DIR (output of `gar heads`) "
                                 "or --true-heads SPEC --false-heads SPEC")
        elif not args.heads:
            raise GARConfigError("label mode needs --heads DIR or --true-heads SPEC / --false-heads SPEC")
        true_n, false_n = _norm(true_h), _norm(false_h)
        if not true_n and not false_n:
            raise GARConfigError("label mode: no True and no False heads given")
        both = sorted(set(true_n) & set(false_n))
        if both:
            raise GARConfigError(f"heads {', '.join(f'{l}:{h}' for l, h in both)} are both True and False heads")
        plan = HeadPlan("label", true_heads=true_n, false_heads=false_n, up=float(args.up), down=float(args.down))
    else:
        if explicit:
            raise GARConfigError("--true-heads/--false-heads are for --mode label; use --heads")
        if not args.heads:
            raise GARConfigError(f"mode {args.mode} needs --heads SPEC (e.g. 14:0;15:3) or --heads DIR")
        if source["heads"] == "spec":
            if args.which is not None:
                raise GARConfigError("--which picks from a `gar heads` folder; --heads is a head list here")
            heads = _norm(spec_heads)
        else:
            which = args.which or "both"
            heads = _norm((true_h if which in ("true", "both") else []) + (false_h if which in ("false", "both") else []))
            if not heads:
                raise GARConfigError(f"--heads {args.heads}: no {which} heads in it")
        if args.mode == "scale" and args.factor is None:
            raise GARConfigError("mode scale needs --factor")
        if args.mode != "scale" and args.factor is not None:
            raise GARConfigError(f"--factor applies to mode scale, not {args.mode}")
        plan = HeadPlan(args.mode, heads=heads, factor=float(args.factor or 0.0))
        if args.mode == "mean" and dirs.get("mean") is not None:
            source["means"] = dirs["mean"]
    return plan, source


# ------------------------------------------------------------------------------------------
# records and their encoding


@dataclass
class Encoded:
    """Token ids of cls prompts with their Yes/No target tokens and gold labels (True = Yes)."""

    ids: list[list[int]]
    yes: list[int]
    no: list[int]
    gold_yes: list[bool]
    pad_token_id: int
    tasks: list[str] = field(default_factory=list)  # task name per record

    def __len__(self) -> int:
        return len(self.ids)


def task_name(config: str, n_r: int, pair: str) -> str:
    from gar_tasks.lm_eval_glue import TASK_PREFIX

    return f"{TASK_PREFIX[config]}_cls_nr{n_r}_{pair}"


def choose_records(tasks: str, config: str = "paper", n: int = 64, seed: int = 0) -> dict[str, list[Any]]:
    """Task name -> the chosen cls records (label-balanced, seeded), for the selected slices."""
    import numpy as np

    from gar_tasks.grid import load_task_rows
    from gar_tasks.lm_eval_glue import pair_name
    from gar_tasks.load import load_records

    from .run import select_slices

    if n < 1:
        raise GARConfigError(f"--n must be at least 1, got {n}")
    slices = [s for s in select_slices(tasks, config) if s.family == "cls"]
    if not slices:
        raise GARConfigError(f"task selector {tasks!r} selects no cls task (intervene reports cls accuracy)")
    rows = [pair_name(r.person_schema, r.thing_schema) for r in load_task_rows()]
    by_slice: dict[tuple[int, str], list[Any]] = {(s.n_r, s.pair): [] for s in slices}
    for r in load_records(config):
        if r.family == "cls" and (r.n_r, rows[r.task_row]) in by_slice:
            by_slice[(r.n_r, rows[r.task_row])].append(r)
    out = {}
    for (n_r, pair), recs in by_slice.items():
        rng = np.random.default_rng(seed)
        chosen = []
        for label, k in (("Yes", n - n // 2), ("No", n // 2)):
            pool = [r for r in recs if str(r.label) == label]
            idx = sorted(int(i) for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False))
            chosen += [pool[i] for i in idx]
        if not chosen:
            raise GARConfigError(f"no cls records for {task_name(config, n_r, pair)}")
        out[task_name(config, n_r, pair)] = chosen
    return out


def encode(records: Sequence[Any], tokenizer: Any, tasks: Sequence[str] | None = None,
           add_special_tokens: bool = True) -> Encoded:
    """Prompt ids and the in-context first tokens of ``" Yes"`` / ``" No"`` per record."""
    from .pairs import _ids, _next_tokens

    prompts = [r.prompt for r in records]
    ids = _ids(tokenizer, prompts, add_special_tokens)
    yes = _next_tokens(tokenizer, prompts, ["Yes"] * len(prompts), ids, add_special_tokens)
    no = _next_tokens(tokenizer, prompts, ["No"] * len(prompts), ids, add_special_tokens)
    bad = [r.id for r, y, n_ in zip(records, yes, no) if y == n_]
    if bad:
        raise GARConfigError(f"' Yes' and ' No' start with the same token for record {bad[0]}")
    labels = [str(r.label) for r in records]
    if any(lab not in ("Yes", "No") for lab in labels):
        raise GARConfigError("encode needs cls records (label Yes or No)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return Encoded(ids=ids, yes=yes, no=no, gold_yes=[lab == "Yes" for lab in labels], pad_token_id=int(pad),
                   tasks=list(tasks) if tasks is not None else [""] * len(records))


# ------------------------------------------------------------------------------------------
# scoring


def yes_no_logits(model: Any, enc: Encoded, batch_size: int = 16, intervention: Any = None,
                  progress: Callable[[int, int], Any] | None = None) -> tuple[Any, Any]:
    """``(logit_yes, logit_no)`` per record (float64 numpy arrays, in ``enc`` order).

    Batches of similar length, left-padded, with ``position_ids`` counted from each row's first
    real token. ``intervention`` (label mode) gets each batch's gold labels as ``.labels``.
    """
    import numpy as np
    import torch

    from .model import forward_kwargs

    if batch_size < 1:
        raise GARConfigError(f"--batch-size must be at least 1, got {batch_size}")
    inner = getattr(model, "_module", model)
    device = next(inner.parameters()).device
    extra = forward_kwargs(inner)
    order = sorted(range(len(enc)), key=lambda i: len(enc.ids[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    ly = np.zeros(len(enc))
    ln = np.zeros(len(enc))
    with torch.no_grad():
        for k, idx in enumerate(batches):
            width = max(len(enc.ids[i]) for i in idx)
            ids = torch.full((len(idx), width), enc.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                n = len(enc.ids[i])
                ids[b, width - n:] = torch.tensor(enc.ids[i])
                mask[b, width - n:] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            if intervention is not None:
                intervention.labels = torch.tensor([enc.gold_yes[i] for i in idx], dtype=torch.bool)
            logits = inner(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           **extra).logits[:, -1].float().cpu()
            rows = torch.arange(len(idx))
            ly[idx] = logits[rows, torch.tensor([enc.yes[i] for i in idx])].double().numpy()
            ln[idx] = logits[rows, torch.tensor([enc.no[i] for i in idx])].double().numpy()
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


def cls_accuracy(model: Any, enc: Encoded, batch_size: int = 16, intervention: Any = None) -> tuple[float, float]:
    """``(accuracy, mean margin)`` of ``model`` (with whatever hooks it has) on ``enc``."""
    ly, ln = yes_no_logits(model, enc, batch_size, intervention)
    c, m = correct_and_margin(ly, ln, enc.gold_yes)
    return float(c.mean()), float(m.mean())


def run_arm(model: Any, enc: Encoded, plan: HeadPlan | None, means: Any = None, batch_size: int = 16,
            progress: Callable[[int, int], Any] | None = None) -> tuple[Any, Any]:
    """Per-record ``(correct, margin)`` with ``plan`` installed (``None``: the baseline)."""
    if plan is None:
        ly, ln = yes_no_logits(model, enc, batch_size, progress=progress)
    else:
        with plan.installed(model, means) as iv:
            ly, ln = yes_no_logits(model, enc, batch_size, iv if plan.mode == "label" else None, progress)
    return correct_and_margin(ly, ln, enc.gold_yes)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    import numpy as np

    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "per_draw": [float(x) for x in v]}


def summarize(enc: Encoded, baseline: tuple[Any, Any], targeted: tuple[Any, Any],
              randoms: Sequence[tuple[Any, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-task rows and the overall row: n, each arm's accuracy and mean margin, deltas."""
    import numpy as np

    tasks = list(dict.fromkeys(enc.tasks))
    names = np.asarray(enc.tasks)

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
    return ";".join(f"{l}:{h}" for l, h in heads) or "-"


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


# ------------------------------------------------------------------------------------------
# the run


def _sites(model: str) -> Any:
    """The model's :class:`~interp.sites.HeadSites` from its config alone (no weights loaded yet)."""
    from transformers import AutoConfig

    from .run import check_model_args
    from .sites import head_sites

    check_model_args(model, False)
    if model == "smollm2":
        from gar_tasks.models import embedded_model_path

        return head_sites(AutoConfig.from_pretrained(embedded_model_path()))
    try:
        cfg = AutoConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot load the config of model {model!r} (offline, and not a cached Hub id "
                             f"or a model folder?): {str(e).splitlines()[0]}") from None
    return head_sites(cfg)


def _load(model: str, dtype: str) -> tuple[Any, Any, str]:
    """A plain Hugging Face model (eval mode) and its tokenizer, architecture checked first."""
    from .run import check_model_args, load_model

    if dtype not in ("float32", "bfloat16"):
        raise GARConfigError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    check_model_args(model, False)
    if model == "smollm2":
        from transformers import AutoConfig

        from gar_tasks.models import embedded_model_path, load_embedded

        from .sites import head_sites

        path = embedded_model_path()
        head_sites(AutoConfig.from_pretrained(path))
        hf, tok = load_embedded(dtype=dtype)
        return hf, tok, f"smollm2 ({path})"
    nn_model, tok, desc = load_model(model, dtype, False)
    return nn_model._module.eval(), tok, desc


def run_intervene(args: InterveneArgs, log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run ``gar intervene``; returns the ``intervene.json`` dict. Every argument is checked
    before the first forward, and nothing is written unless the whole run succeeds."""
    import numpy as np

    from .intervene import head_means
    from .run import _atomic_write, _versions
    from .sites import head_sites

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    for name, v in (("--n", args.n), ("--batch-size", args.batch_size), ("--random-draws", args.random_draws)):
        if v < 1:
            raise GARConfigError(f"{name} must be at least 1, got {v}")
    for name, v in (("--factor", args.factor), ("--up", args.up), ("--down", args.down)):
        if v is not None and not math.isfinite(v):
            raise GARConfigError(f"{name} must be a finite number, got {v}")
    plan, source = resolve_plan(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GARConfigError(f"--out {out} exists and is not a folder")
    if args.dtype not in ("float32", "bfloat16"):
        raise GARConfigError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")
    records = choose_records(args.tasks, args.config, args.n, args.seed)
    sites = _sites(args.model)  # every head check before the weights load
    check_heads(plan.all_heads, sites.n_layers, sites.n_heads, "targeted head")
    controls = control_plans(plan, sites.n_layers, sites.n_heads, args.random_draws, args.seed)
    means = source["means"]
    if means is not None:
        import torch

        means = torch.as_tensor(np.asarray(means), dtype=torch.float32)
        want = (sites.n_layers, sites.n_heads, sites.head_dim)
        if tuple(means.shape) != want:
            raise GARConfigError(f"directions.npz 'mean' has shape {tuple(means.shape)}, the model needs {want}")
    model, tok, desc = _load(args.model, args.dtype)
    if head_sites(model) != sites:
        raise GARConfigError(f"model {args.model!r}: loaded model's heads differ from its config's")
    flat = [r for recs in records.values() for r in recs]
    enc = encode(flat, tok, [t for t, recs in records.items() for _ in recs])
    timings = {"load": time.perf_counter() - t0}
    means_source = None
    if plan.mode == "mean":
        t = time.perf_counter()
        if means is None:
            log(f"head means over {len(enc)} prompts")
            means = head_means(model, enc.ids)
            means_source = f"head_means over the {len(enc)} chosen prompts"
        else:
            means_source = f"{source['heads']} directions.npz 'mean'"
        timings["means"] = time.perf_counter() - t

    def arm(name: str, p: HeadPlan | None) -> tuple[Any, Any]:
        t = time.perf_counter()
        res = run_arm(model, enc, p, means, args.batch_size)
        timings[name] = time.perf_counter() - t
        log(f"{name}: acc {res[0].mean():.3f}, margin {res[1].mean():+.3f} ({timings[name]:.1f}s)")
        return res

    base = arm("baseline", None)
    targ = arm("targeted", plan)
    rand = [arm(f"random_{i}", c) for i, c in enumerate(controls)]
    rows, overall = summarize(enc, base, targ, rand)
    settings = {**asdict(args), "model_desc": desc}
    info = {"command": "intervene", "settings": settings, "model_type": sites.model_type,
            "n_layers": sites.n_layers, "n_heads": sites.n_heads, "heads_source": source["heads"],
            "means_source": means_source, "targeted_heads": plan.to_dict(),
            "random_draws": [{"seed": args.seed + i, **c.to_dict()} for i, c in enumerate(controls)],
            "tasks": rows, "overall": overall, "versions": _versions(), "timings_s": timings}
    md = report_md(info)
    timings["total"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "intervene.md", md)
    _atomic_write(out / "intervene.json", json.dumps(info, indent=1, default=float))
    info["markdown"] = md
    log(f"wrote {', '.join(OUTPUTS)} to {out}")
    return info


__all__ = ["ARMS", "DEFAULT_TASKS", "Encoded", "HeadPlan", "InterveneArgs", "check_heads", "choose_records",
           "cls_accuracy", "control_plans", "correct_and_margin", "encode", "report_md", "resolve_plan",
           "run_arm", "run_intervene", "summarize", "task_name", "yes_no_logits"]
