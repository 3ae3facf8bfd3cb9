"""``gar heads``: True/False head discovery on the GAR cls (Yes/No) tasks (the analysis: :mod:`interp.heads`).

Outputs (``--out DIR``, each file written atomically): ``heads.json``, ``directions.npz``,
``heads.png``, ``summary.md``. ``DIR`` may be new, empty, or a previous ``gar heads`` output
(overwritten); any other non-empty folder is refused.
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from gar_tasks.errors import GARConfigError

from ..core.encode import ClsPrompts, encode_cls
from ..core.loader import check_dtype, check_device, check_model_args, load_model
from ..core.outputs import (MANIFEST, Manifest, Timings, atomic_write, check_out_dir, check_unlocked, is_leftover,
                            save_npz, versions, write_json)
from ..core.remote import server_errors
from ..core.select import Selection, Slice, choose_twins, load_records, select_slices
from ..heads import (OUTPUTS, Effects, atp_overlap, atp_ranks, discovery_score, head_effects, plot_heads, score_heads,
                     summary_md, top_labelled)
from . import options

NAME = "heads"
Progress = Callable[[int, int], Any]


@dataclass(frozen=True)
class HeadsArgs:
    """What ``gar heads`` was asked (the CLI's flags, one field each)."""

    model: str
    out: str
    tasks: str = options.DEFAULT_CLS_TASKS
    config: str = "paper"
    n: int = 64
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    top: int = 10
    min_consistency: float = 0.75
    seed: int = 0
    threads: int = 0  # 0 = torch's default (all cores)
    remote: bool = False

    def command(self) -> str:
        """The ``gar heads`` command line that reproduces this run (every setting explicit)."""
        parts = ["gar", "heads", "--model", self.model, "--out", self.out, "--tasks", self.tasks,
                 "--config", self.config, "--n", str(self.n), "--batch-size", str(self.batch_size),
                 "--dtype", self.dtype, "--device", self.device, "--top", str(self.top),
                 "--min-consistency", str(self.min_consistency), "--seed", str(self.seed),
                 "--threads", str(self.threads)] + (["--remote"] if self.remote else [])
        return " ".join(shlex.quote(p) for p in parts)


def manifest(out: Path) -> Manifest:
    return Manifest(out, NAME, "heads.json", OUTPUTS, legacy_key="true_heads")


def check_out(out: Path, locked: bool = False) -> None:
    """A new or empty folder, or a previous ``gar heads`` output (whose files it wrote); ``locked``:
    this run holds the folder's lock (else another run's lock is refused here)."""
    check_out_dir(out)
    if not locked:
        check_unlocked(out)
    m = manifest(out)
    m.check()
    if out.is_dir():
        owned = m.owned()
        other = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS and p.name != MANIFEST
                       and not is_leftover(p.name, OUTPUTS) and not m.owns(p.name, owned))
        if other:
            raise GARConfigError(f"--out {out} is not empty and is not a previous gar heads output "
                                 f"(it holds {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
                                 "choose a new or empty folder")


