"""``gar report``: accuracy tables and the compositionality gap from an lm-eval results folder.

Input: the ``--output_path`` folder of ``lm_eval ... --log_samples`` (searched recursively):
``samples_<task>_<timestamp>.jsonl`` files, one line per document with ``doc`` (our record dict)
and the per-sample metric (``acc`` for log-likelihood tasks, ``exact_match`` for greedy ones), and
``results_<timestamp>.json`` (read for the model name). Lines whose ``doc`` is not a GAR record
(other tasks in the same run) are skipped. lm-eval writes one subfolder per model: samples in more
than one folder are refused (report one model at a time); within a folder a document scored
again by a later run (later timestamp) replaces the earlier sample.

Output (``report.json``, ``report.md``, ``acc_vs_nr.png``), one section per metric:

* ``cells``: accuracy by family x n_r x schema pair (``lm_eval_glue.pair_name`` of the task row),
  with counts; ``by_family`` and ``by_family_n_r``: the totals;
* ``by_form``: accuracy by family x question form, the three letters of the record ids
  (``grid.form_code``: ``S`` swap_qa, ``N`` negate, ``R`` rev_item2str): whether a model retrieves
  both ways and under negation, which the n_r totals hide;
* ``gap``: the compositionality gap P(composite wrong | all its sub-questions right), overall and
  per n_r, with its numerator (``wrong``) and denominator (``all_subs_right``). Parents (``gen``)
  are joined with their sub-questions (``sub_*`` samples whose ``pair_id`` is the parent's ``id``)
  within the same metric; only parents whose sub-questions (``subq.sub_kinds``) are all present
  count (``joined``). ``gap`` is null when the denominator is 0.

Errors (no GAR samples, an unreadable file, a malformed line) raise ``GARDataError`` before
anything is written; the three files are written to temporary files and moved into place together.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import GARDataError
from .grid import form_code
from .subq import KINDS, sub_kinds

OUTPUTS = ("report.md", "report.json", "acc_vs_nr.png")
FAMILY_ORDER = ("gen", "cls", *KINDS)
_TS = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?"
_SAMPLES = re.compile(rf"^samples_(?P<task>.+)_(?P<ts>{_TS})\.jsonl$")
_RESULTS = re.compile(rf"^results_(?P<ts>{_TS})\.json$")
_DOC_FIELDS = ("id", "pair_id", "family", "n_r", "task_row", "rel0", "rel1")


@dataclass(frozen=True)
class Sample:
    """One scored GAR document."""

    id: str
    pair_id: str
    family: str
    n_r: int
    pair: str
    rel0: str
    rel1: str
    metric: str  # lm-eval's metric, with its filter when not "none": "acc", "exact_match,answer"
    correct: bool
    task: str
    answer: str = ""
    margin: float | None = None  # cls log-likelihood route: logL(" Yes") - logL(" No")
    form: str | None = None  # question form, grid.form_code (None: the doc does not say)


# ---------------------------------------------------------------------------------------------
# reading

def _pair_names() -> list[str]:
    from .grid import load_task_rows
    from .lm_eval_glue import pair_name

    return [pair_name(r.person_schema, r.thing_schema) for r in load_task_rows()]


def find_result_files(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(samples files, results files) under ``root``, recursively, sorted by path."""
    root = Path(root).expanduser()
    if not root.exists():
        raise GARDataError(f"cannot read {os.fspath(root)!r}: no such folder")
    if not root.is_dir():
        raise GARDataError(f"cannot read {os.fspath(root)!r}: not a folder")
    try:
        files = sorted(p for p in root.rglob("*") if p.is_file())
    except OSError as e:
        raise GARDataError(f"cannot read {os.fspath(root)!r}: {e.strerror or e}") from None
    return ([p for p in files if _SAMPLES.match(p.name)], [p for p in files if _RESULTS.match(p.name)])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise GARDataError(f"cannot read {os.fspath(path)!r}: {why}") from None


