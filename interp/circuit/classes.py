"""Head classes by role pattern (Loc., Rel., Ind., NRel., (P)Pred., higher order), so a circuit
summary reads like the paper's Figure 3. The patterns are data: ``tables/head_classes.json``
(its ``_doc`` states the rules); a user table with the same keys can replace it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np

from .graph import Circuit, EdgeScores, head_feeds, node_graph


def load_class_table(path: str | None = None) -> dict:
    """The head class table (default: the packaged ``tables/head_classes.json``)."""
    if path is None:
        return json.loads(resources.files("interp.circuit").joinpath("tables/head_classes.json").read_text())
    with open(path) as f:
        return json.load(f)


@dataclass
class HeadLabel:
    """One head node's class."""

    node: str
    layer: int
    head: int
    src: str
    dst: str
    base: str  # first-order class of the pattern
    label: str  # final class: base, its higher-order version, or Pred / PPred
    order: int
    score: float  # signed sum of the node's in-circuit attention edge scores
    weight: float  # sum of their |scores| (ranking: parts of one head may cancel in ``score``)

    @property
    def display(self) -> str:
        return self.label


def _pattern(src: str, dst: str, table: dict) -> dict:
    for p in table["patterns"]:
        if p["src"] == src and p["dst"] == dst:
            return p
    if src == dst:
        return table["fallback"]["same_role"]
    if any(src in g and dst in g for g in table["item_groups"]):
        return table["fallback"]["same_item"]
    return table["fallback"]["other"]


def _reaches_logits_directly(g: Any, node: str) -> bool:
    """A path to the logits through MLP nodes only."""
    stack, seen = [node], {node}
    while stack:
        u = stack.pop()
        for _, v in g.out_edges(u):
            kind = g.nodes[v]["kind"]
            if kind == "logits":
                return True
            if kind == "mlp" and v not in seen:
                seen.add(v)
                stack.append(v)
    return False


def classify_heads(circuit: Circuit, scores: EdgeScores, table: dict | None = None) -> list[HeadLabel]:
    """Every head node of the circuit with its class, in layer order."""
    table = table or load_class_table()
    g = node_graph(circuit, scores)
    feeds = head_feeds(g)
    fed_by: dict[str, set[str]] = {}
    for a, outs in feeds.items():
        for b, _ in outs:
            fed_by.setdefault(b, set()).add(a)
    heads = sorted((d["layer"], d["head"], n) for n, d in g.nodes(data=True) if d["kind"] == "head")
    raisers = set(table["feeds_higher_order"])
    labels: dict[str, HeadLabel] = {}
    for layer, head, n in heads:
        d = g.nodes[n]
        p = _pattern(d["src"], d["dst"], table)
        base = p["class"]
        higher = any(labels[f].base in raisers or labels[f].order > 1 for f in fed_by.get(n, ()) if f in labels)
        if p.get("predicting"):
            label, order = ("Pred" if _reaches_logits_directly(g, n) else "PPred"), 1
        elif higher and p.get("higher"):
            label, order = p["higher"], 2
        else:
            label, order = base, 1
        labels[n] = HeadLabel(n, layer, head, d["src"], d["dst"], base, label, order, float(d["score"]),
                              float(d["weight"]))
    return [labels[n] for _, _, n in heads]


def class_groups(labels: list[HeadLabel], table: dict | None = None) -> list[dict]:
    """Head nodes grouped like the figure's boxes: class / src->dst / layer.head ids, strongest
    (sum of the nodes' weights) first."""
    table = table or load_class_table()
    groups: dict[tuple[str, str, str], dict] = {}
    for lb in labels:
        key = (lb.label, lb.src, lb.dst)
        g = groups.setdefault(key, {"class": lb.label, "display": table["display"].get(lb.label, lb.label),
                                    "src": lb.src, "dst": lb.dst, "heads": [], "weight": 0.0})
        g["heads"].append(f"{lb.layer}.{lb.head}")
        g["weight"] += lb.weight
    out = sorted(groups.values(), key=lambda g: -g["weight"])
    for g in out:
        g["text"] = f"{g['display']} / {g['src']}->{g['dst']} / {' '.join(g['heads'])}"
    return out


def labels_to_json(labels: list[HeadLabel]) -> list[dict]:
    return [asdict(lb) for lb in labels]


def class_counts(labels: list[HeadLabel]) -> dict[str, int]:
    names, counts = np.unique([lb.label for lb in labels], return_counts=True) if labels else ([], [])
    return {str(k): int(v) for k, v in zip(names, counts)}


__all__ = ["HeadLabel", "class_counts", "class_groups", "classify_heads", "labels_to_json", "load_class_table"]
