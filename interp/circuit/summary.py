"""The circuit commands' text, in one place (pure formatting of what the other modules computed):
``summary.md`` of one run (the graph, top head nodes by class, the figure's boxes, the loop verdict,
the faithfulness table; :func:`summary_md`), its section on a known circuit (:func:`truth_md`),
and the one-line reports ``gar circuit`` prints (:func:`run_lines`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .classes import HeadLabel, class_groups, load_class_table
from .extract import edge_counts
from .faithfulness import FaithfulnessCurve
from ..core.outputs import atomic_write
from .graph import Circuit, EdgeScores
from .loop import LoopResult


def fmt(x: Any, spec: str = ".3f") -> str:
    """A number for people: ``n/a`` for None and non-finite floats, floats by ``spec``."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec) if isinstance(x, float) else str(x)


def summary_md(scores: EdgeScores, circuit: Circuit, labels: Sequence[HeadLabel] | None = None,
               loops: LoopResult | None = None, faith: FaithfulnessCurve | None = None,
               loop_faith: dict | None = None, heads_check: dict | None = None, title: str = "Circuit",
               top: int = 15) -> str:
    """The circuit summary as Markdown. Every argument but the scores and circuit is optional; a
    missing part is stated as not computed."""
    s = scores.shape
    lines = [f"# {title}", ""]
    allc, cc = edge_counts(scores), edge_counts(scores, circuit)
    lines += [f"Model shape: {s.n_layers} layers, {s.n_heads} query heads, {s.n_groups} KV groups; "
              f"roles: {', '.join(scores.roles)}.", "",
              f"Graph: {allc['total']} role-level edges ({allc['resid']} residual, {allc['attn']} attention); "
              f"{allc['position_agnostic']['total']} position-agnostic.",
              f"Circuit: {cc['total']} edges ({cc['resid']} residual, {cc['attn']} attention), "
              f"{len(circuit.heads())} heads.", ""]
    for k, v in sorted(scores.meta.items()):
        lines.append(f"- {k}: {v}")
    if scores.meta:
        lines.append("")

    lines += ["## Top head nodes", ""]
    if labels:
        display = load_class_table()["display"]
        ranked = sorted(labels, key=lambda lb: -lb.weight)[:top]
        lines += ["| node | class | sum of scores | sum of abs scores |", "|---|---|---|---|"]
        lines += [f"| {lb.node} | {display.get(lb.label, lb.label)} | {lb.score:.4g} | {lb.weight:.4g} |"
                  for lb in ranked]
        lines += ["", "Figure boxes (class / Src->Dst / layer.head, strongest first):", ""]
        lines += [f"- {g['text']}" for g in class_groups(list(labels))[:top]]
    else:
        lines.append("Head classes not computed.")
    lines.append("")

    lines += ["## Relational loop", ""]
    if loops is None:
        lines.append("Loop detection not run.")
    elif not loops.found:
        lines.append(f"No relational loop found (templates: {', '.join(loops.templates)}).")
    else:
        lp = loops.shortest
        assert lp is not None
        w = lp.weakest_edge()
        which = f"reported (rows: {loops.polarity})" if loops.polarity else "shortest"
        lines += [f"Loop found: {len(loops.loops)} loop(s); {which}: {lp.describe()}.", "",
                  "| role edge | part | heads | weight |", "|---|---|---|---|"]
        lines += [f"| {e['src']}->{e['dst']} | {e['part']} | {' '.join(f'{a}.{b}' for a, b in e['heads'])} | "
                  f"{e['weight']:.4g} |" for e in lp.edges]
        lines += ["", f"Weakest edge: {w['src']}->{w['dst']} ({w['weight']:.4g})."]
    if loop_faith is not None:
        lines += ["", f"Loop sub-circuit: {loop_faith['n_edges']} edges, f = {fmt(loop_faith['f'])}; random "
                      f"sub-circuits of the circuit: {fmt(loop_faith['random_mean'])} +- "
                      f"{fmt(loop_faith['random_std'])} (n={len(loop_faith['random_f'])})."]
    if heads_check is not None:
        lines += ["", f"`gar heads` True heads closing a {'->'.join(heads_check['closing'])} loop: "
                      f"{heads_check['true_close']}/{len(heads_check['true'])}; False heads: "
                      f"{heads_check['false_close']}/{len(heads_check['false'])}."]
    lines.append("")

    lines += ["## Faithfulness", ""]
    if faith is None:
        lines.append("Faithfulness not computed.")
    else:
        n_rand = len(faith.random_f[0]) if faith.random_f else 0
        lines += [f"m(full) = {faith.m_full:.4g}, m(empty) = {faith.m_empty:.4g}; extraction: {faith.method}; "
                  f"random controls: {n_rand} {faith.random_kind}.", "",
                  "| % edges | edges | f | random f (mean +- std) |", "|---|---|---|---|"]
        for i, p in enumerate(faith.percentages):
            rnd = f"{fmt(faith.random_mean[i])} +- {fmt(faith.random_std[i])}" if n_rand else "n/a"
            lines.append(f"| {p:g} | {faith.n_edges[i]} | {fmt(faith.f[i])} | {rnd} |")
        r_cpr = float(np.mean(faith.random_cpr)) if faith.random_cpr else float("nan")
        r_cmd = float(np.mean(faith.random_cmd)) if faith.random_cmd else float("nan")
        lines += ["", f"CPR = {fmt(faith.cpr)} (random {fmt(r_cpr)}), CMD = {fmt(faith.cmd)} "
                      f"(random {fmt(r_cmd)}); areas over the fraction of edges (MIB)."]
    return "\n".join(lines).rstrip() + "\n"