def _parse_line(line: str, where: str, task: str, pairs: list[str]) -> Sample | None:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise GARDataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise GARDataError(f"{where}: expected a JSON object")
    doc = d.get("doc")
    if not isinstance(doc, dict) or not all(k in doc for k in _DOC_FIELDS):
        return None  # not a GAR document (another task of the same run)
    metric = "acc" if "acc" in d else "exact_match" if "exact_match" in d else None
    if metric is None:
        raise GARDataError(f"{where}: sample has neither 'acc' nor 'exact_match'")
    value, row = d[metric], doc["task_row"]
    filt = d.get("filter", "none")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise GARDataError(f"{where}: {metric} must be 0 or 1, got {value!r}")
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < len(pairs):
        raise GARDataError(f"{where}: task_row {row!r} is not a GAR task row")
    if isinstance(doc["n_r"], bool) or not isinstance(doc["n_r"], int):
        raise GARDataError(f"{where}: n_r {doc['n_r']!r} is not an integer")
    key = metric if filt in (None, "none") else f"{metric},{filt}"
    return Sample(str(doc["id"]), str(doc["pair_id"]), str(doc["family"]), doc["n_r"], pairs[row],
                  str(doc["rel0"]), str(doc["rel1"]), key, value == 1, task, str(doc.get("answer", "")),
                  _margin(d, doc, where) if metric == "acc" and doc["family"] == "cls" else None,
                  _form(doc))


def _form(doc: dict) -> str | None:
    flags = [doc.get(k) for k in ("swap_qa", "negate", "rev_item2str")]
    return form_code(*flags) if all(isinstance(f, bool) for f in flags) else None


def _margin(d: dict, doc: dict, where: str) -> float | None:
    """logL(" Yes") - logL(" No") of a classification sample from what lm-eval logged: the
    log-likelihood of each choice (``filtered_resps``, in ``doc["choices"]`` order). The difference of
    two log-probabilities at the same position equals the difference of their logits."""
    resps, choices = d.get("filtered_resps"), doc.get("choices")
    if not isinstance(resps, list) or not isinstance(choices, (list, tuple)) or len(resps) != len(choices):
        return None
    try:
        ll = {str(c): float(r[0] if isinstance(r, (list, tuple)) else r) for c, r in zip(choices, resps)}
    except (TypeError, ValueError, IndexError):
        raise GARDataError(f"{where}: log-likelihoods in filtered_resps are not numbers") from None
    if "Yes" not in ll or "No" not in ll:
        return None
    return ll["Yes"] - ll["No"]


@dataclass
class Run:
    """The GAR samples of one model (one identity: model name and model arguments), merged over the
    lm-eval runs that scored it; a document scored again by a later run replaces the earlier sample."""

    label: str
    model: str | None
    backend: str | None  # lm-eval's model type: hf, local-chat-completions, ...
    model_args: str | None
    params: int | None
    samples: list[Sample]
    samples_files: int
    results_files: int

    def meta(self) -> dict[str, Any]:
        return {"model": self.model, "label": self.label, "backend": self.backend, "model_args": self.model_args, "params": self.params,
                "samples_files": self.samples_files, "results_files": self.results_files}


def _results_facts(path: Path) -> dict[str, Any]:
    """Who wrote a run: model name, model arguments, parameter count (lm-eval's results file)."""
    try:
        d = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise GARDataError(f"cannot read {os.fspath(path)!r}: not valid JSON ({e.msg})") from None
    d = d if isinstance(d, dict) else {}
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    args = cfg.get("model_args")
    if isinstance(args, dict):
        args = ",".join(f"{k}={v}" for k, v in sorted(args.items()))
    params = cfg.get("model_num_parameters")
    return {"model": str(d["model_name"]) if d.get("model_name") else None,
            "backend": str(cfg["model"]) if cfg.get("model") else None,
            "model_args": str(args) if args else None,
            "params": params if isinstance(params, int) and not isinstance(params, bool) and params > 0 else None}


def _merge(files: list[Path], pairs: list[str]) -> list[Sample]:
    latest: dict[tuple[str, str], tuple[str, Sample]] = {}
    for path in files:
        m = _SAMPLES.match(path.name)
        assert m is not None
        for i, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            s = _parse_line(line, f"{os.fspath(path)}:{i}", m.group("task"), pairs)
            if s is None:
                continue
            key = (s.metric, s.id)
            if key not in latest or latest[key][0] <= m.group("ts"):
                latest[key] = (m.group("ts"), s)
    return [s for _, s in latest.values()]


