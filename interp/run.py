"""``gar patch``: AtP over every head, exact patching of the top-K plus K random heads, outputs.

Task selector grammar (``--tasks``): a comma list of terms, the union of what each selects, within
the chosen dataset config (``paper`` or ``v1``):

* ``all``, or the config's group name (``gar`` / ``gar_v1``): every task;
* a family: ``cls`` or ``gen``; an n_r: ``nr0``, ``nr1``, ``nr2``; both: ``cls_nr1``;
* a schema pair name: ``gender_city``, ``occupation_kind``, ... (``lm_eval_glue.pair_name``);
* any lm-eval leaf or group name of that config's ``gar`` tree: ``gar_cls``, ``gar_cls_nr1``,
  ``gar_cls_nr1_gender_city`` (``gar_v1_...`` with ``--config v1``).

Pairs are made per task family (``interp.pairs.make_pairs``), and ``--n`` of them are chosen per
family with ``--seed``. Each family gets its own AtP scores, exact check and heatmap.

Checkpoint (``OUT/checkpoint/``): ``args.json`` (the arguments that define the run; another
run's checkpoint is refused), ``pairs.json`` (the chosen pairs, ``Pairs.to_dict`` per family),
one ``atp_<family>_<batch>.npz`` per finished AtP batch (sums over the batch's pairs of the
``[L,H]`` scores and of the ``[L,H,R]`` role scores), ``heads_<family>.json`` (the heads checked
exactly) and one ``exact_<family>_<batch>.npz`` per finished exact batch. Every file is written
to a temporary name and renamed, so an interruption leaves only whole files; a rerun with the
same arguments loads the finished batches and computes only the rest.
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from gar_tasks.errors import GARConfigError

from . import patching as P
from .pairs import FAMILIES, Pairs

CHECKPOINT_VERSION = 1
OUTPUTS = ("scores.npz", "scores.json", "summary.md")
# the roles reported per head (the test row's token roles; "other" = every other token)
ROLE_ORDER = ("K", "V", "K'", "V'", "Q", "R", "A", "END")
SELECTOR_HELP = ("valid forms: all | gar | cls | gen | nr0..nr2 | cls_nr1 | a pair name (e.g. gender_city) | "
                 "an lm-eval leaf or group name of the config (e.g. gar_cls, gar_cls_nr1, "
                 "gar_cls_nr1_gender_city); comma-separate several")


# ------------------------------------------------------------------------------------------
# task selection


@dataclass(frozen=True)
class Slice:
    family: str
    n_r: int
    pair: str


def _leaves(config: str) -> tuple[list[Slice], dict[str, list[Slice]]]:
    """Every (family, n_r, pair) slice of ``config`` and the lm-eval names selecting them."""
    from gar_tasks.lm_eval_glue import TASK_PREFIX, task_tree

    if config not in TASK_PREFIX:
        raise GARConfigError(f"unknown config {config!r}; choose from {', '.join(TASK_PREFIX)}")
    tree = task_tree()
    names: dict[str, list[Slice]] = {}
    slices = []
    for leaf in tree.leaves:
        if leaf.config == config and leaf.n_r is not None and leaf.pair is not None:
            s = Slice(leaf.family, leaf.n_r, leaf.pair)
            slices.append(s)
            names[leaf.name] = [s]
    groups = {g.name: g.tasks for g in tree.groups}

    def expand(name: str) -> list[Slice]:
        if name in names:
            return names[name]
        return [s for t in groups.get(name, ()) for s in expand(t)]

    for g in groups:
        got = expand(g)
        if got:
            names[g] = got
    return slices, names


def select_slices(selector: str, config: str = "paper") -> list[Slice]:
    """The slices a selector names (see the module docstring); unknown terms are an error."""
    slices, names = _leaves(config)
    terms = [t.strip() for t in str(selector).split(",") if t.strip()]
    if not terms:
        raise GARConfigError(f"empty task selector; {SELECTOR_HELP}")
    pairs = {s.pair for s in slices}
    chosen: set[Slice] = set()
    for term in terms:
        m = re.fullmatch(r"(?:(cls|gen)_)?nr(\d+)|(cls|gen)", term)
        if term == "all":
            got = slices
        elif term in names:
            got = names[term]
        elif term in pairs:
            got = [s for s in slices if s.pair == term]
        elif m:
            fam = m.group(1) or m.group(3)
            n_r = None if m.group(2) is None else int(m.group(2))
            got = [s for s in slices if (fam is None or s.family == fam) and (n_r is None or s.n_r == n_r)]
        else:
            got = []
        if not got:
            raise GARConfigError(f"unknown task selector {term!r} for config {config!r}; {SELECTOR_HELP}")
        chosen.update(got)
    return sorted(chosen, key=lambda s: (s.family, s.n_r, s.pair))


# ------------------------------------------------------------------------------------------
# small helpers


def _atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npz(path: Path, **arrays: Any) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(path, buf.getvalue())


def _checkpointed(ckpt, name: str, compute, computed: dict, kind: str) -> dict:
    """One batch's partial sums: loaded from the checkpoint if finished before, else computed and saved."""
    f = ckpt.path(name)
    if f.exists():
        computed[f"{kind}_batches_loaded"] += 1
        return _load_npz(f)
    d = compute()
    _save_npz(f, **d)
    computed[f"{kind}_batches"] += 1
    return d