def check_args(args: HeadsArgs) -> None:
    for name, v in (("--n", args.n), ("--batch-size", args.batch_size), ("--top", args.top)):
        if v < 1:
            raise GARConfigError(f"{name} must be at least 1, got {v}")
    if args.threads < 0:
        raise GARConfigError(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    if not 0 <= args.min_consistency <= 1:
        raise GARConfigError(f"--min-consistency must be between 0 and 1, got {args.min_consistency}")
    check_dtype(args.dtype)
    check_device(args.device)


def finite(x: Any) -> Any:
    """JSON-safe float (NaN/inf -> None)."""
    x = float(x)
    return x if math.isfinite(x) else None


def cls_slices(args: HeadsArgs) -> list[Slice]:
    """The selected slices; refuses a selection without a cls task."""
    slices = select_slices(args.tasks, args.config)
    if not any(s.family == "cls" for s in slices):
        raise GARConfigError(f"--tasks {args.tasks!r} selects no cls task (head discovery needs Yes/No tasks)")
    return slices


def choose(args: HeadsArgs, slices: list[Slice]) -> Selection:
    """The chosen cls records: whole twin pairs per task."""
    sel = choose_twins(load_records(args.config), slices, args.n, args.seed)
    if not sel.records:
        raise GARConfigError(f"no cls records in the selection {args.tasks!r} ({args.config})")
    return sel


def head_rows(sc: dict[str, Any], eff: Effects, n_layers: int, n_heads: int) -> list[dict[str, Any]]:
    """One JSON row per head, ranked (labelled heads first, by discovery score)."""
    import numpy as np

    ranks = atp_ranks(eff.atp)
    disc = discovery_score(sc)
    heads = []
    for layer in range(n_layers):
        for head in range(n_heads):
            h = (layer, head)
            heads.append({
                "layer": layer, "head": head, "kind": str(sc["kind"][h]),
                "score_true": finite(sc["score_true"][h]), "score_false": finite(sc["score_false"][h]),
                "consistency_true": finite(sc["consistency_true"][h]),
                "consistency_false": finite(sc["consistency_false"][h]),
                "specific_true": finite(sc["specific_true"][h]), "specific_false": finite(sc["specific_false"][h]),
                "effect_true": finite(sc["effect_true"][h]), "effect_false": finite(sc["effect_false"][h]),
                "effect_on_no": finite(sc["opposite_true"][h]), "effect_on_yes": finite(sc["effect_true"][h]),
                "d_true": finite(sc["d_true"][h]), "d_false": finite(sc["d_false"][h]),
                "effects_true_per_task": [finite(v) for v in sc["Y"][(slice(None),) + h]],
                "effects_false_per_task": [finite(v) for v in sc["F"][(slice(None),) + h]],
                "atp": finite(eff.atp[h]), "atp_rank": int(ranks[h]) if eff.n_atp_pairs else None,
                "_key": (sc["kind"][h] == "none", -np.nan_to_num(disc[h], nan=-np.inf))})
    heads.sort(key=lambda d: d.pop("_key"))
    for i, d in enumerate(heads, 1):
        d["rank"] = i
    return heads


def per_task_rows(rs: ClsPrompts, eff: Effects) -> list[dict[str, Any]]:
    """Records, labels, model accuracy and mean metric per task."""
    import numpy as np

    labels = np.asarray(rs.labels, dtype=bool)
    ti = np.asarray(rs.task_index, dtype=int)
    rows = []
    for k, name in enumerate(rs.tasks):
        sel = ti == k
        rows.append({"task": name, "n": int(sel.sum()), "n_yes": int((sel & labels).sum()),
                     "n_no": int((sel & ~labels).sum()),
                     "accuracy": finite(((eff.metric[sel] > 0) == labels[sel]).mean()) if sel.any() else None,
                     "mean_metric_yes": finite(eff.metric[sel & labels].mean()) if (sel & labels).any() else None,
                     "mean_metric_no": finite(eff.metric[sel & ~labels].mean()) if (sel & ~labels).any() else None})
    return rows


def write_outputs(out: Path, info: dict[str, Any], rs: ClsPrompts, eff: Effects, sc: dict[str, Any]) -> None:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(rs.labels, dtype=bool)
    save_npz(out / "directions.npz", direction=eff.direction.astype(np.float32), mean=eff.mean.astype(np.float32),
             effects=eff.effects.astype(np.float32), labels=labels.astype(np.int8),
             task_index=np.asarray(rs.task_index, dtype=int), tasks=np.array(rs.tasks),
             record_ids=np.array(rs.record_ids), metric=eff.metric.astype(np.float32),
             atp=eff.atp.astype(np.float32), score_true=sc["score_true"], score_false=sc["score_false"],
             consistency_true=sc["consistency_true"], consistency_false=sc["consistency_false"])
    plot_heads(sc, out / "heads.png", [tuple(h) for h in info["true_heads"]], [tuple(h) for h in info["false_heads"]],
               title=f"{Path(info['model'].split(' ')[0]).name}: {len(rs)} cls records, {len(rs.tasks)} tasks")
    atomic_write(out / "summary.md", summary_md(info))


def run_heads(args: HeadsArgs, progress: Progress | None = None, log: Callable[[str], Any] | None = None
              ) -> dict[str, Any]:
    """Run ``gar heads``; returns the ``heads.json`` dict. Bad input raises ``GARConfigError``
    before anything is loaded or written."""
    import numpy as np

    log = log or (lambda msg: None)
    timings = Timings()
    check_args(args)
    out = Path(args.out)
    with timings("records"):
        slices = cls_slices(args)
        check_out(out)
        check_model_args(args.model, args.remote)
        sel = choose(args, slices)
    with timings("load"):
        m = load_model(args.model, args.dtype, args.device, remote=args.remote)
        sites = m.sites
        rs = encode_cls(sel.records, m.tokenizer, sel.task_index, sel.tasks)
    log(f"{len(rs)} records in {len(rs.tasks)} tasks, {len(rs.twin_batches(args.batch_size))} batches; "
        f"{sites.n_layers} layers x {sites.n_heads} heads")
    with timings("pass"), options.torch_threads(args.threads), server_errors(args.remote):
        eff = head_effects(m.model, rs, args.batch_size, progress=progress, remote=args.remote)
    with timings("score"):
        labels = np.asarray(rs.labels, dtype=bool)
        sc = score_heads(eff.effects, labels, np.asarray(rs.task_index, dtype=int), len(rs.tasks),
                         args.min_consistency)
        true_heads, false_heads = top_labelled(sc, "true", args.top), top_labelled(sc, "false", args.top)
        info: dict[str, Any] = {
            "model": m.desc, "model_arg": args.model, "model_type": sites.model_type,
            "n_layers": sites.n_layers, "n_heads": sites.n_heads, "head_dim": sites.head_dim,
            "tasks": rs.tasks, "settings": {k: v for k, v in asdict(args).items() if k != "out"},
            "command": args.command(),
            "counts": {"records": len(rs), "yes": int(labels.sum()), "no": int((~labels).sum()),
                       "tasks": len(rs.tasks), "atp_pairs": eff.n_atp_pairs, "per_task": per_task_rows(rs, eff)},
            "true_heads": [list(h) for h in true_heads], "false_heads": [list(h) for h in false_heads],
            "n_labelled": {"true": int(sc["is_true"].sum()), "false": int(sc["is_false"].sum())},
            "atp_overlap": atp_overlap(eff.atp, sc, args.top),
            "heads": head_rows(sc, eff, sites.n_layers, sites.n_heads), "versions": versions(),
            "timings_s": timings,
            "score": "score_true = mean_t Y - max(0, mean_t N); score_false = mean_t F - max(0, mean_t Y); "
                     "Y/N = mean attribution (vs mean ablation) on logit(Yes)-logit(No) over gold-Yes/-No "
                     "records of task t, F = -N; labelled if consistency >= min_consistency and score > 0",
        }
    info["model_fingerprint"] = m.fingerprint
    info["server"] = m.server
    with manifest(out).own({"command": NAME, **asdict(args)}, check=lambda: check_out(out, locked=True)):
        with timings("write"):
            write_outputs(out, info, rs, eff, sc)
        timings.total()
        write_json(out / "heads.json", manifest(out).stamp(info, OUTPUTS))
    log(f"wrote {', '.join(OUTPUTS)} to {out}")
    return info


# ------------------------------------------------------------------------------------------
# the command line


def register(sub: Any) -> None:
    """Add ``gar heads`` to the ``gar`` subcommands."""
    p = sub.add_parser(NAME, help="discover True/False heads on the GAR cls (Yes/No) tasks",
                       description="Rank attention heads by their effect on logit(Yes) - logit(No) (attribution "
                                   "against mean ablation, one forward+backward per batch): True heads push Yes "
                                   "on true statements, False heads push No on false ones, consistently across "
                                   "tasks (one task = one cls slice). Reports consistency, effect sizes and the "
                                   "overlap with plain AtP on the Yes/No twin pairs. Writes heads.json, "
                                   "directions.npz, heads.png and summary.md to --out (a new or empty folder, or "
                                   "a previous gar heads output, which is overwritten).")
    options.add_model_options(p, remote=True)
    options.add_out(p)
    options.add_selection(p, options.DEFAULT_CLS_TASKS, 64, "records per task, whole Yes/No twin pairs",
                          "record choice", "which GAR tasks (cls slices are used; e.g. cls for all)")
    options.add_run_options(p, 8, "records")
    options.add_knob(p, "--top", "report the top K True and K False heads; AtP top-K overlap", default=10,
                     metavar="K")
    options.add_knob(p, "--min-consistency", "a head is labelled when its sign holds in at least this fraction "
                                             "of tasks", default=0.75, metavar="C")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    ha = HeadsArgs(model=args.model, out=args.out, tasks=args.tasks, config=args.config, n=args.n,
                   batch_size=args.batch_size, dtype=args.dtype, device=args.device, top=args.top,
                   min_consistency=args.min_consistency, seed=args.seed, threads=args.threads,
                   remote=args.remote)
    log = options.stderr_log(args)
    info = run_heads(ha, progress=lambda done, total: log(f"heads: batch {done}/{total}"), log=log)
    ov = info["atp_overlap"]
    fmt = lambda hs: " ".join(f"{a}.{b}" for a, b in hs) or "none"  # noqa: E731
    print(f"{info['counts']['records']} records, {info['counts']['tasks']} tasks; "
          f"True heads: {fmt(info['true_heads'])}; False heads: {fmt(info['false_heads'])}")
    if ov["overlap"] is not None:
        print(f"AtP top-{ov['k']} overlap {ov['overlap']}/{ov['k']}, spearman {ov['spearman']:.3f}")
    print(f"wrote {args.out}")
    return 0


__all__ = ["HeadsArgs", "NAME", "check_args", "check_out", "choose", "cls_slices", "main", "register", "run_heads"]