def _labels(runs: list[dict[str, Any]]) -> list[str]:
    """Short distinct names: the model name's last path part, then what tells apart runs of the same
    name (lm-eval's model type, the dtype), then a number if still needed."""
    def dtype(r: dict[str, Any]) -> str | None:
        m = re.search(r"(?:^|,)dtype=([\w.]+)", r["model_args"] or "")
        return m.group(1) if m else None

    base = [Path(r["model"]).name if r["model"] else r["folder"].name for r in runs]
    out = []
    for i, b in enumerate(base):
        same = [r for r, x in zip(runs, base) if x == b]
        parts = [f(runs[i]) for f in (lambda r: r["backend"], dtype) if len({f(r) for r in same}) > 1]
        parts = [p for p in parts if p]
        out.append(f"{b} ({', '.join(parts)})" if parts else b)
    return [x if out.count(x) == 1 else f"{x} #{out[:i + 1].count(x)}" for i, x in enumerate(out)]


def read_runs(roots: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Run]:
    """Every model's GAR samples under ``roots`` (one or several lm-eval output folders).

    A samples file belongs to the run whose ``results_<timestamp>.json`` lies beside it with the same
    timestamp; runs are grouped by (model name, lm-eval model type, model arguments), never mixed. A samples file without
    its results file goes with the one model of its folder (or the folder itself when it has none);
    in a folder holding several models' runs it is refused."""
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if not roots:
        raise GARDataError("no results folder given")
    samples_files: set[Path] = set()
    results_files: set[Path] = set()
    for root in roots:
        sf, rf = find_result_files(root)
        samples_files.update(sf)
        results_files.update(rf)
    where = ", ".join(repr(os.fspath(r)) for r in roots)
    if not samples_files:
        raise GARDataError(f"no lm-eval samples files (samples_<task>_<date>.jsonl) under {where}: "
                           f"run lm_eval with --output_path and --log_samples")
    facts = {}
    for path in sorted(results_files):
        m = _RESULTS.match(path.name)
        assert m is not None
        facts[(path.parent, m.group("ts"))] = _results_facts(path)
    groups: dict[tuple, dict[str, Any]] = {}
    for path in sorted(samples_files):
        m = _SAMPLES.match(path.name)
        assert m is not None
        f = facts.get((path.parent, m.group("ts")))
        if f is None:
            here = {(g["model"], g["backend"], g["model_args"]): g for (folder, _), g in facts.items()
                    if folder == path.parent}
            if len(here) > 1:
                raise GARDataError(f"{os.fspath(path)!r} has no results file of its run beside it "
                                   f"(results_{m.group('ts')}.json), and its folder holds runs of {len(here)} "
                                   f"models: cannot tell which model wrote it")
            f = next(iter(here.values()), {"model": None, "backend": None, "model_args": None, "params": None})
        ident = (f["model"], f["backend"], f["model_args"]) if f["model"] else (None, None, os.fspath(path.parent))
        g = groups.setdefault(ident, {**f, "folder": path.parent, "files": [], "results": set()})
        g["files"].append(path)
        g["params"] = g["params"] or f["params"]
        if (path.parent, m.group("ts")) in facts:
            g["results"].add((path.parent, m.group("ts")))
    pairs = _pair_names()
    found = []
    for g in groups.values():
        samples = _merge(g["files"], pairs)
        if samples:
            found.append((g, samples))
    if not found:
        raise GARDataError(f"no GAR samples in the {len(samples_files)} samples files under {where}")
    found.sort(key=lambda x: (x[0]["params"] is None, x[0]["params"] or 0, x[0]["model"] or ""))
    labels = _labels([g for g, _ in found])
    return [Run(label, g["model"], g["backend"], g["model_args"], g["params"], samples, len(g["files"]), len(g["results"]))
            for label, (g, samples) in zip(labels, found)]


def read_samples(root: str | os.PathLike) -> tuple[list[Sample], dict[str, Any]]:
    """The GAR samples of the one model under ``root`` and facts about it; several models are refused
    here (``read_runs`` reads them apart)."""
    runs = read_runs(root)
    if len(runs) > 1:
        raise GARDataError(f"samples of {len(runs)} models under {os.fspath(root)!r} "
                           f"({', '.join(r.label for r in runs)}): report them with read_runs")
    return runs[0].samples, runs[0].meta()


