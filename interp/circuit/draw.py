"""Pictures of circuits (matplotlib, Agg, imported lazily): the circuit like the paper's Figure 3,
the role-loop diagram, the faithfulness curve against the random band, overlap heatmaps.

Figure 3 conventions: a head node ``L.H s->t`` sits at its destination role t (x, prompt order)
and its layer (y); MLP nodes ``L.MLP r`` between layers; links coloured by the input they feed,
query red / key green / value blue (MLP inputs and logits grey), width by |score|.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .classes import HeadLabel, load_class_table
from .faithfulness import FaithfulnessCurve
from ..core.outputs import atomic_write
from .graph import Circuit, EdgeScores, node_graph

TYPE_COLORS = {"q": "#d62728", "k": "#2ca02c", "v": "#1f4fb4", "mlp": "#7f7f7f", "logits": "#222222"}
_RAD = {"q": 0.12, "k": 0.3, "v": -0.2, "mlp": 0.1, "logits": 0.0}  # parallel q/k/v links stay apart
CLASS_COLORS = {"Loc": "#fdf1c7", "Loc2": "#fbe38e", "Rel": "#dbe8d4", "Rel2": "#c9f2c0", "Ind": "#d9d6ee",
                "Ind2": "#e6dcf2", "NRel": "#dddddd", "NRel2": "#cccccc", "Pred": "#f6c9c6", "PPred": "#f9dcda",
                "Self": "#f2f2f2"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Render to PNG and write atomically, then close the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write(path, buf.getvalue())


def _keep_strongest(g: Any, max_heads: int) -> Any:
    heads = [n for n, d in g.nodes(data=True) if d["kind"] == "head"]
    if len(heads) <= max_heads:
        return g
    drop = sorted(heads, key=lambda n: -g.nodes[n]["weight"])[max_heads:]
    h = g.copy()
    h.remove_nodes_from(drop)
    h.remove_nodes_from([n for n in list(h) if h.degree(n) == 0])
    return h


def draw_circuit(circuit: Circuit, scores: EdgeScores, path: str | Path, title: str = "",
                 labels: Sequence[HeadLabel] | None = None, max_heads: int = 40) -> Path:
    """The circuit like Figure 3: x = roles in prompt order, y = layer (embedding below, logits
    above). At most ``max_heads`` head nodes (the largest weights, sum of |scores|) are drawn."""
    from matplotlib.patches import FancyArrowPatch

    plt = _pyplot()
    g = node_graph(circuit, scores)
    n_heads_all = sum(1 for _, d in g.nodes(data=True) if d["kind"] == "head")
    g = _keep_strongest(g, max_heads)
    L = scores.shape.n_layers
    used = {d["dst"] for _, d in g.nodes(data=True)} | {d["src"] for _, d in g.nodes(data=True)}
    roles = [r for r in scores.roles if r in used] or list(scores.roles)
    xr = {r: i for i, r in enumerate(roles)}
    label_of = {lb.node: lb for lb in (labels or [])}
    display = load_class_table()["display"] if labels else {}

    def y_of(d: dict) -> float:
        return {"emb": -1.0, "logits": float(L), "mlp": d["layer"] + 0.45}.get(d["kind"], float(d["layer"]))

    cells: dict[tuple[str, float], list[str]] = {}
    for n, d in sorted(g.nodes(data=True), key=lambda x: (x[1]["layer"], x[1].get("head", -1), x[0])):
        cells.setdefault((d["dst"], y_of(d)), []).append(n)
    pos: dict[str, tuple[float, float]] = {}
    for (role, y), names in cells.items():  # a crowded cell becomes a small grid
        k = len(names)
        ncols = min(k, 2)
        nrows = math.ceil(k / ncols)
        for i, n in enumerate(names):
            row, col = divmod(i, ncols)
            pos[n] = (xr[role] + (col - (ncols - 1) / 2) * 0.44, y + (row - (nrows - 1) / 2) * 0.5)
    w_in = max(6.0, 2.1 * len(roles))
    h_in = max(4.0, 0.55 * (L + 2) * (1.7 if max((len(v) for v in cells.values()), default=0) > 3 else 1.0))
    fig, ax = plt.subplots(figsize=(w_in, h_in))
    top = max([abs(d["score"]) for *_, d in g.edges(data=True)] + [1e-12])
    for a, b, d in g.edges(data=True):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        rad = 0.0 if abs(x1 - x0) < 1e-6 and d["type"] in ("q", "logits", "mlp") else _RAD[d["type"]]
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=9,
                                     connectionstyle=f"arc3,rad={rad}", color=TYPE_COLORS[d["type"]],
                                     lw=0.6 + 3.4 * abs(d["score"]) / top, alpha=0.75, shrinkA=12, shrinkB=12,
                                     zorder=1))
    fs = 7 if len(pos) < 30 else 5.5
    for n, d in g.nodes(data=True):
        x, y = pos[n]
        lb = label_of.get(n)
        if d["kind"] == "head":
            cls = f"{display.get(lb.label, lb.label)} " if lb is not None else ""
            text = f"{cls}{d['layer']}.{d['head']}\n{d['src']}->{d['dst']}"
            face = CLASS_COLORS.get(lb.label, "#ffffff") if lb is not None else "#ffffff"
        elif d["kind"] == "mlp":
            text, face = f"{d['layer']}.MLP\n{d['dst']}", "#eeeeee"
        else:
            text, face = n, "#ffffff"
        ax.text(x, y, text, ha="center", va="center", fontsize=fs, zorder=3,
                bbox=dict(boxstyle="round,pad=0.25", fc=face, ec="#555555", lw=0.6))
    ax.set_xlim(-0.7, len(roles) - 0.3)
    ax.set_ylim(-1.7, L + 0.7)
    ax.set_xticks(range(len(roles)), roles)
    ax.set_yticks([-1] + list(range(0, L, max(1, L // 15))) + [L],
                  ["emb"] + [str(v) for v in range(0, L, max(1, L // 15))] + ["logits"])
    ax.set_xlabel("role (prompt order)")
    ax.set_ylabel("layer")
    ax.grid(axis="x", color="#eeeeee", zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    shown = sum(1 for _, d in g.nodes(data=True) if d["kind"] == "head")
    note = f"{circuit.n_edges} edges, {n_heads_all} head nodes" + (f" ({shown} strongest shown)" if shown < n_heads_all else "")
    ax.set_title(f"{title}\n{note}" if title else note, fontsize=9)
    handles = [plt.Line2D([], [], color=c, lw=2, label=t) for t, c in TYPE_COLORS.items()]
    ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False, ncol=5, bbox_to_anchor=(0, -0.08))
    return save_figure(fig, path)


def draw_role_loop(circuit: Circuit, scores: EdgeScores, loop: Any, path: str | Path, title: str = "") -> Path:
    """Roles on a circle (prompt order); grey arrows: the circuit's attention edges s -> t (s != t,
    width by summed |score|); the loop (``loop.Loop`` or None) on top: key chain green, query chain
    red, closing edge black, labelled with its heads."""
    plt = _pyplot()
    R = len(scores.roles)
    a = np.abs(np.nan_to_num(scores.attn)) * circuit.attn_mask
    w = a.sum((0, 1, 4))
    np.fill_diagonal(w, 0)
    used = sorted(set(np.flatnonzero(w.sum(0) + w.sum(1))) | (
        {scores.roles.index(r) for e in loop.edges for r in (e["src"], e["dst"])} if loop else set()))
    idx = used or list(range(R))
    ang = {i: math.pi / 2 - 2 * math.pi * k / len(idx) for k, i in enumerate(idx)}
    xy = {i: (math.cos(t), math.sin(t)) for i, t in ang.items()}
    fig, ax = plt.subplots(figsize=(6, 6))
    top = w.max() or 1.0
    for s in idx:
        for t in idx:
            if w[s, t] > 0:
                ax.annotate("", xy=xy[t], xytext=xy[s], arrowprops=dict(
                    arrowstyle="-|>", color="#bbbbbb", lw=0.5 + 3 * w[s, t] / top, shrinkA=16, shrinkB=16,
                    connectionstyle="arc3,rad=0.08"))
    if loop is not None:
        colors = {"key": TYPE_COLORS["k"], "query": TYPE_COLORS["q"], "closing": "#000000"}
        for e in loop.edges:
            s, t = scores.roles.index(e["src"]), scores.roles.index(e["dst"])
            ax.annotate("", xy=xy[t], xytext=xy[s], arrowprops=dict(
                arrowstyle="-|>", color=colors[e["part"]], lw=2.8, shrinkA=16, shrinkB=16,
                connectionstyle="arc3,rad=0.08"))
            mx, my = (xy[s][0] + xy[t][0]) / 2, (xy[s][1] + xy[t][1]) / 2
            heads = " ".join(f"{l}.{h}" for l, h in e["heads"][:4]) + (" ..." if len(e["heads"]) > 4 else "")
            ax.text(mx * 0.88, my * 0.88, heads, fontsize=7, ha="center", va="center", color=colors[e["part"]],
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    for i in idx:
        ax.text(*xy[i], scores.roles[i], ha="center", va="center", fontsize=11, fontweight="bold",
                bbox=dict(boxstyle="circle,pad=0.3", fc="#fafafa", ec="#333333"))
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    verdict = loop.describe() if loop is not None else "no relational loop found"
    ax.set_title(f"{title}\n{verdict}" if title else verdict, fontsize=9, wrap=True)
    return save_figure(fig, path)


def draw_faithfulness(curves: FaithfulnessCurve | Mapping[str, FaithfulnessCurve], path: str | Path,
                      title: str = "") -> Path:
    """f against circuit size (% of edges, log x) with the random controls' mean +- std band."""
    plt = _pyplot()
    if isinstance(curves, FaithfulnessCurve):
        curves = {"circuit": curves}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, c) in enumerate(curves.items()):
        color = plt.get_cmap("tab10")(i)
        x = np.array(c.percentages, float)
        ax.plot(x, c.f, "o-", color=color, label=f"{name} ({c.method}): CPR {c.cpr:.3f}, CMD {c.cmd:.3f}")
        if c.random_f and len(c.random_f[0]):
            mean, std = np.array(c.random_mean, float), np.array(c.random_std, float)
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, lw=0)
            ax.plot(x, mean, "--", color=color, lw=1, label=f"{name}: random {c.random_kind} "
                                                            f"(n={len(c.random_f[0])}), mean +- std")
    ax.axhline(1.0, color="#444444", lw=0.8)
    ax.axhline(0.0, color="#444444", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("circuit size (% of edges)")
    ax.set_ylabel("faithfulness f")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    ax.grid(color="#eeeeee")
    return save_figure(fig, path)


def draw_overlap(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str | Path, title: str = "",
                 col_labels: Sequence[str] | None = None, vmin: float = 0.0, vmax: float = 1.0,
                 cmap: str = "viridis") -> Path:
    """A task x task heatmap (Jaccard, or the transfer matrix with ``col_labels``), values written
    in the cells."""
    plt = _pyplot()
    m = np.array(matrix, float)
    cols = list(col_labels) if col_labels is not None else list(labels)
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * len(cols), 1.2 + 0.6 * len(labels)))
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            v = m[i, j]
            if np.isfinite(v):
                frac = (v - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if frac < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.05)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


__all__ = ["CLASS_COLORS", "TYPE_COLORS", "draw_circuit", "draw_faithfulness", "draw_overlap", "draw_role_loop",
           "save_figure"]