def _load_npz(path: Path) -> dict[str, Any]:
    import numpy as np

    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "nnsight", "numpy", "gar-eval"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------------------------------
# the model


def _is_hub_id(name: str) -> bool:
    from .model import _HUB_ID

    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def check_model_args(model: str, remote: bool) -> None:
    """Refuse what cannot work before anything is loaded or written."""
    if remote:
        if model == "smollm2" or not _is_hub_id(model):
            raise GARConfigError(f"--remote needs a Hub model id (ORG/NAME): NDIF runs its own copy of the "
                                 f"checkpoint and local weights never travel; {model!r} is local")
        from .model import _api_key

        if not _api_key():
            raise GARConfigError("--remote needs an NDIF API key: set NDIF_API_KEY")
    elif model != "smollm2" and not Path(model).expanduser().is_dir() and not _is_hub_id(model):
        raise GARConfigError(f"--model {model!r} is neither a local model folder, 'smollm2', nor a Hub id")


def load_model(model: str, dtype: str, remote: bool) -> tuple[Any, Any, str]:
    """``(nnsight model, tokenizer, description)``; the architecture is checked from the config first."""
    import torch

    from .model import as_nnsight
    from .sites import head_sites

    if dtype not in ("float32", "bfloat16"):
        raise GARConfigError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if model == "smollm2":
        from gar_tasks.models import embedded_model_path, load_embedded

        path = embedded_model_path()
        from transformers import AutoConfig

        head_sites(AutoConfig.from_pretrained(path))
        hf, tok = load_embedded(dtype=dtype)
        return as_nnsight(hf, tok), tok, f"smollm2 ({path})"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        cfg = AutoConfig.from_pretrained(model, local_files_only=not remote)
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot load the config of model {model!r} (offline, and not a cached Hub id "
                             f"or a model folder?): {str(e).splitlines()[0]}") from None
    head_sites(cfg)  # unsupported architecture: error before the weights load
    try:
        tok = AutoTokenizer.from_pretrained(model, use_fast=True)
        if remote:
            from nnsight.modeling.transformers import TransformersModel

            return TransformersModel(model), tok, model
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
    return as_nnsight(hf, tok), tok, str(model)


# ------------------------------------------------------------------------------------------
# the run