# ---------------------------------------------------------------------------------------------
# the numbers

def _acc(correct: int, n: int) -> dict[str, Any]:
    return {"correct": correct, "n": n, "acc": correct / n if n else None}


def _family_key(f: str) -> tuple:
    return (FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER), f)


def _form_key(code: str) -> tuple:
    return tuple(c != "-" for c in code)  # grid order: plain first, swap_qa outermost


def _gap(wrong: int, right: int, joined: int) -> dict[str, Any]:
    return {"wrong": wrong, "all_subs_right": right, "gap": wrong / right if right else None, "joined": joined}


def _pair_score(n_pairs: int, wins: float, ties: int) -> dict[str, Any]:
    return {"pairs": n_pairs, "true_higher": wins, "ties": ties, "score": (wins + ties / 2) / n_pairs if n_pairs else None}


def pair_score(samples: list[Sample]) -> dict[str, Any] | None:
    """The classification score free of label bias: over Yes/No twins (two cls records sharing a
    ``pair_id``, one whose answer is Yes, one No), the share of pairs where the true statement (the
    Yes twin) gets the larger logL(Yes) - logL(No); a tie counts one half. A model answering one label
    for everything scores acc 0.5 whatever it knows; this score is 0.5 only if it cannot tell the
    true statement from the false one. None without log-likelihood cls samples."""
    twins: dict[str, dict[str, Sample]] = {}
    for s in samples:
        if s.family == "cls" and s.margin is not None and s.answer in ("Yes", "No"):
            twins.setdefault(s.pair_id, {})[s.answer] = s
    if not twins:
        return None
    by: dict[Any, list] = {}
    for t in twins.values():
        if len(t) != 2:
            continue
        yes, no = t["Yes"], t["No"]
        for key in ("all", yes.n_r):
            c = by.setdefault(key, [0, 0, 0])
            c[0] += 1
            c[1] += yes.margin > no.margin
            c[2] += yes.margin == no.margin
    return {"overall": _pair_score(*by.get("all", [0, 0, 0])), "unpaired": sum(len(t) != 2 for t in twins.values()),
            "by_n_r": {str(n): _pair_score(*by[n]) for n in sorted(k for k in by if k != "all")}}


def metric_section(samples: list[Sample]) -> dict[str, Any]:
    """Accuracy tables and the compositionality gap of the samples of one metric."""
    cells: dict[tuple, list[int]] = {}
    fams: dict[str, list[int]] = {}
    fam_nr: dict[str, dict[int, list[int]]] = {}
    fam_form: dict[str, dict[str, list[int]]] = {}
    for s in samples:
        counters = [cells.setdefault((s.family, s.n_r, s.pair), [0, 0]), fams.setdefault(s.family, [0, 0]),
                    fam_nr.setdefault(s.family, {}).setdefault(s.n_r, [0, 0])]
        if s.form is not None:
            counters.append(fam_form.setdefault(s.family, {}).setdefault(s.form, [0, 0]))
        for counter in counters:
            counter[0] += s.correct
            counter[1] += 1
    subs = {(s.pair_id, s.family): s for s in samples if s.family in KINDS}
    gap: dict[Any, list[int]] = {}  # n_r (or "all") -> [wrong, all_subs_right, joined]
    parents = [s for s in samples if s.family == "gen"]
    for p in parents:
        mine = [subs.get((p.id, k)) for k in sub_kinds(p.rel0, p.rel1)]
        if any(x is None for x in mine):
            continue
        right = all(x.correct for x in mine)
        for key in ("all", p.n_r):
            g = gap.setdefault(key, [0, 0, 0])
            g[0] += right and not p.correct
            g[1] += right
            g[2] += 1
    overall = gap.get("all", [0, 0, 0])
    return {
        "cells": [{"family": f, "n_r": n, "pair": pr, **_acc(*cells[(f, n, pr)])}
                  for f, n, pr in sorted(cells, key=lambda k: (_family_key(k[0]), k[1], k[2]))],
        "by_family": {f: _acc(*fams[f]) for f in sorted(fams, key=_family_key)},
        "by_family_n_r": {f: {str(n): _acc(*fam_nr[f][n]) for n in sorted(fam_nr[f])}
                          for f in sorted(fam_nr, key=_family_key)},
        "by_form": {f: {c: _acc(*fam_form[f][c]) for c in sorted(fam_form[f], key=_form_key)}
                    for f in sorted(fam_form, key=_family_key)},
        "gap": {"overall": _gap(*overall), "parents": len(parents),
                "by_n_r": {str(n): _gap(*gap[n]) for n in sorted(k for k in gap if k != "all")}},
        "pair_score": pair_score(samples),
    }


