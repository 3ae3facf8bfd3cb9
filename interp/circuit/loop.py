"""The relational loop detector (CIRCUITS.md sections 3 and 4).

Attention edges only point forward in the prompt (a head at role t attends to a role s before
it), so the role graph of attention edges s -> t has no directed cycle. The paper's loop closes
through *composition*: a head's output at role t feeds another head's key/value (a head whose
source role is t) or its query (a head whose destination role is t). So a loop is:

* a **closing head** X = (l, h) attending a -> b (a != b) with, in the circuit,
* a **key chain** of head nodes o1 -> r1 -> ... -> a, each attending from the previous one's
  destination and fed by it through key/value at the shared role, the last one feeding X's key or
  value at a (the chain may be empty: o1 = a and X reads a directly, through its k or v edge);
* a **query chain** of head nodes o2 -> ... -> b (at least one), fed the same way, the last one
  feeding X's query at b;
* "feeding" allows relays that stay at one role (MLP nodes, heads r -> r): ``graph.head_feeds``.

Together the chains and X's edge a -> b form a cycle of the undirected role graph when o1 = o2
(a *closed* loop, e.g. K->V->A and K->Q closed by Q->A); the roles of the two chains must not
overlap elsewhere. Templates (``tables/loop_templates.json``, data) say which closing role pairs,
which roles the loop must pass through, whether closure is required, and which rows they describe
(``polarity``: affirmative, negated or either). The reported loop (:attr:`LoopResult.shortest`)
is, when the rows' polarity is given, one of a template of that polarity if any, else of a
polarity-neutral one, else any; among those the one with the fewest role edges (ties: the
strongest weakest edge). A role edge's weight is the sum of |score| of the in-circuit attention
edges of its witness heads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .extract import backward_reach, edges_between, forward_reach, prune_dangling
from .faithfulness import EvaluateFn, compare_to_random
from .graph import COMPONENTS, Circuit, EdgeScores, head_feeds, node_graph


def load_templates(path: str | None = None) -> dict:
    """The loop templates (default: the packaged ``tables/loop_templates.json``)."""
    if path is None:
        text = resources.files("interp.circuit").joinpath("tables/loop_templates.json").read_text()
    else:
        with open(path) as f:
            text = f.read()
    return json.loads(text)


@dataclass
class Loop:
    """One relational loop (all closing heads that realise the same role structure)."""

    template: str
    closing: tuple[str, str]  # (a, b): the closing heads attend a -> b
    closing_heads: list[tuple[int, int]]
    key_chain: list[str]  # roles o1 .. a  ([a] when empty)
    query_chain: list[str]  # roles o2 .. b
    closed: bool
    polarity: str | None = None  # the template's: "affirmative", "negated" or None (either)
    edges: list[dict] = field(default_factory=list)  # {src, dst, heads, weight, part}

    @property
    def length(self) -> int:
        return len(self.edges)

    @property
    def roles(self) -> list[str]:
        return sorted(set(self.key_chain) | set(self.query_chain))

    def weakest_edge(self) -> dict:
        return min(self.edges, key=lambda e: e["weight"])

    def head_nodes(self) -> list[tuple[int, int, str, str]]:
        """(layer, head, src, dst) of every witness head node of the loop."""
        return sorted({(l, h, e["src"], e["dst"]) for e in self.edges for l, h in e["heads"]})

    def describe(self) -> str:
        key = "->".join(self.key_chain)
        qry = "->".join(self.query_chain)
        heads = " ".join(f"{l}.{h}" for l, h in self.closing_heads)
        kind = "closed" if self.closed else "open"
        return f"{kind} loop [{self.template}]: key {key}, query {qry}, closed by {self.closing[0]}->{self.closing[1]} ({heads})"

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(length=self.length, roles=self.roles, weakest_edge=self.weakest_edge(), text=self.describe())
        return d


POLARITIES = ("affirmative", "negated")


def _polarity_rank(loop: Loop, polarity: str | None) -> int:
    """0: the loop's template describes rows of ``polarity`` (or none is given), 1: either, 2: the other."""
    if polarity is None or loop.polarity == polarity:
        return 0
    return 1 if loop.polarity is None else 2


@dataclass
class LoopResult:
    """Every loop found in one circuit, and the verdict (``polarity``: the rows', if known)."""

    templates: list[str]
    loops: list[Loop]
    polarity: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.loops)

    @property
    def shortest(self) -> Loop | None:
        """The reported loop: of the rows' polarity first (then neutral, then the other), then
        the fewest role edges, then the strongest weakest edge."""
        if not self.loops:
            return None
        return min(self.loops, key=lambda lp: (_polarity_rank(lp, self.polarity), lp.length,
                                               -lp.weakest_edge()["weight"], lp.describe()))

    def closing_heads(self, closing: tuple[str, str] | None = None) -> set[tuple[int, int]]:
        return {hd for lp in self.loops if closing is None or lp.closing == tuple(closing) for hd in lp.closing_heads}

    def to_json(self) -> dict:
        s = self.shortest
        return {"found": self.found, "templates": self.templates, "polarity": self.polarity,
                "n_loops": len(self.loops), "shortest": s.to_json() if s else None,
                "loops": [lp.to_json() for lp in self.loops]}


