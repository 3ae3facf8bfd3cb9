"""``gar probe``: the seed's MLP truth probe on per-head features (SNLI and Geometry of Truth).

Two modes:

* ``--seed-features``: the seed's released Vicuna-33B features (the CSV files of
  ``reference/mlp/``): SNLI with the 4 paper heads and with all 8, and the 4 GoT datasets, test
  accuracy mean +- std beside the figures the seed reports (:data:`SEED_REPORTED`). This checks
  the trainer (:mod:`interp.probe`) before it is trusted on features of our own.
* ``--model MODEL --heads DIR``: features of our own model on the zero-shot texts, for the True
  and False heads that ``gar heads`` found (``DIR/heads.json``: ``true_heads`` / ``false_heads``,
  lists of ``[layer, head]``, best first; ``DIR/directions.npz``: ``direction`` ``[layers, heads,
  head_dim]``, the mean head output at the answer position over gold-Yes minus gold-No GAR cls
  records). Two features per head:

  - ``attn``: the seed's attention feature (:func:`interp.probe.attention_feature`) over the
    statement's query tokens (SNLI: after the last "So"; GoT: after "Is", before "Answer").
  - ``proj``: the head's output (its columns of the ``o_proj`` input, :mod:`interp.sites`) at the
    **last token** of the text, dotted with the head's unit True-minus-False direction
    (positive = "Yes"-like).

  Why the last token: the direction was measured at the answer position of GAR prompts, the last
  prompt token, where the model is about to say Yes/No; the GoT prompt is cut right after
  ``Answer:`` (its gold label word is dropped: the model must not see it), so its last token is
  exactly that position, and for SNLI (``<premise> So <hypothesis>``, no question) the last token
  is the only position that has read the whole statement in a causal model. A max or mean over the
  statement span would mix positions that have seen only part of the statement with a direction
  that was never measured there (and a max picks up token-identity outliers).

  The probe (the seed's protocol, :mod:`interp.probe`; SNLI: the given split, ``--runs`` runs;
  GoT: 5-fold CV, seed 42) is trained on ``attn``, ``proj`` and ``both`` (the two concatenated)
  for ``k`` discovered heads (``--k``, default 4 and 8: the top ``ceil(k/2)`` True and
  ``floor(k/2)`` False heads, the other list filling in when one is short) and for
  ``--random-draws`` sets of ``k`` random heads (seeded, disjoint from every discovered head,
  :func:`interp.intervene.random_heads`; their directions come from the same ``directions.npz``).

  A reference arm trains the same probe on every head of the model (how much truth signal the
  heads carry at all, the ceiling the chosen heads are measured against).

  Features of every head are extracted once per file (batched, left padded, eager attention) and
  cached in ``OUT/features_<dataset>_<split>.npz`` (with the model, dtype, texts and direction they
  were made from: a different run re-extracts); ``--limit N`` keeps the first N items per file.

Outputs (``--out``, each written atomically): ``probe.json`` and ``probe.md``; the table is also
printed. Every argument is checked before anything is loaded or written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from gar_tasks.errors import GARConfigError

from .probe import PAPER_HEADS, ProbeResult
from .run import _save_npz, _versions

Head = tuple[int, int]
FEATURE_VERSION = 1
FEATURE_KINDS = ("attn", "proj", "both")
GOT_FOLDS, GOT_SEED = 5, 42
SNLI_SPLITS = ("train", "validation", "test")
# dataset -> (kind, zero-shot file(s) relative to the mlp folder, seed feature CSV(s))
SNLI_DIR = "SNLI_zero_shot"
SNLI_STEM = "snli_YesNo_head_feature_3000_{split}_zero_shot"
GOT_FILES = {"cities": "cities", "companies": "companies_true_false", "counterfact": "counterfact_true_false",
             "sp_en_trans": "sp_en_trans"}
DATASETS = ("snli", *GOT_FILES)
ALIASES = {"companies_true_false": "companies", "counterfact_true_false": "counterfact"}
# test accuracy the seed reports for its own protocol on its CSV features: (4 paper heads, all 8)
SEED_REPORTED: dict[str, tuple[float, float]] = {
    "snli": (0.870, 0.878), "cities": (0.846, 0.932), "sp_en_trans": (0.975, 0.978),
    "companies": (0.853, 0.866), "counterfact": (0.764, 0.780)}


@dataclass(frozen=True)
class ProbeArgs:
    """The arguments of ``gar probe`` (see the module docstring)."""

    out: str | None = None
    model: str | None = None
    heads: str | None = None
    seed_features: bool = False
    mlp_dir: str | None = None
    datasets: str = "all"
    k: str = "4,8"
    random_draws: int = 5
    runs: int = 5
    limit: int | None = None
    batch_size: int = 32
    dtype: str = "bfloat16"
    seed: int = 0
    threads: int = 0  # 0 = torch's default (all cores)


Log = Callable[[str], Any]


# ------------------------------------------------------------------------------------------
# arguments and input files


def default_mlp_dir() -> Path:
    """``$GAR_SHARED_DIR/reference/mlp``, else ``<checkout>/../shared/reference/mlp``."""
    root = os.environ.get("GAR_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared"
    return Path(root) / "reference" / "mlp"


def resolve_mlp_dir(arg: str | None) -> Path:
    path = Path(arg).expanduser() if arg else default_mlp_dir()
    if not path.is_dir():
        how = "--mlp-dir" if arg else "the default (set --mlp-dir or GAR_SHARED_DIR)"
        raise GARConfigError(f"probe data folder {path} is absent ({how}); it should hold SNLI_zero_shot/ "
                             "and GoT_zero_shot/ from the seed's reference/mlp")
    return path


def parse_datasets(spec: str) -> list[str]:
    """``all`` or a comma list of :data:`DATASETS` (``companies_true_false`` etc. accepted)."""
    terms = [t.strip() for t in str(spec).split(",") if t.strip()]
    if not terms:
        raise GARConfigError(f"empty --datasets; choose from all, {', '.join(DATASETS)}")
    out: list[str] = []
    for t in terms:
        names = list(DATASETS) if t == "all" else [ALIASES.get(t, t)]
        for name in names:
            if name not in DATASETS:
                raise GARConfigError(f"unknown dataset {t!r} in --datasets; choose from all, {', '.join(DATASETS)}")
            if name not in out:
                out.append(name)
    return out


def parse_k(spec: str | int) -> list[int]:
    try:
        ks = [int(t) for t in str(spec).split(",") if t.strip()]
    except ValueError:
        raise GARConfigError(f"--k must be a comma list of head counts, e.g. 4,8; got {spec!r}") from None
    if not ks or min(ks) < 1:
        raise GARConfigError(f"--k must list head counts of at least 1, got {spec!r}")
    return sorted(set(ks))


def dataset_files(mlp_dir: Path, name: str, csv: bool = False) -> dict[str, Path]:
    """``{split: path}`` of a dataset's zero-shot file(s) (``csv``: the seed's feature CSVs);
    GoT has the single split ``all``. Missing files are an error."""
    ext = "csv" if csv else "jsonl"
    if name == "snli":
        files = {s: mlp_dir / SNLI_DIR / f"{SNLI_STEM.format(split=s)}.{ext}" for s in SNLI_SPLITS}
    else:
        files = {"all": mlp_dir / "GoT_zero_shot" / f"{GOT_FILES[name]}.{ext}"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise GARConfigError(f"missing {name} file(s): {', '.join(missing)}")
    return files


def load_items(path: Path, kind: str, limit: int | None = None) -> tuple[list[str], list[int]]:
    """``(texts fed to the model, labels 1 = Yes)`` of one zero-shot file (one JSON array).

    SNLI items are ``[text, "Yes"|"No"]``, fed as they are. GoT items are strings ending in
    ``Answer: Yes|No``; the label word is cut off, so the model reads ``... Answer:``.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot read {path}: {e}") from None
    if not isinstance(data, list) or not data:
        raise GARConfigError(f"{path}: expected a non-empty JSON array")
    data = data[:limit] if limit else data
    texts, labels = [], []
    for i, item in enumerate(data):
        if kind == "snli":
            ok = isinstance(item, list) and len(item) == 2 and item[1] in ("Yes", "No") and isinstance(item[0], str)
            if not ok:
                raise GARConfigError(f"{path}: item {i} is not [text, 'Yes'|'No']: {item!r:.80}")
            text, label = item
        else:
            head, _, label = str(item).rpartition(" ")
            if label not in ("Yes", "No") or not head.endswith("Answer:"):
                raise GARConfigError(f"{path}: item {i} does not end in 'Answer: Yes|No': {item!r:.80}")
            text = head
        texts.append(text)
        labels.append(1 if label == "Yes" else 0)
    return texts, labels


