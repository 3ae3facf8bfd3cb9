"""The graph side's files for ``gar circuit`` and ``gar circuit-overlap``, composed from the other
modules, so the commands stay thin: the engine supplies scores (and an ``evaluate`` callable),
these functions extract, analyse and write. Every file is written atomically.

``gar circuit`` folder: ``scores.npz``, ``graph.json``, ``circuit.dot``, ``loop.json``,
``faithfulness.json`` (when an evaluate callable is given), ``summary.md``, ``circuit.png``,
``loop.png``, ``faithfulness.png``.
``gar circuit-overlap`` folder: ``overlap.json``, ``overlap_{edges,nodes,heads}.png``,
``core_graph.json``, ``transfer.png`` (with evaluators).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .classes import classify_heads, class_counts, labels_to_json
from .draw import draw_circuit, draw_faithfulness, draw_overlap, draw_role_loop
from .extract import edge_counts, extract, n_for_percent
from .faithfulness import MIB_PERCENTAGES, EvaluateFn, faithfulness, faithfulness_curve
from ..core.outputs import atomic_write
from .graph import Circuit, EdgeScores, save_graph_json, to_dot
from .loop import closing_head_check, find_loops, loop_faithfulness, loop_share, templates_for
from .overlap import LEVELS, core_circuit, core_vs_random, overlap_matrices, random_floor, split_half, transfer_matrix
from .summary import write_summary


def _dump(path: Path, data: Any) -> Path:
    return atomic_write(path, json.dumps(data, indent=1, default=float))


def circuit_size(scores: EdgeScores, n: int | None = None, percent: float | None = None) -> int:
    """Edges requested: ``n`` if given, else ``percent`` % of the existing edges (default 1 %)."""
    if n is not None and percent is not None:
        raise ValueError("give a circuit size as a count or as a percentage, not both")
    if n is not None:
        if n < 0:
            raise ValueError(f"circuit size must be >= 0 (got {n})")
        return int(n)
    return n_for_percent(1.0 if percent is None else float(percent), scores.n_edges())


def write_circuit_outputs(out_dir: str | Path, scores: EdgeScores, *, n: int | None = None,
                          percent: float | None = None, method: str = "topn", absolute: bool = True,
                          evaluate: EvaluateFn | None = None, m_full: float | None = None,
                          m_empty: float | None = None, percentages: Sequence[float] = MIB_PERCENTAGES,
                          n_random: int = 5, seed: int = 0, random_kind: str = "connected",
                          task_kind: str = "any", true_heads: Sequence[Sequence[int]] = (),
                          false_heads: Sequence[Sequence[int]] = (), title: str = "Circuit",
                          max_heads_drawn: int = 40, progress: Callable[[str], None] | None = None,
                          polarity: str | None = None) -> dict:
    """Extract the circuit (pruned), classify its heads, find its loops, and (with ``evaluate``,
    ``m_full``, ``m_empty``) measure the faithfulness curve and the loop sub-circuit against
    random ones; write every file. ``polarity``: the rows' ("affirmative" / "negated" / None),
    which picks the reported loop. Returns the paths and the headline numbers."""
    if evaluate is not None and (m_full is None or m_empty is None):
        raise ValueError("faithfulness needs m(full) and m(empty) with the evaluate callable")
    size = circuit_size(scores, n, percent)
    circuit = extract(scores, size, method, absolute, prune=True)
    labels = classify_heads(circuit, scores)
    loops = find_loops(circuit, scores, templates_for(task_kind), polarity=polarity)
    heads_check = closing_head_check(loops, true_heads, false_heads) if (true_heads or false_heads) else None
    faith = loop_f = None
    if evaluate is not None:
        assert m_full is not None and m_empty is not None
        faith = faithfulness_curve(scores, evaluate, m_full, m_empty, percentages, method, absolute, True,
                                   n_random, seed, random_kind, progress=progress)
        if loops.found:
            loop_f = loop_faithfulness(scores, evaluate, circuit, loops.shortest, m_full, m_empty, n_random, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"scores": scores.save(out / "scores.npz"),
             "graph": save_graph_json(out / "graph.json", circuit, scores,
                                      extra={"method": method, "absolute": absolute, "requested_edges": size,
                                             "head_classes": labels_to_json(labels)},
                                      node_classes={lb.node: lb.label for lb in labels}),
             "dot": atomic_write(out / "circuit.dot", to_dot(circuit, scores, title)),
             "loop": _dump(out / "loop.json", {**loops.to_json(), "loop_faithfulness": loop_f,
                                               "true_false_heads": heads_check}),
             "circuit_png": draw_circuit(circuit, scores, out / "circuit.png", title, labels, max_heads_drawn),
             "loop_png": draw_role_loop(circuit, scores, loops.shortest, out / "loop.png", title)}
    if faith is not None:
        paths["faithfulness"] = _dump(out / "faithfulness.json", faith.to_json())
        paths["faithfulness_png"] = draw_faithfulness({title: faith}, out / "faithfulness.png", title)
    paths["summary"] = write_summary(out / "summary.md", scores, circuit, labels, loops, faith, loop_f,
                                     heads_check, title=title)
    return {"paths": {k: str(v) for k, v in paths.items()}, "n_edges": circuit.n_edges,
            "counts": edge_counts(scores, circuit), "classes": class_counts(labels), "loop_found": loops.found,
            "loop": loops.shortest.describe() if loops.found else None,
            "cpr": faith.cpr if faith else None, "cmd": faith.cmd if faith else None}


def faithfulness_headline(out_dir: str | Path) -> dict[str, Any] | None:
    """The headline of a run folder's ``faithfulness.json`` (sizes, f, random mean/std, CPR, CMD),
    None when it was not computed."""
    f = Path(out_dir) / "faithfulness.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    return {k: d.get(k) for k in ("percentages", "n_edges", "f", "random_mean", "random_std", "cpr", "cmd")}


def write_overlap_outputs(out_dir: str | Path, tasks: Mapping[str, EdgeScores], *, n: int | None = None,
                          percent: float | None = None, method: str = "topn", absolute: bool = True,
                          halves: Mapping[str, tuple[EdgeScores, EdgeScores]] | None = None,
                          evaluators: Mapping[str, tuple[EvaluateFn, float, float]] | None = None,
                          core_fraction: float = 0.5, task_kind: str = "any", n_random: int = 5,
                          seed: int = 0, random_kind: str = "connected") -> dict:
    """Across task runs (name -> scores on one graph): circuits of the same size, their overlap
    matrices, the random floor, split-half ceilings (``halves``: name -> two half-run scores),
    the core circuit with its loops, and with ``evaluators`` (name -> (evaluate, m_full, m_empty))
    the transfer matrix and the core circuit against random circuits on every task."""
    if len(tasks) < 2:
        raise ValueError("overlap needs at least two task runs")
    names = list(tasks)
    first = tasks[names[0]]
    circuits: dict[str, Circuit] = {}
    sizes: dict[str, int] = {}
    for name, s in tasks.items():
        sizes[name] = circuit_size(s, n, percent)
        circuits[name] = extract(s, sizes[name], method, absolute, prune=True)
    mats = overlap_matrices({k: (circuits[k], tasks[k]) for k in names})
    loops = {k: find_loops(circuits[k], tasks[k], templates_for(task_kind)) for k in names}
    report: dict[str, Any] = {"tasks": names, "method": method, "requested_edges": sizes,
                              "n_edges": {k: c.n_edges for k, c in circuits.items()}, "overlap": mats,
                              "random_floor": random_floor(first, max(1, circuits[names[0]].n_edges), n_random,
                                                           seed, random_kind),
                              "loop_share": loop_share(loops),
                              "loops": {k: (v.shortest.describe() if v.found else None) for k, v in loops.items()}}
    if halves:
        report["split_half"] = {k: split_half(a, b, circuit_size(a, n, percent), method, absolute)
                                for k, (a, b) in halves.items()}
    core = core_circuit(list(circuits.values()), core_fraction)
    report["core"] = {"fraction": core_fraction, "n_edges": core.n_edges,
                      "heads": sorted([list(h) for h in core.heads()])}
    core_loops = find_loops(core, first, templates_for(task_kind))
    report["core"]["loop"] = core_loops.shortest.describe() if core_loops.found else None
    if evaluators:
        report["transfer"] = transfer_matrix(circuits, {k: v[0] for k, v in evaluators.items()},
                                             {k: (v[1], v[2]) for k, v in evaluators.items()})
        report["core"]["vs_random"] = core_vs_random(
            core, {k: (tasks[k], ev, mf, me) for k, (ev, mf, me) in evaluators.items()}, n_random, seed, random_kind)
        report["core"]["f"] = {k: faithfulness(float(ev(*core.masks())), mf, me) for k, (ev, mf, me) in evaluators.items()}
    out = Path(out_dir)  # everything is computed: now write
    out.mkdir(parents=True, exist_ok=True)
    paths = {"core_graph": save_graph_json(out / "core_graph.json", core, first,
                                           extra={"core_fraction": core_fraction, "tasks": names})}
    if evaluators:
        t = report["transfer"]
        paths["transfer_png"] = draw_overlap(t["f"], t["circuits"], out / "transfer.png",
                                             "transfer: circuit (rows) evaluated on task (columns), f",
                                             col_labels=t["tasks"], vmin=min(0.0, min(map(min, t["f"]))),
                                             vmax=max(1.0, max(map(max, t["f"]))), cmap="magma")
    for level in LEVELS:
        paths[f"overlap_{level}_png"] = draw_overlap(mats[level]["jaccard"], names, out / f"overlap_{level}.png",
                                                     f"{level}: Jaccard")
    paths["overlap"] = _dump(out / "overlap.json", report)
    return {"paths": {k: str(v) for k, v in paths.items()}, "core_edges": core.n_edges,
            "loop_share": report["loop_share"]}


__all__ = ["circuit_size", "faithfulness_headline", "write_circuit_outputs", "write_overlap_outputs"]