def truth_md(t: dict[str, Any]) -> str:
    """summary.md's section on the scores against a known circuit
    (:func:`interp.circuit.groundtruth.truth_scores`)."""
    n = t["n_true"]
    lines = ["", "## Against the known circuit", "",
             f"{n} true edges ({t['n_constant']} more invisible to this counterfactual); AUROC {fmt(t['auroc'])}; "
             f"precision/recall at {n}: {fmt(t['precision'][str(n)])}/{fmt(t['recall'][str(n)])}, at {2 * n}: "
             f"{fmt(t['precision'][str(2 * n)])}/{fmt(t['recall'][str(2 * n)])}"]
    if "f_truth" in t:
        lines.append(f"exact faithfulness: true circuit {fmt(t['f_truth'])}, top {n} {fmt(t['f_top'][str(n)])}, "
                     f"top {2 * n} {fmt(t['f_top'][str(2 * n)])}")
    lines += ["", "| true edge | rank | score |", "|---|---|---|"]
    lines += [f"| `{e}` | {r['rank']} | {fmt(r['score'], '.3g')} |" for e, r in t["ranks"].items()]
    return "\n".join(lines) + "\n"


def append_truth(path: str | Path, t: dict[str, Any]) -> Path:
    """``summary.md`` (written before) with :func:`truth_md` appended, atomically."""
    path = Path(path)
    return atomic_write(path, (path.read_text() if path.exists() else "") + truth_md(t))


def run_lines(info: dict[str, Any]) -> list[str]:
    """What ``gar circuit`` prints of its ``circuit.json``: the circuit, the faithfulness curve,
    the loop, the spot checks, and the truth scores when the run had a truth file."""
    c = info["circuit"]
    fc = info.get("faithfulness") or {}
    curve = ", ".join(f"{p:g}%: f {fmt(f)} (random {fmt(r)})" for p, f, r in
                      zip(fc.get("percentages", []), fc.get("f", []), fc.get("random_mean", [])))
    lines = [f"{info['rows']} rows, circuit of {c['n_edges']} edges (of {info['n_edges_graph']}); "
             f"{curve or 'no curve'}"
             + (f"; CPR {fmt(c.get('cpr'))}, CMD {fmt(c.get('cmd'))}" if len(fc.get("f", [])) > 1 else "")
             + f"; loop {'found' if c['loop_found'] else 'not found'}"
             + (f", spot Spearman {fmt(info['spot']['all']['spearman'])}" if info.get("spot") else "")]
    t = info.get("truth")
    if t:
        n = t["n_true"]
        lines.append(f"truth: recall at {n} {fmt(t['recall'][str(n)])}, at {2 * n} {fmt(t['recall'][str(2 * n)])}, "
                     f"AUROC {fmt(t['auroc'])}" + (f", f true circuit {fmt(t['f_truth'])} vs top {n} "
                                                  f"{fmt(t['f_top'][str(n)])}" if "f_truth" in t else ""))
    return lines


def write_summary(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """``summary_md`` written atomically."""
    return atomic_write(path, summary_md(*args, **kwargs))


__all__ = ["append_truth", "fmt", "run_lines", "summary_md", "truth_md", "write_summary"]