def build_report(samples: list[Sample], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    metrics = sorted({s.metric for s in samples}, key=lambda m: (m != "acc", m))
    return {**(meta or {}), "samples": len(samples),
            "metrics": {m: metric_section([s for s in samples if s.metric == m]) for m in metrics}}


def build_comparison(runs: list[Run]) -> dict[str, Any]:
    """One report per model (never mixed), in model-size order (unknown sizes last)."""
    return {"models": [build_report(r.samples, r.meta()) for r in runs]}


# ---------------------------------------------------------------------------------------------
# rendering

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    out = ["# GAR report", ""]
    out.append(f"Model: {report.get('model') or 'unknown'}; {report['samples']} samples from "
               f"{report.get('samples_files', '?')} samples files.")
    for metric, sec in report["metrics"].items():
        out += ["", f"## Metric `{metric}`", "", "### Accuracy by family, n_r and schema pair", ""]
        out += _table(["family", "n_r", "pair", "correct", "n", metric],
                      ([c["family"], c["n_r"], c["pair"], c["correct"], c["n"], _pct(c["acc"])]
                       for c in sec["cells"]))
        out += ["", "### Totals per family", ""]
        ps = sec.get("pair_score")
        if ps:  # the bias-free classification score next to acc
            out += _table(["family", "correct", "n", metric, "pair score (pairs)"],
                          ([f, t["correct"], t["n"], _pct(t["acc"]),
                            f"{_pct(ps['overall']['score'])} ({ps['overall']['pairs']})" if f == "cls" else ""]
                           for f, t in sec["by_family"].items()))
        else:
            out += _table(["family", "correct", "n", metric],
                          ([f, t["correct"], t["n"], _pct(t["acc"])] for f, t in sec["by_family"].items()))
        out += ["", "### Totals per family and n_r", ""]
        out += _table(["family", "n_r", "correct", "n", metric],
                      ([f, n, t["correct"], t["n"], _pct(t["acc"])]
                       for f, by in sec["by_family_n_r"].items() for n, t in by.items()))
        if sec["by_form"]:
            forms = sorted({c for by in sec["by_form"].values() for c in by}, key=_form_key)
            out += ["", "### Accuracy by family and question form", "",
                    "S: asks the key side (swap_qa), N: negated, R: context items reversed "
                    "(rev_item2str); acc (correct/n).", ""]
            out += _table(["family", *forms], ([f, *[_cell(by.get(c)) for c in forms]]
                                               for f, by in sec["by_form"].items()))
        g = sec["gap"]
        out += ["", "### Compositionality gap", "",
                "P(composite wrong | all its sub-questions right), over the generation records whose "
                f"sub-questions were all scored ({g['overall']['joined']} of {g['parents']}).", ""]
        rows = [["all", *[g["overall"][k] for k in ("wrong", "all_subs_right")], _pct(g["overall"]["gap"]),
                 g["overall"]["joined"]]]
        rows += [[n, x["wrong"], x["all_subs_right"], _pct(x["gap"]), x["joined"]] for n, x in g["by_n_r"].items()]
        out += _table(["n_r", "composite wrong", "all subs right", "gap", "joined"], rows)
        ps = sec.get("pair_score")
        if ps:
            out += ["", "### Classification pair score", "",
                    "Over Yes/No twins: the share of pairs where the true statement gets the larger "
                    "logL(Yes) - logL(No) (ties count 1/2); free of label bias, unlike acc.", ""]
            out += _table(["n_r", "pairs", "true higher", "ties", "pair score"],
                          ([n, x["pairs"], x["true_higher"], x["ties"], _pct(x["score"])]
                           for n, x in [("all", ps["overall"]), *ps["by_n_r"].items()]))
    return "\n".join(out) + "\n"


def plot_png(report: dict[str, Any]) -> bytes:
    """Accuracy against n_r, one line per (metric, family), as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        for metric, sec in report["metrics"].items():
            for fam, by in sec["by_family_n_r"].items():
                xs = [int(n) for n in by]
                ys = [by[n]["acc"] for n in by]
                label = fam if len(report["metrics"]) == 1 else f"{fam} ({metric})"
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel("n_r (non-equal relations)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(sorted({int(n) for sec in report["metrics"].values()
                              for by in sec["by_family_n_r"].values() for n in by}))
        model = Path(report["model"]).name if report.get("model") else ""
        ax.set_title(f"GAR accuracy vs n_r{' - ' + model if model else ''}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _cell(t: dict[str, Any] | None) -> str:
    return "-" if not t or not t["n"] else f"{t['acc']:.3f} ({t['correct']}/{t['n']})"


def render_comparison_markdown(comp: dict[str, Any]) -> str:
    """The paper's table: accuracy by model x family x n_r with counts, the gap per model, the pair score."""
    models = comp["models"]
    out = ["# GAR model comparison", ""]
    out += _table(["model", "lm-eval model", "parameters", "name", "samples"],
                  ([m["label"], m.get("backend") or "?", m["params"] or "?", m["model"] or "?", m["samples"]]
                   for m in models))
    nrs = sorted({n for m in models for sec in m["metrics"].values() for by in sec["by_family_n_r"].values()
                  for n in by}, key=int)
    out += ["", "## Accuracy by model, family and n_r", "", "acc (correct/n); metric `acc` is the "
            "log-likelihood route, `exact_match` free generation, `exact_match,answer` the chat route.", ""]
    rows = []
    for m in models:
        for metric, sec in m["metrics"].items():
            for fam, by in sec["by_family_n_r"].items():
                rows.append([m["label"], metric, fam, *[_cell(by.get(n)) for n in nrs],
                             _cell(sec["by_family"][fam])])
    out += _table(["model", "metric", "family", *[f"n_r={n}" for n in nrs], "all"], rows)
    out += ["", "## Compositionality gap", "", "P(composite wrong | all its sub-questions right) per model "
            "and metric; `-` where no generation record has all its sub-questions scored.", ""]
    rows = []
    for m in models:
        for metric, sec in m["metrics"].items():
            if not any(f == "gen" for f in sec["by_family"]):
                continue
            g = sec["gap"]["overall"]
            rows.append([m["label"], m["params"] or "?", metric, g["wrong"] if g["joined"] else "-",
                         g["all_subs_right"] if g["joined"] else "-", _pct(g["gap"]),
                         f"{g['joined']} of {sec['gap']['parents']}"])
    out += _table(["model", "parameters", "metric", "composite wrong", "all subs right", "gap", "joined"], rows)
    out += ["", "## Classification: acc and the pair score", "", "Pair score: over Yes/No twins, the share "
            "where the true statement gets the larger logL(Yes) - logL(No) (log-likelihood route only).", ""]
    rows = []
    for m in models:
        for metric, sec in m["metrics"].items():
            if "cls" not in sec["by_family"]:
                continue
            ps = (sec.get("pair_score") or {}).get("overall")
            rows.append([m["label"], metric, _cell(sec["by_family"]["cls"]),
                         _pct(ps["score"]) if ps else "-", ps["pairs"] if ps else "-"])
    out += _table(["model", "metric", "cls acc", "pair score", "pairs"], rows)
    return "\n".join(out) + "\n"


def _figure_png(draw) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)