def _role_paths(by_pair: Mapping[tuple[str, str], list[str]], end: str, max_len: int) -> list[list[str]]:
    """Simple directed role paths (>= 1 edge, <= max_len edges) ending at ``end``."""
    preds: dict[str, set[str]] = {}
    for s, t in by_pair:
        preds.setdefault(t, set()).add(s)
    out: list[list[str]] = []

    def walk(path: list[str]) -> None:
        if len(path) - 1 >= max_len:
            return
        for p in sorted(preds.get(path[0], ())):
            if p not in path:
                new = [p] + path
                out.append(new)
                walk(new)

    walk([end])
    return out


def _chain_witnesses(path: list[str], by_pair: Mapping[tuple[str, str], list[str]],
                     feeds: Mapping[str, set[tuple[str, str]]], last_ok: set[str]) -> list[set[str]] | None:
    """Head nodes realising each edge of the role path, chained through k/v feeding, whose last
    node is in ``last_ok``; None when the chain is not realised."""
    sets = [set(by_pair.get((path[0], path[1]), ()))]
    for i in range(1, len(path) - 1):
        nxt = {y for y in by_pair.get((path[i], path[i + 1]), ())
               if any((y, "k") in feeds[z] or (y, "v") in feeds[z] for z in sets[-1])}
        sets.append(nxt)
    sets[-1] &= last_ok
    if not sets[-1]:
        return None
    for i in range(len(sets) - 2, -1, -1):  # keep only nodes on a realised chain
        sets[i] = {z for z in sets[i] if any((y, "k") in feeds[z] or (y, "v") in feeds[z] for y in sets[i + 1])}
    return sets


def find_loops(circuit: Circuit, scores: EdgeScores, templates: Iterable[str] | None = None,
               table: dict | None = None, max_chain: int = 3, prune: bool = True,
               polarity: str | None = None) -> LoopResult:
    """Every relational loop of the (pruned) circuit that matches one of ``templates`` (names in
    the table; default: all). Chains have at most ``max_chain`` role edges. ``polarity`` (the
    rows': "affirmative", "negated", or None when mixed or unknown) picks the reported loop."""
    if polarity is not None and polarity not in POLARITIES:
        raise ValueError(f"unknown polarity {polarity!r}; known: {', '.join(POLARITIES)} or None")
    table = table or load_templates()
    names = list(templates) if templates is not None else list(table["templates"])
    unknown = [n for n in names if n not in table["templates"]]
    if unknown:
        raise ValueError(f"unknown loop templates {unknown}; known: {sorted(table['templates'])}")
    if prune:
        circuit = prune_dangling(circuit, scores.shape)
    g = node_graph(circuit, scores)
    feeds = head_feeds(g)
    weight = {n: d["weight"] for n, d in g.nodes(data=True) if d["kind"] == "head"}
    by_pair: dict[tuple[str, str], list[str]] = {}
    for n, d in g.nodes(data=True):
        if d["kind"] == "head" and d["src"] != d["dst"]:
            by_pair.setdefault((d["src"], d["dst"]), []).append(n)
    rix = {r: i for i, r in enumerate(scores.roles)}
    found: dict[tuple, Loop] = {}
    for (a, b), xs in sorted(by_pair.items()):
        key_paths = [[a]] + _role_paths(by_pair, a, max_chain)
        qry_paths = _role_paths(by_pair, b, max_chain)
        for x in sorted(xs):
            xd = g.nodes[x]
            comps = circuit.attn_mask[xd["layer"], xd["head"], rix[a], rix[b]]
            fed_k = {z for z, f in feeds.items() if (x, "k") in f or (x, "v") in f}
            fed_q = {z for z, f in feeds.items() if (x, "q") in f}
            for kp in key_paths:
                if b in kp:
                    continue
                if len(kp) == 1:
                    if not (comps[1] or comps[2]):
                        continue
                    k_sets: list[set[str]] | None = []
                else:
                    k_sets = _chain_witnesses(kp, by_pair, feeds, fed_k)
                    if k_sets is None:
                        continue
                for qp in qry_paths:
                    closed = qp[0] == kp[0]
                    shared = set(kp) & set(qp)
                    if a in qp[1:] or shared - ({kp[0]} if closed else set()):
                        continue
                    q_sets = _chain_witnesses(qp, by_pair, feeds, fed_q)
                    if q_sets is None:
                        continue
                    roles = set(kp) | set(qp)
                    for name in names:
                        t = table["templates"][name]
                        if t["closing"] is not None and [a, b] not in [list(p) for p in t["closing"]]:
                            continue
                        if t["closed"] and not closed:
                            continue
                        if not all(roles & set(alts) for alts in t["required"]):
                            continue
                        key = (name, a, b, tuple(kp), tuple(qp))
                        loop = found.get(key)
                        if loop is None:
                            loop = found[key] = Loop(name, (a, b), [], list(kp), list(qp), closed,
                                                     t.get("polarity"))
                            loop.edges = ([_edge(kp[i], kp[i + 1], "key") for i in range(len(kp) - 1)]
                                          + [_edge(qp[i], qp[i + 1], "query") for i in range(len(qp) - 1)]
                                          + [_edge(a, b, "closing")])
                        hd = (xd["layer"], xd["head"])
                        if hd not in loop.closing_heads:
                            loop.closing_heads.append(hd)
                        witness = [*(k_sets or []), *q_sets, {x}]
                        for e, nodes in zip(loop.edges, witness):
                            for n in nodes:
                                h = (g.nodes[n]["layer"], g.nodes[n]["head"])
                                if h not in e["heads"]:
                                    e["heads"].append(h)
                                    e["weight"] += weight[n]
    loops = list(found.values())
    for lp in loops:
        lp.closing_heads.sort()
        for e in lp.edges:
            e["heads"].sort()
    return LoopResult(names, sorted(loops, key=lambda lp: (_polarity_rank(lp, polarity), lp.length, lp.describe())),
                      polarity)