def read_heads_dir(path: str | Path) -> tuple[list[Head], list[Head], Any]:
    """``(true_heads, false_heads, direction [layers, heads, head_dim])`` of a ``gar heads`` folder
    (or its ``heads.json``), read by :func:`interp.heads.load_heads` and checked for what the
    probe needs, so that every defect is a one-line error before any work."""
    import numpy as np

    from .heads import load_heads

    d = Path(path).expanduser()
    if d.is_file() and d.name.endswith(".json"):
        d = d.parent
    if not d.is_dir():
        raise GARConfigError(f"--heads {d} is not a folder (expected the output folder of gar heads)")
    for name in ("heads.json", "directions.npz"):
        if not (d / name).is_file():
            raise GARConfigError(f"--heads {d} has no {name} (expected the output folder of gar heads)")
    try:
        true_heads, false_heads, arrays = load_heads(d)
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot read {d}: {e}") from None
    true_heads, false_heads = list(dict.fromkeys(true_heads)), list(dict.fromkeys(false_heads))
    if not true_heads and not false_heads:
        raise GARConfigError(f"{d / 'heads.json'} lists no heads (true_heads and false_heads are empty)")
    if "direction" not in arrays:
        raise GARConfigError(f"{d / 'directions.npz'} has no 'direction' array (has {', '.join(arrays) or 'nothing'})")
    direction = np.asarray(arrays["direction"], dtype=np.float32)
    if direction.ndim != 3:
        raise GARConfigError(f"{d / 'directions.npz'}: 'direction' must be [layers, heads, head_dim], "
                             f"got shape {direction.shape}")
    return true_heads, false_heads, direction


