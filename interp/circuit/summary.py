"""``summary.md`` of one circuit run: the graph, top head nodes by class, the figure's boxes, the
loop verdict and the faithfulness table (pure formatting of what the other modules computed)."""

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


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


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
        lines += ["", f"Loop sub-circuit: {loop_faith['n_edges']} edges, f = {_fmt(loop_faith['f'])}; random "
                      f"sub-circuits of the circuit: {_fmt(loop_faith['random_mean'])} +- "
                      f"{_fmt(loop_faith['random_std'])} (n={len(loop_faith['random_f'])})."]
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
            rnd = f"{_fmt(faith.random_mean[i])} +- {_fmt(faith.random_std[i])}" if n_rand else "n/a"
            lines.append(f"| {p:g} | {faith.n_edges[i]} | {_fmt(faith.f[i])} | {rnd} |")
        r_cpr = float(np.mean(faith.random_cpr)) if faith.random_cpr else float("nan")
        r_cmd = float(np.mean(faith.random_cmd)) if faith.random_cmd else float("nan")
        lines += ["", f"CPR = {_fmt(faith.cpr)} (random {_fmt(r_cpr)}), CMD = {_fmt(faith.cmd)} "
                      f"(random {_fmt(r_cmd)}); areas over the fraction of edges (MIB)."]
    return "\n".join(lines).rstrip() + "\n"


def write_summary(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """``summary_md`` written atomically."""
    return atomic_write(path, summary_md(*args, **kwargs))


__all__ = ["summary_md", "write_summary"]