def _edge(src: str, dst: str, part: str) -> dict:
    return {"src": src, "dst": dst, "part": part, "heads": [], "weight": 0.0}


def templates_for(kind: str, table: dict | None = None) -> list[str]:
    """Template names for a task kind (``cls``, ``gen``, ``any``)."""
    table = table or load_templates()
    if kind not in table["task_kinds"]:
        raise ValueError(f"unknown task kind {kind!r}; known: {sorted(table['task_kinds'])}")
    return list(table["task_kinds"][kind])


# --- the loop sub-circuit ----------------------------------------------------------------------
def loop_subcircuit(circuit: Circuit, scores: EdgeScores, loop: Loop) -> Circuit:
    """The circuit's edges on an embedding -> logits path through one of the loop's witness
    attention edges (the loop heads' in-circuit q/k/v edges on the loop's role edges): the
    witness edges, everything upstream of their inputs and downstream of their outputs."""
    shape = scores.shape
    c = prune_dangling(circuit, shape)
    rix = {r: i for i, r in enumerate(scores.roles)}
    witness = Circuit(np.zeros_like(c.resid_mask), np.zeros_like(c.attn_mask))
    for l, h, s, t in loop.head_nodes():
        witness.attn_mask[l, h, rix[s], rix[t]] = c.attn_mask[l, h, rix[s], rix[t]]
    S, P, R = c.resid_mask.shape
    port_seed = np.zeros((P, R), bool)
    sender_seed = np.zeros((S, R), bool)
    for l, h, s, t, comp in np.argwhere(witness.attn_mask):
        sender_seed[shape.sender("head", int(l), int(h)), t] = True
        idx = int(h) if comp == 0 else shape.group(int(h))
        port_seed[shape.port(COMPONENTS[comp], int(l), idx), t if comp == 0 else s] = True
    every = (np.ones((S, R), bool), np.ones((P, R), bool))
    upstream = edges_between(c, shape, every, backward_reach(c, shape, port_seed=port_seed))
    downstream = edges_between(c, shape, forward_reach(c, shape, sender_seed=sender_seed), every)
    return (upstream | downstream | witness) & c


def loop_faithfulness(scores: EdgeScores, evaluate: EvaluateFn, circuit: Circuit, loop: Loop,
                      m_full: float, m_empty: float, n_random: int = 5, seed: int = 0) -> dict:
    """f of the loop sub-circuit against random sub-circuits of the circuit of the same size."""
    sub = loop_subcircuit(circuit, scores, loop)
    return compare_to_random(scores, evaluate, sub, m_full, m_empty, pool=prune_dangling(circuit, scores.shape),
                             n_random=n_random, seed=seed, kind="uniform")


# --- across tasks, and the True/False heads ----------------------------------------------------
def loop_share(results: Mapping[str, LoopResult]) -> float:
    """Fraction of tasks whose circuit has a loop."""
    return float(np.mean([r.found for r in results.values()])) if results else float("nan")


def closing_head_check(result: LoopResult, true_heads: Sequence[Sequence[int]] = (),
                       false_heads: Sequence[Sequence[int]] = (), closing: tuple[str, str] = ("Q", "A")) -> dict:
    """Whether the heads ``gar heads`` calls True / False are the loop-closing ``Q->A`` heads."""
    closers = result.closing_heads(closing)

    def rows(heads: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        return [{"head": [int(l), int(h)], "closes_loop": (int(l), int(h)) in closers} for l, h in heads]

    t, f = rows(true_heads), rows(false_heads)
    return {"closing": list(closing), "loop_closing_heads": sorted([list(x) for x in closers]),
            "true": t, "false": f,
            "true_close": sum(r["closes_loop"] for r in t), "false_close": sum(r["closes_loop"] for r in f)}


__all__ = ["POLARITIES", "Loop", "LoopResult", "closing_head_check", "find_loops", "load_templates", "loop_faithfulness",
           "loop_share", "loop_subcircuit", "templates_for"]