def choose_heads(true_heads: Sequence[Head], false_heads: Sequence[Head], k: int) -> list[Head]:
    """The top ``ceil(k/2)`` True and ``floor(k/2)`` False heads; when one list is short the other
    fills in; fewer than ``k`` when there are not that many heads."""
    t, f = list(true_heads), [h for h in false_heads if h not in true_heads]
    nt = min(len(t), max(math.ceil(k / 2), k - len(f)))
    nf = min(len(f), k - nt)
    return t[:nt] + f[:nf]


# ------------------------------------------------------------------------------------------
# model, features and their cache


def load_eager_model(model: str, dtype: str) -> tuple[Any, Any, str]:
    """``(HF model, tokenizer, description)`` with eager attention (attention weights are needed);
    the architecture is checked from the config before the weights load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .run import check_model_args
    from .sites import head_sites

    if dtype not in ("float32", "bfloat16"):
        raise GARConfigError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if model == "smollm2":
        from gar_tasks.models import embedded_model_path

        path, local, desc = str(embedded_model_path()), True, f"smollm2 ({embedded_model_path()})"
    else:
        check_model_args(model, False)
        path, local, desc = model, True, model
    try:
        head_sites(AutoConfig.from_pretrained(path, local_files_only=local))
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=local,
                                                  attn_implementation="eager").eval()
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
    return hf, tok, desc


def model_shape(model: str) -> tuple[int, int, int]:
    """``(layers, heads, head_dim)`` from the config alone (unsupported architecture: error)."""
    from transformers import AutoConfig

    from .run import check_model_args
    from .sites import head_sites

    if model == "smollm2":
        from gar_tasks.models import embedded_model_path

        path = str(embedded_model_path())
    else:
        check_model_args(model, False)
        path = model
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot load the config of model {model!r}: {str(e).splitlines()[0]}") from None
    s = head_sites(cfg)
    return s.n_layers, s.n_heads, s.head_dim


def tokenize(tokenizer: Any, kind: str, texts: Sequence[str]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token ids and query spans (:func:`interp.probe.snli_span` / :func:`~interp.probe.got_span`)."""
    from .probe import got_span, snli_span

    fn = snli_span if kind == "snli" else got_span
    ids, spans = [], []
    for t in texts:
        i, s = fn(tokenizer, t)
        if s[0] >= s[1]:
            raise GARConfigError(f"empty query span in {t!r:.80}")
        ids.append(i)
        spans.append(s)
    return ids, spans