@dataclass(frozen=True)
class PatchArgs:
    model: str
    tasks: str
    out: str
    config: str = "paper"
    n: int = 32
    batch_size: int = 8
    dtype: str = "float32"
    verify_top: int = 10
    seed: int = 0
    remote: bool = False
    restart: bool = False
    grad_drop: bool = False

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed."""
        d = asdict(self)
        for k in ("out", "restart"):
            d.pop(k)
        d["checkpoint_version"] = CHECKPOINT_VERSION
        return d


Progress = Callable[[str, int, int], Any]


def _choose_pairs(args: PatchArgs, tokenizer: Any, slices: list[Slice]) -> dict[str, Pairs]:
    import numpy as np

    from gar_tasks.grid import load_task_rows
    from gar_tasks.lm_eval_glue import pair_name
    from gar_tasks.load import load_records

    from .pairs import make_pairs

    rows = [pair_name(r.person_schema, r.thing_schema) for r in load_task_rows()]
    wanted = {(s.family, s.n_r, s.pair) for s in slices}
    records = [r for r in load_records(args.config) if (r.family, r.n_r, rows[r.task_row]) in wanted]
    out = {}
    for fam in FAMILIES:
        recs = [r for r in records if r.family == fam]
        if not recs:
            continue
        pairs = make_pairs(recs, tokenizer, families=(fam,))
        if len(pairs) == 0:
            raise GARConfigError(f"no usable {fam} pairs in the selection (rejected: {pairs.rejected})")
        rng = np.random.default_rng(args.seed)
        idx = sorted(int(i) for i in rng.choice(len(pairs), size=min(args.n, len(pairs)), replace=False))
        out[fam] = pairs.subset(idx)
    return out


def _role_sums(terms: Any, batch: Any, roles: list[str]) -> Any:
    import numpy as np

    out = np.zeros(terms.shape[2:] + (len(roles),))
    for b, row_roles in enumerate(batch.roles):
        for k, role in enumerate(roles):
            for s, e in row_roles.get(role, []):
                out[..., k] += terms[b, s:e].sum(0)
    return out


class Checkpoint:
    def __init__(self, out: Path):
        self.dir = Path(out) / "checkpoint"

    def open(self, args: PatchArgs) -> bool:
        """True when a matching checkpoint exists; refuses a different run's."""
        import shutil

        f = self.dir / "args.json"
        if args.restart and self.dir.exists():
            shutil.rmtree(self.dir)
        if f.exists():
            old = json.loads(f.read_text())
            new = args.identity()
            if old != new:
                diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                                 if old.get(k) != new.get(k))
                raise GARConfigError(f"{self.dir} holds a checkpoint of a run with other arguments ({diff}); "
                                     "pass --restart to discard it, or choose another --out")
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(f, json.dumps(args.identity(), indent=1))
        return False

    def path(self, name: str) -> Path:
        return self.dir / name