def plot_comparison_acc_png(comp: dict[str, Any]) -> bytes:
    """Accuracy against n_r, one panel per family, one line per (model, metric)."""
    models = comp["models"]
    fams = sorted({f for m in models for sec in m["metrics"].values() for f in sec["by_family_n_r"]}, key=_family_key)
    many_metrics = len({k for m in models for k in m["metrics"]}) > 1

    def draw(plt):
        fig, axes = plt.subplots(1, len(fams), figsize=(4.5 * len(fams), 4), dpi=100, squeeze=False)
        lines = [(m, metric, sec) for m in models for metric, sec in m["metrics"].items()]
        for ax, fam in zip(axes[0], fams):
            for i, (m, metric, sec) in enumerate(lines):  # one colour per line in every panel
                by = sec["by_family_n_r"].get(fam)
                if by:
                    ax.plot([int(n) for n in by], [by[n]["acc"] for n in by], marker="o", color=f"C{i % 10}",
                            label=m["label"] + (f" ({metric})" if many_metrics else ""))
            ax.set_title(fam, fontsize=9)
            ax.set_xlabel("n_r (non-equal relations)")
            ax.set_xticks(sorted({int(n) for m in models for sec in m["metrics"].values()
                                  for n in sec["by_family_n_r"].get(fam, {})}))
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("accuracy")
        legend = {}  # one entry per line over all panels (a model may lack a family)
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(lab, h)
        fig.legend(list(legend.values()), list(legend), fontsize=7, loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(legend)))
        fig.suptitle("GAR accuracy vs n_r per model", fontsize=10)
        return fig
    return _figure_png(draw)