def _sha(obj: Any) -> str:
    import numpy as np

    h = hashlib.sha256()
    if isinstance(obj, np.ndarray):
        h.update(str(obj.shape).encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    else:
        h.update(json.dumps(obj).encode())
    return h.hexdigest()


def load_cached(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The cached features at ``path`` if they were made with exactly ``meta``, else None."""
    import numpy as np

    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if json.loads(str(z["meta"])) != meta:
                return None
            return {k: z[k] for k in ("attn", "proj", "labels")}
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------------------
# probing


def _result(r: ProbeResult) -> dict[str, Any]:
    return {"accuracies": list(r.accuracies), "mean": r.mean, "std": r.std}


def _matrix(feats: dict[str, Any], kind: str, heads: Sequence[Head]) -> Any:
    import numpy as np

    cols = {k: np.stack([feats[k][:, l, h] for l, h in heads], 1) for k in ("attn", "proj")}
    return cols[kind] if kind != "both" else np.concatenate([cols["attn"], cols["proj"]], 1)


def evaluate_features(name: str, feats: dict[str, dict[str, Any]], kind: str, heads: Sequence[Head], runs: int,
                      seed: int) -> ProbeResult:
    """The seed's protocol on features ``feats[split]`` (SNLI: given split; GoT: 5-fold CV)."""
    from .probe import evaluate_cv, evaluate_split

    if name == "snli":
        data = {s: (_matrix(feats[s], kind, heads), feats[s]["labels"]) for s in SNLI_SPLITS}
        return evaluate_split(data["train"], data["validation"], data["test"], runs=runs, seed=seed)
    f = feats["all"]
    return evaluate_cv(_matrix(f, kind, heads), f["labels"], folds=GOT_FOLDS, seed=GOT_SEED)


def majority_accuracy(name: str, feats: dict[str, dict[str, Any]]) -> float:
    """Accuracy of always answering the training majority label (the floor a probe must beat)."""
    import numpy as np

    train = feats["train" if name == "snli" else "all"]["labels"]
    test = feats["test" if name == "snli" else "all"]["labels"]
    major = int(np.mean(train) >= 0.5)
    return float(np.mean(np.asarray(test) == major))


def _threads(n: int):
    import contextlib

    import torch

    @contextlib.contextmanager
    def cm():
        before = torch.get_num_threads()
        if n:  # 0: leave torch's default
            torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return cm()


def _check_common(args: ProbeArgs) -> None:
    for flag, v, lo in (("--runs", args.runs, 1), ("--batch-size", args.batch_size, 1),
                        ("--threads", args.threads, 0), ("--random-draws", args.random_draws, 0)):
        if v < lo:
            raise GARConfigError(f"{flag} must be at least {lo}, got {v}")
    if args.limit is not None and args.limit < 10:
        raise GARConfigError(f"--limit must be at least 10 (items per file), got {args.limit}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise GARConfigError(f"--out {args.out} exists and is not a folder")


def run_seed_features(args: ProbeArgs, log: Log | None = None) -> dict[str, Any]:
    """The trainer on the seed's CSV features: 4 paper heads and all 8, beside the seed's figures."""
    from .probe import evaluate_got, evaluate_snli

    log = log or (lambda m: None)
    t0 = time.perf_counter()
    _check_common(args)
    if args.model or args.heads:
        raise GARConfigError("--seed-features takes no --model / --heads (it probes the seed's CSV features)")
    mlp = resolve_mlp_dir(args.mlp_dir)
    names = parse_datasets(args.datasets)
    files = {n: dataset_files(mlp, n, csv=True) for n in names}
    results: dict[str, Any] = {}
    with _threads(args.threads):
        for name in names:
            res = {}
            for n_heads, heads, reported in (("4", PAPER_HEADS, SEED_REPORTED[name][0]),
                                             ("8", None, SEED_REPORTED[name][1])):
                t = time.perf_counter()
                if name == "snli":
                    r = evaluate_snli(files[name]["train"].parent, heads, runs=args.runs, seed=args.seed)
                else:
                    r = evaluate_got(files[name]["all"], heads, folds=GOT_FOLDS, seed=GOT_SEED)
                res[n_heads] = {**_result(r), "seed_reported": reported, "seconds": time.perf_counter() - t}
                log(f"{name} {n_heads} heads: {r.mean:.3f} +- {r.std:.3f} (seed {reported:.3f})")
            results[name] = res
    info = {"mode": "seed_features", "mlp_dir": str(mlp), "model": "Vicuna-33B v1.3 (the seed's CSV features)",
            "paper_heads": [list(h) for h in PAPER_HEADS], "runs": args.runs, "seed": args.seed,
            "protocol": {"snli": f"given split, {args.runs} runs", "got": f"{GOT_FOLDS}-fold CV, seed {GOT_SEED}"},
            "datasets": results, "versions": _versions(),
            "timings_s": {"total": time.perf_counter() - t0}}
    return info


def run_model_probe(args: ProbeArgs, log: Log | None = None,
                    progress: Callable[[str, int, int], Any] | None = None) -> dict[str, Any]:
    """Features of ``args.model`` for the discovered and random heads, probed (see module doc)."""
    import numpy as np

    from .intervene import random_heads
    from .probe import batched_head_features

    log = log or (lambda m: None)
    t0 = time.perf_counter()
    _check_common(args)
    if not args.model or not args.heads:
        raise GARConfigError("gar probe needs --model and --heads (or --seed-features)")
    if not args.out:
        raise GARConfigError("gar probe --model needs --out (the folder for probe.json, probe.md and the features)")
    if args.dtype not in ("float32", "bfloat16"):
        raise GARConfigError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")
    ks = parse_k(args.k)
    names = parse_datasets(args.datasets)
    mlp = resolve_mlp_dir(args.mlp_dir)
    files = {n: dataset_files(mlp, n) for n in names}
    true_heads, false_heads, direction = read_heads_dir(args.heads)
    n_layers, n_heads, head_dim = model_shape(args.model)
    if direction.shape != (n_layers, n_heads, head_dim):
        raise GARConfigError(f"{args.heads}/directions.npz: 'direction' has shape {direction.shape}, but model "
                             f"{args.model!r} has {(n_layers, n_heads, head_dim)} (layers, heads, head_dim): "
                             "were the heads found on another model?")
    discovered = list(dict.fromkeys([*true_heads, *false_heads]))
    bad = [h for h in discovered if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise GARConfigError(f"heads {bad} are outside the model's {n_layers} layers x {n_heads} heads")
    chosen = {k: choose_heads(true_heads, false_heads, k) for k in ks}
    spare = n_layers * n_heads - len(discovered)
    for k, heads in chosen.items():
        if args.random_draws and len(heads) > spare:
            raise GARConfigError(f"cannot draw {len(heads)} random heads outside the {len(discovered)} discovered "
                                 f"ones (the model has {n_layers * n_heads} heads)")
    items = {n: {s: load_items(p, "snli" if n == "snli" else "got", args.limit) for s, p in fs.items()}
             for n, fs in files.items()}
    for n, splits in items.items():
        for s, (_, labels) in splits.items():
            if n != "snli" and len(labels) < GOT_FOLDS:
                raise GARConfigError(f"{n}: {len(labels)} items, {GOT_FOLDS}-fold CV needs more")

    out = Path(args.out)
    timings: dict[str, Any] = {"extract": {}, "probe": {}}
    with _threads(args.threads):
        t = time.perf_counter()
        hf, tok, desc = load_eager_model(args.model, args.dtype)
        timings["load"] = time.perf_counter() - t
        out.mkdir(parents=True, exist_ok=True)
        dir_sha = _sha(direction)
        feats: dict[str, dict[str, dict[str, Any]]] = {}
        cache_info: dict[str, str] = {}
        for n, splits in items.items():
            feats[n] = {}
            t = time.perf_counter()
            for s, (texts, labels) in splits.items():
                tag = f"{n}_{s}" if n == "snli" else n
                path = out / f"features_{tag}.npz"
                meta = {"version": FEATURE_VERSION, "model": args.model, "model_desc": desc, "dtype": args.dtype,
                        "texts_sha256": _sha(texts), "labels_sha256": _sha(labels), "direction_sha256": dir_sha}
                cached = load_cached(path, meta)
                if cached is not None:
                    feats[n][s] = cached
                    cache_info[tag] = "loaded"
                    log(f"{tag}: {len(texts)} items, features loaded from {path.name}")
                    continue
                ids, spans = tokenize(tok, "snli" if n == "snli" else "got", texts)
                log(f"{tag}: extracting features of {len(texts)} items")
                f = batched_head_features(
                    hf, ids, spans, direction, batch_size=args.batch_size,
                    progress=None if progress is None else (lambda d, tot, tag=tag: progress(f"extract {tag}", d, tot)))
                f["labels"] = np.asarray(labels, dtype=np.int64)
                _save_npz(path, meta=np.array(json.dumps(meta)), **f)
                feats[n][s] = f
                cache_info[tag] = "extracted"
            timings["extract"][n] = time.perf_counter() - t
        del hf

        results: dict[str, Any] = {}
        for n in names:
            t = time.perf_counter()
            res: dict[str, Any] = {"n_items": {s: int(len(f["labels"])) for s, f in feats[n].items()},
                                   "yes_fraction": {s: float(np.mean(f["labels"])) for s, f in feats[n].items()},
                                   "majority_accuracy": majority_accuracy(n, feats[n]), "k": {}}
            for k in ks:
                heads = chosen[k]
                draws = [random_heads(len(heads), discovered, n_layers, n_heads, seed=args.seed + d)
                         for d in range(args.random_draws)]
                per_kind = {}
                for kind in FEATURE_KINDS:
                    disc = evaluate_features(n, feats[n], kind, heads, args.runs, args.seed)
                    rand = [evaluate_features(n, feats[n], kind, h, args.runs, args.seed) for h in draws]
                    means = [r.mean for r in rand]
                    per_kind[kind] = {
                        "discovered": _result(disc),
                        "random": {"draws": [{"heads": [list(h) for h in hs], **_result(r)}
                                             for hs, r in zip(draws, rand)],
                                   "mean": float(np.mean(means)) if means else None,
                                   "std": float(np.std(means)) if means else None}}
                    rtxt = f"{np.mean(means):.3f} +- {np.std(means):.3f}" if means else "-"
                    log(f"{n} k={k} {kind}: discovered {disc.mean:.3f} +- {disc.std:.3f}, random {rtxt}")
                res["k"][str(k)] = {"heads": [list(h) for h in heads],
                                    "true": [list(h) for h in heads if h in true_heads],
                                    "false": [list(h) for h in heads if h not in true_heads],
                                    "features": per_kind}
            # reference arm: every head of the model (how much truth signal the heads hold at all)
            every = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
            res["all_heads"] = {kind: _result(evaluate_features(n, feats[n], kind, every, args.runs, args.seed))
                                for kind in FEATURE_KINDS}
            results[n] = res
            timings["probe"][n] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return {"mode": "model", "model": desc, "model_arg": args.model, "dtype": args.dtype,
            "heads_dir": str(args.heads), "n_layers": n_layers, "n_heads": n_heads, "head_dim": head_dim,
            "true_heads": [list(h) for h in true_heads], "false_heads": [list(h) for h in false_heads],
            "k": ks, "random_draws": args.random_draws, "runs": args.runs, "seed": args.seed, "limit": args.limit,
            "batch_size": args.batch_size, "threads": args.threads,
            "features": {"attn": "seed's attention feature: max over the statement's query tokens of (largest "
                                 "attention weight to a key other than the first token) - (weight to the first token)",
                         "proj": "head output (o_proj input columns) at the last token . unit(mean Yes - mean No "
                                 "head output at GAR cls answer positions)",
                         "both": "attn and proj concatenated (2k features)"},
            "protocol": {"snli": f"given split, {args.runs} runs", "got": f"{GOT_FOLDS}-fold CV, seed {GOT_SEED}"},
            "cache": cache_info, "datasets": results, "versions": _versions(), "timings_s": timings}


def run_probe(args: ProbeArgs, log: Log | None = None,
              progress: Callable[[str, int, int], Any] | None = None) -> tuple[dict[str, Any], str]:
    """Run ``gar probe`` in the mode ``args`` asks for; write ``probe.json`` / ``probe.md`` to
    ``args.out`` (when given) and return ``(info, markdown)``."""
    from .run import _atomic_write

    info = run_seed_features(args, log) if args.seed_features else run_model_probe(args, log, progress)
    md = probe_md(info)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "probe.md", md)
        _atomic_write(out / "probe.json", json.dumps(info, indent=1, default=float))
    return info, md


# ------------------------------------------------------------------------------------------
# report


def _pm(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def probe_md(info: dict[str, Any]) -> str:
    """The markdown tables of a ``gar probe`` result."""
    if info["mode"] == "seed_features":
        lines = ["# gar probe: the seed's released features (Vicuna-33B v1.3)", "",
                 f"The seed's MLP protocol (SNLI: {info['protocol']['snli']}; GoT: {info['protocol']['got']}) on "
                 f"the CSV features in `{info['mlp_dir']}`. 4 heads = the paper's True and False heads "
                 f"{', '.join(f'({l},{h})' for l, h in info['paper_heads'])}; 8 = every column.", "",
                 "| dataset | heads | test acc (ours, mean ± std) | seed reported | difference |",
                 "|---|---|---|---|---|"]
        for name, res in info["datasets"].items():
            for nh, r in res.items():
                lines.append(f"| {name} | {nh} | {_pm(r)} | {r['seed_reported']:.3f} | "
                             f"{r['mean'] - r['seed_reported']:+.3f} |")
        return "\n".join(lines) + "\n"
    lim = f"first {info['limit']} items per file" if info["limit"] else "every item"
    lines = [f"# gar probe: {info['model_arg']} ({info['dtype']}), heads from `{info['heads_dir']}`", "",
             f"Features of {info['n_layers']} x {info['n_heads']} heads on the zero-shot texts ({lim}). "
             f"`attn`: the seed's attention feature; `proj`: head output at the last token projected on the "
             f"head's unit True-minus-False direction; `both`: the two concatenated. Probe: the seed's MLP "
             f"(SNLI: {info['protocol']['snli']}; GoT: {info['protocol']['got']}); discovered heads: mean ± std "
             f"over runs/folds; random heads: mean ± std over {info['random_draws']} draws of as many heads "
             f"(disjoint from the discovered ones) of each draw's mean.", "",
             f"True heads: {', '.join(f'{l}.{h}' for l, h in info['true_heads']) or 'none'}; "
             f"False heads: {', '.join(f'{l}.{h}' for l, h in info['false_heads']) or 'none'}.", ""]
    for k in info["k"]:
        some = next(iter(info["datasets"].values()))["k"][str(k)]
        heads = ", ".join(f"{l}.{h}" + ("(T)" if [l, h] in some["true"] else "(F)") for l, h in some["heads"])
        lines += [f"## k = {len(some['heads'])} heads: {heads}", "",
                  "| dataset | n | majority | feature | discovered heads acc | random heads acc (mean ± std) |",
                  "|---|---|---|---|---|---|"]
        for name, res in info["datasets"].items():
            n = "/".join(str(v) for v in res["n_items"].values())
            for kind, r in res["k"][str(k)]["features"].items():
                lines.append(f"| {name} | {n} | {res['majority_accuracy']:.3f} | {kind} | {_pm(r['discovered'])} | "
                             f"{_pm(r['random'])} |")
        lines.append("")
    first = next(iter(info["datasets"].values()), {})
    if "all_heads" in first:
        lines += [f"## Reference: every head ({info['n_layers'] * info['n_heads']} per feature)", "",
                  "| dataset | " + " | ".join(first["all_heads"]) + " |",
                  "|---|" + "---|" * len(first["all_heads"])]
        for name, res in info["datasets"].items():
            lines.append(f"| {name} | " + " | ".join(_pm(r) for r in res["all_heads"].values()) + " |")
        lines.append("")
    t = info["timings_s"]
    ext = ", ".join(f"{k} {v:.0f} s" for k, v in t["extract"].items())
    lines.append(f"Timings: model load {t['load']:.0f} s; extraction {ext} (cache: "
                 f"{', '.join(f'{k} {v}' for k, v in info['cache'].items())}); total {t['total']:.0f} s.")
    return "\n".join(lines) + "\n"


__all__ = ["DATASETS", "ProbeArgs", "SEED_REPORTED", "choose_heads", "load_items", "probe_md", "read_heads_dir",
           "run_model_probe", "run_probe", "run_seed_features"]
