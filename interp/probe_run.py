"""The data, features and report of ``gar probe`` (the command: :mod:`interp.commands.probe`): the
seed's MLP truth probe on per-head features (SNLI and Geometry of Truth).

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
  - ``proj``: the head's output (its columns of the ``o_proj`` input, :mod:`interp.core.sites`) at the
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
from pathlib import Path
from typing import Any, Sequence

from gar_tasks.errors import GARConfigError

from .probe import ProbeResult

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


def sha256_of(obj: Any) -> str:
    """sha256 of an array (shape and bytes) or of a JSON-able value: what a cache entry was made from."""
    import numpy as np

    h = hashlib.sha256()
    if isinstance(obj, np.ndarray):
        h.update(str(obj.shape).encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    else:
        h.update(json.dumps(obj).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------
# probing


def result_dict(r: ProbeResult) -> dict[str, Any]:
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


__all__ = ["DATASETS", "FEATURE_KINDS", "FEATURE_VERSION", "GOT_FOLDS", "GOT_SEED", "SEED_REPORTED", "SNLI_SPLITS",
           "choose_heads", "dataset_files", "evaluate_features", "load_items", "majority_accuracy", "parse_datasets",
           "parse_k", "probe_md", "read_heads_dir", "resolve_mlp_dir", "result_dict", "sha256_of", "tokenize"]
