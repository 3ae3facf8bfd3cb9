"""``gar patch``: AtP over every head, exact patching of the top-K plus K random heads, outputs.

Records are selected with the task selector grammar of :mod:`interp.core.select`. Pairs are made
per task family (:func:`interp.pairs.make_pairs`), and ``--n`` of them are chosen per family with
``--seed``. Each family gets its own AtP scores, exact check and heatmap.

Checkpoint (``OUT/checkpoint/``, :class:`interp.core.outputs.Checkpoint`): ``args.json`` (the
arguments that define the run; another run's checkpoint is refused), ``pairs.json`` (the chosen
pairs, ``Pairs.to_dict`` per family), one ``atp_<family>_<batch>.npz`` per finished AtP batch (sums
over the batch's pairs of the ``[L,H]`` scores and of the ``[L,H,R]`` role scores),
``heads_<family>.json`` (the heads checked exactly) and one ``exact_<family>_<batch>.npz`` per
finished exact batch (likewise ``graddrop_...`` with ``--grad-drop``). A rerun with the same
arguments loads the finished batches and computes only the rest.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from gar_tasks.errors import GARConfigError

from .. import patching as P
from ..core.encode import FAMILIES
from ..core.loader import check_device, check_dtype, check_model_args, load_model, model_fingerprint
from ..core.outputs import (Checkpoint, Manifest, Timings, atomic_write, check_out_dir, check_unlocked, save_npz,
                            versions, write_json)
from ..core.remote import server_errors
from ..core.select import Slice, filter_records, load_records, sample_indices, select_slices
from ..pairs import Pairs, make_pairs
from ..plots import heatmap
from . import options

NAME = "patch"
CHECKPOINT_VERSION = 1
OUTPUTS = ("scores.npz", "scores.json", "summary.md")
# the checkpoint's files (a user's file of such a name is refused before any work, never replaced)
CHECKPOINT_FILES = ("checkpoint/args.json", "checkpoint/pairs.json", "checkpoint/heads_*.json",
                    *(f"checkpoint/{k}_*_[0-9][0-9][0-9][0-9][0-9].npz" for k in ("atp", "graddrop", "exact")))
# the roles reported per head (the test row's token roles; "other" = every other token)
ROLE_ORDER = ("K", "V", "K'", "V'", "Q", "R", "A", "END")
Progress = Callable[[str, int, int], Any]


@dataclass(frozen=True)
class PatchArgs:
    """What ``gar patch`` was asked (the CLI's flags, one field each)."""

    model: str
    tasks: str
    out: str
    config: str = "paper"
    n: int = 32
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    verify_top: int = 10
    seed: int = 0
    remote: bool = False
    restart: bool = False
    grad_drop: bool = False
    threads: int = 0

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (where it ran and with how many threads does not
        change the scores)."""
        d = asdict(self)
        for k in ("out", "restart", "device", "threads"):
            d.pop(k)
        d["checkpoint_version"] = CHECKPOINT_VERSION
        return d


def check_args(args: PatchArgs) -> list[Slice]:
    """Every check that needs no model; returns the selected slices."""
    for name, v, lo in (("--n", args.n, 1), ("--batch-size", args.batch_size, 1),
                        ("--verify-top", args.verify_top, 1), ("--threads", args.threads, 0)):
        if v < lo:
            raise GARConfigError(f"{name} must be at least {lo}, got {v}")
    check_dtype(args.dtype)
    check_device(args.device)
    slices = select_slices(args.tasks, args.config)
    check_model_args(args.model, args.remote)
    check_out_dir(args.out)
    return slices


def choose_pairs(args: PatchArgs, tokenizer: Any, slices: list[Slice],
                 log: Callable[[str], Any] | None = None) -> dict[str, Pairs]:
    """Per family, ``--n`` pairs drawn with ``--seed`` from the pairs of the selected records; says so
    (through ``log``) when the selection has fewer usable pairs than asked."""
    import numpy as np

    records = filter_records(load_records(args.config), slices)
    out = {}
    for fam in FAMILIES:
        recs = [r for r in records if r.family == fam]
        if not recs:
            continue
        pairs = make_pairs(recs, tokenizer, families=(fam,))
        if len(pairs) == 0:
            raise GARConfigError(f"no usable {fam} pairs in the selection (rejected: {pairs.rejected})")
        if len(pairs) < args.n and log is not None:
            log(f"{fam}: {args.n} pairs asked, the selection has {len(pairs)} usable "
                f"(rejected: {pairs.rejected}); using {len(pairs)}")
        out[fam] = pairs.subset(sample_indices(np.random.default_rng(args.seed), len(pairs), args.n))
    return out


class FamilyRun:
    """The three checkpointed passes (AtP, GradDrop, exact) of one family's pairs."""

    def __init__(self, args: PatchArgs, model: Any, sites: Any, ckpt: Checkpoint, fam: str, pairs: Pairs,
                 progress: Progress | None) -> None:
        self.args, self.model, self.sites, self.ckpt = args, model, sites, ckpt
        self.fam, self.pairs, self.progress = fam, pairs, progress
        self.batches = pairs.batch_indices(args.batch_size)
        self.remote = bool(args.remote)

    def _loop(self, kind: str, compute: Callable[[int], dict[str, Any]]) -> Any:
        return self.ckpt.batches(kind, self.fam, len(self.batches), compute, self.progress, f"{kind} {self.fam}")

    def atp(self, roles: list[str]) -> tuple[Any, Any]:
        import numpy as np

        atp, role_atp = np.zeros(self.sites.shape), np.zeros(self.sites.shape + (len(roles),))

        def compute(i: int) -> dict[str, Any]:
            batch = self.pairs.batch(self.batches[i])
            reduced = P.attribution_batch(self.model, batch, roles=roles, remote=self.remote)  # [L, H, 1 + R]
            return {"atp": reduced[..., 0], "roles": reduced[..., 1:]}

        for d in self._loop("atp", compute):
            atp += d["atp"]
            role_atp += d["roles"]
        return atp / len(self.pairs), role_atp / len(self.pairs)

    def graddrop(self) -> Any:
        """AtP* GradDrop magnitudes, L forward+backward passes per batch."""
        import numpy as np

        gd = np.zeros(self.sites.shape)

        def compute(i: int) -> dict[str, Any]:
            batch = self.pairs.batch(self.batches[i])
            return {"graddrop": P.graddrop_batch(self.model, batch, remote=self.remote).sum(0)}

        for d in self._loop("graddrop", compute):
            gd += d["graddrop"]
        return gd / len(self.pairs)

    def exact(self, heads: list[tuple[int, int]]) -> tuple[Any, float, float]:
        import numpy as np

        sums, clean, corrupt = np.zeros(len(heads)), 0.0, 0.0

        def compute(i: int) -> dict[str, Any]:
            idx = self.batches[i]
            r = P.exact_patch_scores(self.model, self.pairs.subset(idx), heads, batch_size=len(idx),
                                     remote=self.remote)
            return {"sums": np.array([r.scores[h] for h in heads]) * len(idx),
                    "clean": np.array(r.clean_metric * len(idx)), "corrupt": np.array(r.corrupt_metric * len(idx))}

        for d in self._loop("exact", compute):
            sums += d["sums"]
            clean += float(d["clean"])
            corrupt += float(d["corrupt"])
        exact = np.full(self.sites.shape, np.nan)
        for h, s in zip(heads, sums):
            exact[h] = s / len(self.pairs)
        return exact, clean / len(self.pairs), corrupt / len(self.pairs)


def score_family(run: FamilyRun, timings: Timings, arrays: dict[str, Any]) -> dict[str, Any]:
    """AtP (+ GradDrop), the heads to check, exact patching and agreement of one family."""
    import numpy as np

    args, fam, pairs = run.args, run.fam, run.pairs
    roles = list(ROLE_ORDER)
    with timings("atp"):
        atp, role_atp = run.atp(roles)
        if args.grad_drop:
            arrays[f"graddrop_{fam}"] = run.graddrop()
    heads = run.ckpt.value(f"heads_{fam}.json",
                           lambda: P.select_heads(atp, k=args.verify_top, n_random=args.verify_top, seed=args.seed),
                           decode=lambda v: [tuple(h) for h in v])
    with timings("exact"):
        exact, clean, corrupt = run.exact(heads)
    ag = P.agreement(atp, exact, k=args.verify_top) if len(heads) >= 2 else None
    arrays[f"atp_{fam}"], arrays[f"exact_{fam}"], arrays[f"atp_roles_{fam}"] = atp, exact, role_atp
    res = {"n_pairs": len(pairs), "n_batches": len(run.batches), "counts": dict(pairs.counts),
           "rejected": pairs.rejected, "heads_checked": [list(h) for h in heads],
           "clean_metric": clean, "corrupt_metric": corrupt, "agreement": asdict(ag) if ag else None}
    if args.grad_drop and len(heads) >= 2:  # magnitudes: compare with |exact|
        res["agreement_graddrop"] = asdict(P.agreement(arrays[f"graddrop_{fam}"], np.abs(exact), k=args.verify_top))
    return res


def write_outputs(out: Path, info: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Heatmaps, scores.npz and summary.md (scores.json, holding the write time, comes last)."""
    import numpy as np

    roles = list(ROLE_ORDER)
    arrays["families"] = np.array(list(info["families"]))
    arrays["roles"] = np.array(roles)
    for fam, r in info["families"].items():
        png = out / f"heatmap_{fam}.png"
        heatmap(arrays[f"atp_{fam}"], png, title=f"AtP per head, GAR {fam} ({r['n_pairs']} pairs, "
                f"{info['tasks']}), {Path(info['model'].split(' ')[0]).name}", checked=arrays[f"exact_{fam}"])
        info["plots"].append(png.name)
    save_npz(out / "scores.npz", **arrays)
    atomic_write(out / "summary.md", summary_md(info, arrays, roles))


def run_patch(args: PatchArgs, progress: Progress | None = None, log: Callable[[str], Any] | None = None
              ) -> dict[str, Any]:
    """Run ``gar patch``; returns the ``scores.json`` dict. Raises ``GARConfigError`` before
    writing anything when the arguments cannot work.

    The checkpoint is keyed by the arguments and by what the model is (:func:`model_fingerprint`);
    only files a previous ``gar patch`` wrote are overwritten; the output folder is locked for the run.
    """
    log = log or (lambda msg: None)
    timings = Timings()
    slices = check_args(args)
    out = Path(args.out)
    manifest = Manifest(out, NAME, "scores.json", [*OUTPUTS, "heatmap_*.png", *CHECKPOINT_FILES], legacy_key="families")
    manifest.check()
    fingerprint = model_fingerprint(args.model, args.remote)
    ckpt = Checkpoint(out, {**args.identity(), "model_fingerprint": fingerprint}, manifest,
                      values=("pairs.json", "heads_*.json"))
    check_unlocked(out)
    if not args.restart:
        ckpt.check()  # refuse another run's checkpoint before loading the model
    with timings("load"):
        m = load_model(args.model, args.dtype, args.device, remote=args.remote)
    with manifest.own({"command": NAME, **asdict(args)}):
        with timings("pairs"):
            resumed = ckpt.open(restart=args.restart)
            fams = ckpt.value("pairs.json", lambda: choose_pairs(args, m.tokenizer, slices, log),
                              encode=lambda v: {k: p.to_dict() for k, p in v.items()},
                              decode=lambda v: {k: Pairs.from_dict(p) for k, p in v.items()})
        arrays: dict[str, Any] = {}
        results: dict[str, Any] = {}
        timings.update(atp=0.0, exact=0.0)
        with options.torch_threads(args.threads), server_errors(args.remote):
            for fam, pairs in fams.items():
                run = FamilyRun(args, m.model, m.sites, ckpt, fam, pairs, progress)
                results[fam] = score_family(run, timings, arrays)
        info = {"model": m.desc, "model_arg": args.model, "model_fingerprint": fingerprint,
                "model_type": m.sites.model_type, "n_layers": m.sites.n_layers, "n_heads": m.sites.n_heads,
                "tasks": args.tasks, "config": args.config, "slices": [asdict(s) for s in slices], "n": args.n,
                "batch_size": args.batch_size, "dtype": args.dtype, "device": args.device,
                "verify_top": args.verify_top, "seed": args.seed, "remote": args.remote, "server": m.server,
                "grad_drop": args.grad_drop,
                "resumed": resumed, "batches": dict(ckpt.counts), "families": results, "plots": [],
                "versions": versions(), "timings_s": timings}
        with timings("write"):
            write_outputs(out, info, arrays)
        timings.total()
        write_json(out / "scores.json", manifest.stamp(info, [*OUTPUTS, *info["plots"]]))
    log(f"wrote {', '.join([*OUTPUTS, *info['plots']])} to {out}")
    return info


def top_heads(atp: Any, k: int) -> list[tuple[int, int]]:
    import numpy as np

    flat = np.argsort(-np.abs(atp), axis=None, kind="stable")[:k]
    return [tuple(int(v) for v in np.unravel_index(i, atp.shape)) for i in flat]


def summary_md(info: dict[str, Any], arrays: dict[str, Any], roles: list[str], k: int = 10) -> str:
    import numpy as np

    lines = [f"# gar patch: {info['model_arg']} on `{info['tasks']}` ({info['config']})", "",
             f"{info['n_layers']} layers x {info['n_heads']} heads, dtype {info['dtype']}, "
             f"batch {info['batch_size']}, seed {info['seed']}. Scores: mean change of "
             "logit(clean target) - logit(corrupt target) when the head's output is patched from the "
             "corrupted prompt (negative = the head carries the clean answer).", ""]
    for fam, r in info["families"].items():
        atp, exact, role = arrays[f"atp_{fam}"], arrays[f"exact_{fam}"], arrays[f"atp_roles_{fam}"]
        ag = r["agreement"]
        lines += [f"## {fam}: {r['n_pairs']} pairs", "",
                  f"Rejected pairs: {r['rejected'] or 'none'}. Clean metric {r['clean_metric']:.3f}, "
                  f"corrupted {r['corrupt_metric']:.3f}.", ""]
        if ag:
            lines += [f"AtP vs exact over {ag['n']} checked heads: Pearson {ag['pearson']:.3f}, Spearman "
                      f"{ag['spearman']:.3f}, top-{ag['k']} overlap {ag['topk_overlap']:.2f}.", ""]
        gd = r.get("agreement_graddrop")
        if gd:
            lines += [f"AtP* GradDrop magnitude vs |exact| over the same heads: Spearman {gd['spearman']:.3f}, "
                      f"top-{gd['k']} overlap {gd['topk_overlap']:.2f} (scores in scores.npz `graddrop_{fam}`).", ""]
        lines += ["| rank | head (L.H) | AtP | exact | main roles (share of AtP) |", "|---|---|---|---|---|"]
        for i, (layer, head) in enumerate(top_heads(atp, k), 1):
            total = atp[layer, head]
            parts = list(role[layer, head])
            names = list(roles) + ["other"]
            parts.append(total - sum(parts))
            order = np.argsort(-np.abs(parts))[:3]
            share = ", ".join(f"{names[j]} {parts[j] / total:+.0%}" for j in order if total)
            ex = exact[layer, head]
            lines.append(f"| {i} | {layer}.{head} | {total:+.4f} | {'' if np.isnan(ex) else f'{ex:+.4f}'} | {share} |")
        lines += ["", f"![heatmap](heatmap_{fam}.png)", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# the command line


def register(sub: Any) -> None:
    """Add ``gar patch`` to the ``gar`` subcommands."""
    p = sub.add_parser(NAME, help="attribution patching (AtP) of every attention head, checked exactly",
                       description="Attribution patching (nnsight) of every attention head on GAR clean/corrupted "
                                   "pairs, then exact patching of the top-K heads by |AtP| plus K random ones; "
                                   "writes scores.npz, scores.json, summary.md and one heatmap PNG per family to "
                                   "--out, checkpointing per batch (rerun the same command to resume). "
                                   f"Selectors: {options.SELECTORS}.")
    options.add_model_options(p, remote=True)
    options.add_selection(p, None, 32, "pairs per task family", "pair choice and random heads")
    options.add_run_options(p, 8, "pairs")
    options.add_knob(p, "--verify-top", "exact-patch the top K heads by |AtP| plus K random heads", default=10,
                     metavar="K")
    options.add_restart(p)
    p.add_argument("--grad-drop", action="store_true",
                   help="also compute AtP* GradDrop magnitudes (L times the AtP cost; see interp.patching)")
    options.add_out(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    pa = PatchArgs(model=args.model, tasks=args.tasks, out=args.out, config=args.config, n=args.n,
                   batch_size=args.batch_size, dtype=args.dtype, device=args.device, verify_top=args.verify_top,
                   seed=args.seed, remote=args.remote, restart=args.restart, grad_drop=args.grad_drop,
                   threads=args.threads)
    log = options.stderr_log(args)
    info = run_patch(pa, progress=lambda stage, done, total: log(f"{stage}: batch {done}/{total}"),
                     log=lambda m: print(m, file=sys.stderr))
    for fam, r in info["families"].items():
        ag = r["agreement"] or {}
        print(f"{fam}: {r['n_pairs']} pairs, AtP vs exact on {ag.get('n')} heads: "
              f"spearman {ag.get('spearman', float('nan')):.3f}, pearson {ag.get('pearson', float('nan')):.3f}, "
              f"top-{ag.get('k')} overlap {ag.get('topk_overlap', float('nan')):.2f}")
    print(f"wrote {args.out}")
    return 0


__all__ = ["OUTPUTS", "PatchArgs", "ROLE_ORDER", "check_args", "choose_pairs", "main", "register", "run_patch",
           "summary_md", "top_heads"]
