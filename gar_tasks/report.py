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
    metric: str
    correct: bool
    task: str


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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise GARDataError(f"{where}: {metric} must be 0 or 1, got {value!r}")
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < len(pairs):
        raise GARDataError(f"{where}: task_row {row!r} is not a GAR task row")
    if isinstance(doc["n_r"], bool) or not isinstance(doc["n_r"], int):
        raise GARDataError(f"{where}: n_r {doc['n_r']!r} is not an integer")
    return Sample(str(doc["id"]), str(doc["pair_id"]), str(doc["family"]), doc["n_r"], pairs[row],
                  str(doc["rel0"]), str(doc["rel1"]), metric, value == 1, task)


def read_samples(root: str | os.PathLike) -> tuple[list[Sample], dict[str, Any]]:
    """Every GAR sample under ``root`` (later runs replace earlier ones) and facts about the source."""
    samples_files, results_files = find_result_files(root)
    if not samples_files:
        raise GARDataError(f"no lm-eval samples files (samples_<task>_<date>.jsonl) under "
                           f"{os.fspath(root)!r}: run lm_eval with --output_path and --log_samples")
    folders = sorted({p.parent for p in samples_files})
    if len(folders) > 1:
        names = ", ".join(repr(os.fspath(f)) for f in folders[:3]) + (", ..." if len(folders) > 3 else "")
        raise GARDataError(f"samples of {len(folders)} runs (model folders) found: {names}; "
                           f"report one of them at a time")
    pairs = _pair_names()
    latest: dict[tuple[str, str], tuple[str, Sample]] = {}
    for path in samples_files:
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
    if not latest:
        raise GARDataError(f"no GAR samples in the {len(samples_files)} samples files under {os.fspath(root)!r}")
    models = set()
    for path in results_files:
        try:
            d = json.loads(_read_text(path))
        except json.JSONDecodeError as e:
            raise GARDataError(f"cannot read {os.fspath(path)!r}: not valid JSON ({e.msg})") from None
        if isinstance(d, dict) and d.get("model_name"):
            models.add(str(d["model_name"]))
    meta = {"model": ", ".join(sorted(models)) or None, "samples_files": len(samples_files),
            "results_files": len(results_files)}
    return [s for _, s in latest.values()], meta


# ---------------------------------------------------------------------------------------------
# the numbers

def _acc(correct: int, n: int) -> dict[str, Any]:
    return {"correct": correct, "n": n, "acc": correct / n if n else None}


def _family_key(f: str) -> tuple:
    return (FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER), f)


def _gap(wrong: int, right: int, joined: int) -> dict[str, Any]:
    return {"wrong": wrong, "all_subs_right": right, "gap": wrong / right if right else None, "joined": joined}


def metric_section(samples: list[Sample]) -> dict[str, Any]:
    """Accuracy tables and the compositionality gap of the samples of one metric."""
    cells: dict[tuple, list[int]] = {}
    fams: dict[str, list[int]] = {}
    fam_nr: dict[str, dict[int, list[int]]] = {}
    for s in samples:
        for counter in (cells.setdefault((s.family, s.n_r, s.pair), [0, 0]), fams.setdefault(s.family, [0, 0]),
                        fam_nr.setdefault(s.family, {}).setdefault(s.n_r, [0, 0])):
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
        "gap": {"overall": _gap(*overall), "parents": len(parents),
                "by_n_r": {str(n): _gap(*gap[n]) for n in sorted(k for k in gap if k != "all")}},
    }


def build_report(samples: list[Sample], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    metrics = sorted({s.metric for s in samples}, key=lambda m: (m != "acc", m))
    return {**(meta or {}), "samples": len(samples),
            "metrics": {m: metric_section([s for s in samples if s.metric == m]) for m in metrics}}


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
        out += _table(["family", "correct", "n", metric],
                      ([f, t["correct"], t["n"], _pct(t["acc"])] for f, t in sec["by_family"].items()))
        out += ["", "### Totals per family and n_r", ""]
        out += _table(["family", "n_r", "correct", "n", metric],
                      ([f, n, t["correct"], t["n"], _pct(t["acc"])]
                       for f, by in sec["by_family_n_r"].items() for n, t in by.items()))
        g = sec["gap"]
        out += ["", "### Compositionality gap", "",
                "P(composite wrong | all its sub-questions right), over the generation records whose "
                f"sub-questions were all scored ({g['overall']['joined']} of {g['parents']}).", ""]
        rows = [["all", *[g["overall"][k] for k in ("wrong", "all_subs_right")], _pct(g["overall"]["gap"]),
                 g["overall"]["joined"]]]
        rows += [[n, x["wrong"], x["all_subs_right"], _pct(x["gap"]), x["joined"]] for n, x in g["by_n_r"].items()]
        out += _table(["n_r", "composite wrong", "all subs right", "gap", "joined"], rows)
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


def make_report(results_dir: str | os.PathLike, out: str | os.PathLike | None = None
                ) -> tuple[dict[str, Any], str, list[Path]]:
    """Read ``results_dir``, write the three outputs to ``out`` (default: ``results_dir``).

    Returns (report dict, markdown, written paths). Nothing is written if anything fails.
    """
    samples, meta = read_samples(results_dir)
    report = build_report(samples, meta)
    md = render_markdown(report)
    files = {"report.md": md.encode("utf-8"),
             "report.json": (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
             "acc_vs_nr.png": plot_png(report)}
    written = write_outputs(results_dir if out is None else out, files)
    return report, md, written