def run_patch(args: PatchArgs, progress: Progress | None = None, log: Callable[[str], Any] | None = None
              ) -> dict[str, Any]:
    """Run ``gar patch``; returns the ``scores.json`` dict. Raises ``GARConfigError`` before
    writing anything when the arguments cannot work."""
    import numpy as np

    from .sites import head_sites

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    for name, v, lo in (("--n", args.n, 1), ("--batch-size", args.batch_size, 1), ("--verify-top", args.verify_top, 1)):
        if v < lo:
            raise GARConfigError(f"{name} must be at least {lo}, got {v}")
    if args.dtype not in ("float32", "bfloat16"):
        raise GARConfigError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")
    slices = select_slices(args.tasks, args.config)
    check_model_args(args.model, args.remote)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GARConfigError(f"--out {out} exists and is not a folder")
    ckpt = Checkpoint(out)
    ckpt_file = ckpt.path("args.json")
    if ckpt_file.exists() and not args.restart:  # refuse a mismatch before loading the model
        old = json.loads(ckpt_file.read_text())
        if old != args.identity():
            ckpt.open(args)  # raises with the difference
    nn_model, tok, model_desc = load_model(args.model, args.dtype, args.remote)
    sites = head_sites(nn_model)
    timings: dict[str, float] = {"load": time.perf_counter() - t0}

    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    resumed = ckpt.open(args)
    pairs_file = ckpt.path("pairs.json")
    if pairs_file.exists():
        fams = {k: Pairs.from_dict(v) for k, v in json.loads(pairs_file.read_text()).items()}
    else:
        fams = _choose_pairs(args, tok, slices)
        _atomic_write(pairs_file, json.dumps({k: v.to_dict() for k, v in fams.items()}))
    timings["pairs"] = time.perf_counter() - t
    remote = bool(args.remote)
    roles = list(ROLE_ORDER)
    results: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    computed = {"atp_batches": 0, "exact_batches": 0, "atp_batches_loaded": 0, "exact_batches_loaded": 0}
    if args.grad_drop:
        computed.update(graddrop_batches=0, graddrop_batches_loaded=0)
    t_atp = t_exact = 0.0
    for fam, pairs in fams.items():
        batches = pairs.batch_indices(args.batch_size)
        atp = np.zeros(sites.shape)
        role_atp = np.zeros(sites.shape + (len(roles),))
        t = time.perf_counter()
        for i, idx in enumerate(batches):
            def atp_batch(idx=idx):
                batch = pairs.batch(idx)
                terms = P.attribution_batch(nn_model, batch, remote=remote)  # [B,T,L,H]
                return {"atp": terms.sum((0, 1)), "roles": _role_sums(terms, batch, roles)}

            d = _checkpointed(ckpt, f"atp_{fam}_{i:05d}.npz", atp_batch, computed, "atp")
            atp += d["atp"]
            role_atp += d["roles"]
            if progress is not None:
                progress(f"atp {fam}", i + 1, len(batches))
        if args.grad_drop:  # AtP* GradDrop magnitudes, L forward+backward passes per batch
            gd = np.zeros(sites.shape)
            for i, idx in enumerate(batches):
                def gd_batch(idx=idx):
                    return {"graddrop": P.graddrop_batch(nn_model, pairs.batch(idx), remote=remote).sum(0)}

                gd += _checkpointed(ckpt, f"graddrop_{fam}_{i:05d}.npz", gd_batch, computed, "graddrop")["graddrop"]
                if progress is not None:
                    progress(f"graddrop {fam}", i + 1, len(batches))
            arrays[f"graddrop_{fam}"] = gd / len(pairs)
        t_atp += time.perf_counter() - t
        atp /= len(pairs)
        role_atp /= len(pairs)
        hf = ckpt.path(f"heads_{fam}.json")
        if hf.exists():
            heads = [tuple(h) for h in json.loads(hf.read_text())]
        else:
            heads = P.select_heads(atp, k=args.verify_top, n_random=args.verify_top, seed=args.seed)
            _atomic_write(hf, json.dumps(heads))
        sums = np.zeros(len(heads))
        clean = corrupt = 0.0
        t = time.perf_counter()
        for i, idx in enumerate(batches):
            def exact_batch(idx=idx):
                r = P.exact_patch_scores(nn_model, pairs.subset(idx), heads, batch_size=len(idx), remote=remote)
                return {"sums": np.array([r.scores[h] for h in heads]) * len(idx),
                        "clean": np.array(r.clean_metric * len(idx)), "corrupt": np.array(r.corrupt_metric * len(idx))}

            d = _checkpointed(ckpt, f"exact_{fam}_{i:05d}.npz", exact_batch, computed, "exact")
            sums += d["sums"]
            clean += float(d["clean"])
            corrupt += float(d["corrupt"])
            if progress is not None:
                progress(f"exact {fam}", i + 1, len(batches))
        t_exact += time.perf_counter() - t
        exact = np.full(sites.shape, np.nan)
        for h, s in zip(heads, sums):
            exact[h] = s / len(pairs)
        ag = P.agreement(atp, exact, k=args.verify_top) if len(heads) >= 2 else None
        arrays[f"atp_{fam}"], arrays[f"exact_{fam}"], arrays[f"atp_roles_{fam}"] = atp, exact, role_atp
        results[fam] = {"n_pairs": len(pairs), "n_batches": len(batches), "counts": dict(pairs.counts),
                        "rejected": pairs.rejected, "heads_checked": [list(h) for h in heads],
                        "clean_metric": clean / len(pairs), "corrupt_metric": corrupt / len(pairs),
                        "agreement": asdict(ag) if ag else None}
        if args.grad_drop and len(heads) >= 2:  # magnitudes: compare with |exact|
            gd_ag = P.agreement(arrays[f"graddrop_{fam}"], np.abs(exact), k=args.verify_top)
            results[fam]["agreement_graddrop"] = asdict(gd_ag)
    timings.update(atp=t_atp, exact=t_exact)

    # outputs: each written to a temporary file and renamed
    t = time.perf_counter()
    arrays["families"] = np.array(list(fams))
    arrays["roles"] = np.array(roles)
    plots = []
    from .plots import heatmap

    for fam in fams:
        png = out / f"heatmap_{fam}.png"
        heatmap(arrays[f"atp_{fam}"], png, title=f"AtP per head, GAR {fam} ({results[fam]['n_pairs']} pairs, "
                f"{args.tasks}), {Path(model_desc.split(' ')[0]).name}", checked=arrays[f"exact_{fam}"])
        plots.append(png.name)
    info = {"model": model_desc, "model_arg": args.model, "model_type": sites.model_type,
            "n_layers": sites.n_layers, "n_heads": sites.n_heads, "tasks": args.tasks, "config": args.config,
            "slices": [asdict(s) for s in slices], "n": args.n, "batch_size": args.batch_size,
            "dtype": args.dtype, "verify_top": args.verify_top, "seed": args.seed, "remote": args.remote,
            "grad_drop": args.grad_drop,
            "resumed": resumed, "batches": computed, "families": results, "plots": plots,
            "versions": _versions(), "timings_s": timings}
    _save_npz(out / "scores.npz", **arrays)
    _atomic_write(out / "summary.md", summary_md(info, arrays, roles))
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    _atomic_write(out / "scores.json", json.dumps(info, indent=1, default=float))
    log(f"wrote {', '.join([*OUTPUTS, *plots])} to {out}")
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


__all__ = ["PatchArgs", "Slice", "run_patch", "select_slices", "summary_md", "top_heads"]