def plot_gap_vs_size_png(comp: dict[str, Any]) -> bytes:
    """The compositionality gap per model against its parameter count (log scale) when every model's
    size is known, else against the model names in size order; models without a gap are left out."""
    pts = [(m["label"], m["params"], metric, sec["gap"]["overall"]["gap"]) for m in comp["models"]
           for metric, sec in m["metrics"].items() if sec["gap"]["overall"]["gap"] is not None]
    labels = [m["label"] for m in comp["models"]]
    by_size = bool(pts) and all(p is not None for _, p, _, _ in pts)

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for metric in sorted({p[2] for p in pts}):
            mine = [p for p in pts if p[2] == metric]
            xs = [p[1] for p in mine] if by_size else [labels.index(p[0]) for p in mine]
            ax.plot(xs, [p[3] for p in mine], marker="o", label=metric)
            for x, p in zip(xs, mine):
                ax.annotate(p[0], (x, p[3]), fontsize=7, textcoords="offset points", xytext=(3, 3))
        if by_size:
            ax.set_xscale("log")
            ax.set_xlabel("parameters")
        else:
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=7)
            ax.set_xlabel("model")
        if not pts:
            ax.text(0.5, 0.5, "no model has sub-question runs", ha="center", transform=ax.transAxes)
        ax.set_ylabel("compositionality gap")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if pts:
            ax.legend(fontsize=8)
        ax.set_title("Compositionality gap vs model size", fontsize=9)
        return fig
    return _figure_png(draw)


def write_outputs(out: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write every file to a temporary file in ``out`` first, then move them all into place."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise GARDataError(f"cannot write to {os.fspath(out)!r}: not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GARDataError(f"cannot create {os.fspath(out)!r}: {e.strerror or e}") from None
    tmps: dict[str, str] = {}
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            tmps[name] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        for name, tmp in tmps.items():
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, out / name)
    except OSError as e:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        raise GARDataError(f"cannot write to {os.fspath(out)!r}: {e.strerror or e}") from None
    except BaseException:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return [out / name for name in files]


def make_report(results_dir: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike | None = None
                ) -> tuple[dict[str, Any], str, list[Path]]:
    """Read one or several lm-eval output folders and write the report to ``out`` (default: the one
    results folder). One model: report.md, report.json, acc_vs_nr.png. Several models (one folder per
    model, or several models' runs in one folder): the comparison, with gap_vs_size.png as well.

    Returns (report dict, markdown, written paths). Nothing is written if anything fails.
    """
    roots = [results_dir] if isinstance(results_dir, (str, os.PathLike)) else list(results_dir)
    if out is None and len(roots) != 1:
        raise GARDataError("several results folders: name the folder to write the report to")
    runs = read_runs(roots)
    if len(runs) == 1:
        report = build_report(runs[0].samples, runs[0].meta())
        md = render_markdown(report)
        pngs = {"acc_vs_nr.png": plot_png(report)}
    else:
        report = build_comparison(runs)
        md = render_comparison_markdown(report)
        pngs = {"acc_vs_nr.png": plot_comparison_acc_png(report), "gap_vs_size.png": plot_gap_vs_size_png(report)}
    files = {"report.md": md.encode("utf-8"),
             "report.json": (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), **pngs}
    written = write_outputs(roots[0] if out is None else out, files)
    return report, md, written
