"""The role-level edge graph: score arrays (``EdgeScores``), circuits (``Circuit``), names and files.

Shapes follow the contract shared with the engine (``docs/architecture.md``, circuit graph: senders,
ports, edges, score arrays; which residual edges exist is ``CircuitShape.edge_exists``):

* senders ``emb``; per layer ``l``: heads ``(l, 0..H-1)`` then ``mlp l``  (S = 1 + L*(H+1));
* ports per layer ``l``: ``q (l, 0..H-1)``, ``k (l, 0..G-1)``, ``v (l, 0..G-1)``, ``mlp_in l``; then
  ``logits``  (P = L*(H+2G+1) + 1);
* ``resid[S, P, R]``: residual edge sender@r -> port@r (NaN where the edge does not exist);
* ``attn[L, H, R, R, 3]``: attention edge inside head (l, h) from source role s to destination
  role t through the query at t (c=0), the key at s (c=1) or the value at s (c=2).

A circuit is the pair of bool masks of the same shapes. Every edge also has a flat index
(residual edges first, then attention edges, both in C order), which extraction and random
controls use.

Names (``graph.json``, ``.dot``, pictures): residual edge ``"3.1@V -> 4.g0.k"`` (sender ``emb``,
``L.H``, ``L.MLP``; port ``L.H.q``, ``L.gG.k``, ``L.gG.v``, ``L.MLP.in``, ``logits``), attention edge
``"4.2 K->V k"``. Figure nodes (``node_graph``): ``emb r``, ``L.H s->t`` (head (L, H) at role t
attending to role s), ``L.MLP r``, ``logits END``; their links are the compositions, typed by the
downstream input: q / k / v (into a head), mlp (into an MLP), logits.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.outputs import atomic_write

COMPONENTS = ("q", "k", "v")
EDGE_TYPES = ("q", "k", "v", "mlp", "logits")
GRAPH_FORMAT = "gar-circuit"
GRAPH_VERSION = 1


def _frozen(values: list) -> np.ndarray:
    a = np.array(values)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class ModelShape:
    """The circuit graph's layout: L layers, H query heads, G key/value groups (head h belongs to
    group h // (H // G)), and whether attention and MLP read the same block input (``parallel``:
    then an MLP port is fed like the q/k/v ports, by the senders before its layer only).

    The one shape type of heads, ports and senders: the engine's :class:`interp.circuit.ports.CircuitShape`
    is this layout plus the block's maths, and scores files carry the layout alone.
    """

    n_layers: int
    n_heads: int
    n_groups: int
    parallel: bool = False

    def __post_init__(self) -> None:
        if min(self.n_layers, self.n_heads, self.n_groups) < 1 or self.n_heads % self.n_groups:
            raise ValueError(f"bad model shape {self}: need L, H, G >= 1 and G dividing H")

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_groups

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def ports_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_groups + 1

    @property
    def n_ports(self) -> int:
        return self.n_layers * self.ports_per_layer + 1

    def group(self, head: int) -> int:
        return head // self.group_size

    def group_heads(self, group: int) -> range:
        return range(group * self.group_size, (group + 1) * self.group_size)

    # --- indices -------------------------------------------------------------------------
    def sender_head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def sender_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def senders_before(self, layer: int) -> int:
        """Number of senders that feed layer ``layer``'s q/k/v ports (emb and layers < l)."""
        return 1 + layer * (self.n_heads + 1)

    def port_q(self, layer: int, head: int) -> int:
        return layer * self.ports_per_layer + head

    def port_k(self, layer: int, group: int) -> int:
        return layer * self.ports_per_layer + self.n_heads + group

    def port_v(self, layer: int, group: int) -> int:
        return layer * self.ports_per_layer + self.n_heads + self.n_groups + group

    def port_mlp(self, layer: int) -> int:
        return layer * self.ports_per_layer + self.n_heads + 2 * self.n_groups

    @property
    def port_logits(self) -> int:
        return self.n_layers * self.ports_per_layer

    def sender(self, kind: str, layer: int = -1, head: int = -1) -> int:
        """Index of sender ``emb`` / ``head (layer, head)`` / ``mlp layer``."""
        if kind == "emb":
            return 0
        if kind == "head":
            return self.sender_head(layer, head)
        if kind == "mlp":
            return self.sender_mlp(layer)
        raise ValueError(f"unknown sender kind {kind!r}")

    def port(self, kind: str, layer: int = -1, index: int = -1) -> int:
        """Index of port ``q (layer, head)``, ``k``/``v (layer, group)``, ``mlp layer`` or ``logits``."""
        if kind == "logits":
            return self.port_logits
        if kind == "mlp":
            return self.port_mlp(layer)
        at = {"q": self.port_q, "k": self.port_k, "v": self.port_v}.get(kind)
        if at is None:
            raise ValueError(f"unknown port kind {kind!r}")
        return at(layer, index)

    def edge_exists(self) -> np.ndarray:
        """``bool[S, P]``: which residual edges exist (position-independent): a sender of layer l
        (emb: -1) feeds the q/k/v ports of layers > l, the MLP ports of layers >= l (heads; > l
        under a parallel residual) or > l (MLPs), and the logits."""
        s_layer, s_kind, _ = self.sender_arrays()
        p_layer, p_kind, _ = self.port_arrays()
        sl, pl = s_layer[:, None], p_layer[None, :]
        fed_like_attn = np.isin(p_kind, ("q", "k", "v", "mlp") if self.parallel else ("q", "k", "v"))[None, :]
        return np.where(fed_like_attn | (s_kind == "mlp")[:, None], pl > sl, pl >= sl)

    def contract_arrays(self) -> dict[str, np.ndarray]:
        """The sender and port tables of ``scores.npz``, by their names in the contract."""
        names = ("sender_layer", "sender_kind", "sender_head", "port_layer", "port_kind", "port_index")
        return dict(zip(names, (*self.sender_arrays(), *self.port_arrays())))

    def to_dict(self) -> dict[str, Any]:
        """The layout as ``graph.json`` records it (``parallel`` only when set)."""
        out: dict[str, Any] = {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_groups": self.n_groups}
        return {**out, "parallel": True} if self.parallel else out

    @property
    def layout(self) -> "ModelShape":
        """The layout alone (what scores files and graphs carry)."""
        return ModelShape(self.n_layers, self.n_heads, self.n_groups, self.parallel)

    @functools.lru_cache(maxsize=None)
    def sender_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``sender_layer``, ``sender_kind``, ``sender_head`` as in the contract."""
        layer, kind, head = [-1], ["emb"], [-1]
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                layer.append(l), kind.append("head"), head.append(h)
            layer.append(l), kind.append("mlp"), head.append(-1)
        return _frozen(layer), _frozen(kind), _frozen(head)

    @functools.lru_cache(maxsize=None)
    def port_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``port_layer``, ``port_kind``, ``port_index`` as in the contract."""
        layer: list[int] = []
        kind: list[str] = []
        index: list[int] = []
        for l in range(self.n_layers):
            for k, n in (("q", self.n_heads), ("k", self.n_groups), ("v", self.n_groups), ("mlp", 1)):
                for i in range(n):
                    layer.append(l), kind.append(k), index.append(i if k != "mlp" else -1)
        layer.append(self.n_layers), kind.append("logits"), index.append(-1)
        return _frozen(layer), _frozen(kind), _frozen(index)

    def sender_name(self, s: int) -> str:
        layer, kind, head = (a[s] for a in self.sender_arrays())
        return {"emb": "emb", "head": f"{layer}.{head}", "mlp": f"{layer}.MLP"}[str(kind)]

    def port_name(self, p: int) -> str:
        layer, kind, index = (a[p] for a in self.port_arrays())
        return {"q": f"{layer}.{index}.q", "k": f"{layer}.g{index}.k", "v": f"{layer}.g{index}.v",
                "mlp": f"{layer}.MLP.in", "logits": "logits"}[str(kind)]


def infer_shape(resid_shape: tuple[int, ...], attn_shape: tuple[int, ...]) -> ModelShape:
    """The model shape implied by the array shapes (P = L*(H+2G+1) + 1 gives G)."""
    L, H = int(attn_shape[0]), int(attn_shape[1])
    two_g = (int(resid_shape[1]) - 1) / L - H - 1
    if two_g <= 0 or two_g % 2:
        raise ValueError(f"array shapes {resid_shape}, {attn_shape} fit no model shape of the contract")
    return ModelShape(L, H, int(two_g // 2))


def resid_structure(shape: ModelShape, roles: list[str], end_role: str = "END") -> np.ndarray:
    """Which residual edges exist by architecture (bool [S, P, R]): the contract's NaN pattern.

    Scores of real runs may have more NaN (roles absent from the data); this is the upper bound.
    """
    out = np.repeat(shape.edge_exists()[:, :, None], len(roles), axis=2)
    out[:, shape.port_logits, :] &= np.array([r == end_role for r in roles])[None, :]
    return out


@dataclass
class EdgeScores:
    """Signed edge scores of one run (float32, NaN = no such edge) with roles and model shape."""

    resid: np.ndarray
    attn: np.ndarray
    roles: list[str]
    shape: ModelShape
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resid = np.asarray(self.resid, dtype=np.float32)
        self.attn = np.asarray(self.attn, dtype=np.float32)
        self.roles = [str(r) for r in self.roles]
        s, R = self.shape, len(self.roles)
        if len(set(self.roles)) != R:
            raise ValueError(f"duplicate role names in {self.roles}")
        want_r, want_a = (s.n_senders, s.n_ports, R), (s.n_layers, s.n_heads, R, R, 3)
        if self.resid.shape != want_r or self.attn.shape != want_a:
            raise ValueError(f"score shapes {self.resid.shape}, {self.attn.shape} do not match "
                             f"{want_r}, {want_a} for {s} and {R} roles")

    # --- convenience ---------------------------------------------------------------------
    @property
    def n_resid(self) -> int:
        return self.resid.size

    def role(self, name: str) -> int:
        return self.roles.index(name)

    def exists(self) -> "Circuit":
        """The circuit of every existing (non-NaN) edge."""
        return Circuit(~np.isnan(self.resid), ~np.isnan(self.attn))

    def flat(self) -> np.ndarray:
        """All scores as one vector (residual edges, then attention edges): the flat edge index."""
        return np.concatenate([self.resid.ravel(), self.attn.ravel()])

    def n_edges(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.flat())))

    def check(self, circuit: "Circuit") -> None:
        """A clear error when a circuit's masks do not fit these scores' graph."""
        if circuit.resid_mask.shape != self.resid.shape or circuit.attn_mask.shape != self.attn.shape:
            raise ValueError(f"circuit masks {circuit.resid_mask.shape}, {circuit.attn_mask.shape} do not fit "
                             f"the scores' graph {self.resid.shape}, {self.attn.shape}")

    def edge_name(self, flat_index: int) -> str:
        return edge_name(self.shape, self.roles, flat_index)

    # --- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``scores.npz`` atomically: the contract's arrays plus ``model_shape`` and ``meta``."""
        s = self.shape
        buf = io.BytesIO()
        np.savez_compressed(
            buf, resid=self.resid, attn=self.attn, roles=np.array(self.roles), **s.contract_arrays(),
            model_shape=np.array([s.n_layers, s.n_heads, s.n_groups, int(s.parallel)]),
            meta=np.array(json.dumps(self.meta, sort_keys=True)))
        return atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "EdgeScores":
        """Read ``scores.npz``; the sender/port arrays must match the ones the shape implies."""
        with np.load(path, allow_pickle=False) as z:
            missing = {"resid", "attn", "roles"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a scores file (missing {sorted(missing)})")
            if "model_shape" in z.files:
                dims = [int(x) for x in z["model_shape"]]  # L, H, G (, parallel: absent before it existed)
                shape = ModelShape(*dims[:3], parallel=bool(dims[3]) if len(dims) > 3 else False)
            else:
                shape = infer_shape(z["resid"].shape, z["attn"].shape)
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            out = cls(z["resid"], z["attn"], [str(r) for r in z["roles"]], shape, meta)
            for name, want in zip(("sender_layer", "sender_kind", "sender_head"), shape.sender_arrays()):
                if name in z.files and not np.array_equal(z[name].astype(want.dtype), want):
                    raise ValueError(f"{path}: {name} does not follow the sender order of {shape}")
            for name, want in zip(("port_layer", "port_kind", "port_index"), shape.port_arrays()):
                if name in z.files and not np.array_equal(z[name].astype(want.dtype), want):
                    raise ValueError(f"{path}: {name} does not follow the port order of {shape}")
        return out


@dataclass
class Circuit:
    """A set of edges: bool masks ``resid_mask[S, P, R]`` and ``attn_mask[L, H, R, R, 3]``."""

    resid_mask: np.ndarray
    attn_mask: np.ndarray

    def __post_init__(self) -> None:
        self.resid_mask = np.asarray(self.resid_mask, dtype=bool)
        self.attn_mask = np.asarray(self.attn_mask, dtype=bool)

    @classmethod
    def empty_like(cls, scores: EdgeScores) -> "Circuit":
        return cls(np.zeros(scores.resid.shape, bool), np.zeros(scores.attn.shape, bool))

    @classmethod
    def from_flat(cls, flat_mask: np.ndarray, scores_or_circuit: "EdgeScores | Circuit") -> "Circuit":
        """Masks from a flat bool vector in the flat edge order."""
        r_shape, a_shape = _shapes(scores_or_circuit)
        n = int(np.prod(r_shape))
        flat_mask = np.asarray(flat_mask, dtype=bool)
        return cls(flat_mask[:n].reshape(r_shape), flat_mask[n:].reshape(a_shape))

    def flat(self) -> np.ndarray:
        return np.concatenate([self.resid_mask.ravel(), self.attn_mask.ravel()])

    @property
    def n_edges(self) -> int:
        return int(self.resid_mask.sum() + self.attn_mask.sum())

    def copy(self) -> "Circuit":
        return Circuit(self.resid_mask.copy(), self.attn_mask.copy())

    def __or__(self, other: "Circuit") -> "Circuit":
        return Circuit(self.resid_mask | other.resid_mask, self.attn_mask | other.attn_mask)

    def __and__(self, other: "Circuit") -> "Circuit":
        return Circuit(self.resid_mask & other.resid_mask, self.attn_mask & other.attn_mask)

    def __sub__(self, other: "Circuit") -> "Circuit":
        return Circuit(self.resid_mask & ~other.resid_mask, self.attn_mask & ~other.attn_mask)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Circuit) and np.array_equal(self.resid_mask, other.resid_mask)
                and np.array_equal(self.attn_mask, other.attn_mask))

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(resid_mask, attn_mask)``: the arguments of the engine's ``evaluate``."""
        return self.resid_mask, self.attn_mask

    def edge_indices(self) -> np.ndarray:
        return np.flatnonzero(self.flat())

    def edge_names(self, scores: EdgeScores) -> list[str]:
        return [scores.edge_name(int(i)) for i in self.edge_indices()]

    def heads(self) -> set[tuple[int, int]]:
        """(layer, head) of every head with an in-circuit attention edge."""
        return {(int(l), int(h)) for l, h in np.argwhere(self.attn_mask.any(axis=(2, 3, 4)))}


def _shapes(obj: "EdgeScores | Circuit") -> tuple[tuple[int, ...], tuple[int, ...]]:
    if isinstance(obj, EdgeScores):
        return obj.resid.shape, obj.attn.shape
    return obj.resid_mask.shape, obj.attn_mask.shape


# --- edge naming -----------------------------------------------------------------------------
def unravel_edge(shape: ModelShape, n_roles: int, flat_index: int) -> tuple[str, tuple[int, ...]]:
    """``("resid", (s, p, r))`` or ``("attn", (l, h, s, t, c))`` for a flat edge index."""
    r_shape = (shape.n_senders, shape.n_ports, n_roles)
    n = int(np.prod(r_shape))
    if flat_index < n:
        return "resid", tuple(int(x) for x in np.unravel_index(flat_index, r_shape))
    a_shape = (shape.n_layers, shape.n_heads, n_roles, n_roles, 3)
    return "attn", tuple(int(x) for x in np.unravel_index(flat_index - n, a_shape))


def edge_name(shape: ModelShape, roles: list[str], flat_index: int) -> str:
    kind, idx = unravel_edge(shape, len(roles), flat_index)
    if kind == "resid":
        s, p, r = idx
        return f"{shape.sender_name(s)}@{roles[r]} -> {shape.port_name(p)}"
    l, h, s, t, c = idx
    return f"{l}.{h} {roles[s]}->{roles[t]} {COMPONENTS[c]}"


def edge_type(shape: ModelShape, n_roles: int, flat_index: int) -> str:
    """q / k / v / mlp / logits: the input the edge feeds (port kind, or the attention component)."""
    kind, idx = unravel_edge(shape, n_roles, flat_index)
    if kind == "attn":
        return COMPONENTS[idx[4]]
    return str(shape.port_arrays()[1][idx[1]])


def edge_type_arrays(scores: EdgeScores) -> np.ndarray:
    """Edge type of every flat edge index (str array): for per-type statistics."""
    p_kind = scores.shape.port_arrays()[1]
    resid = np.broadcast_to(p_kind[None, :, None], scores.resid.shape).ravel()
    attn = np.broadcast_to(np.array(COMPONENTS)[None, None, None, None, :], scores.attn.shape).ravel()
    return np.concatenate([resid.astype("<U6"), attn.astype("<U6")])


def head_node_name(layer: int, head: int, src: str, dst: str) -> str:
    return f"{layer}.{head} {src}->{dst}"


# --- the figure's node graph -----------------------------------------------------------------
def node_graph(circuit: Circuit, scores: EdgeScores) -> Any:
    """The circuit as the figure's node graph (a ``networkx.MultiDiGraph``, one link per type).

    Nodes: ``emb r`` (an embedding edge at r is in the circuit), ``L.H s->t`` (some attention edge
    (L, H, s, t, *) is in), ``L.MLP r`` (an edge into or out of the MLP at r is in), ``logits END``.
    Node attributes: ``kind`` (emb/head/mlp/logits), ``layer``, ``head``, ``src``, ``dst`` (role
    names; ``src == dst`` for emb/MLP/logits), ``score`` (head: the sum of its in-circuit attention
    edge scores; others: the sum of in-circuit edges into it, emb: out of it) and ``weight`` (the
    same sum of |scores|: q/k/v parts of one head can cancel in ``score``).
    Links: an in-circuit residual edge sender@r -> port@r links every node that sends it (the
    head's nodes with destination r, the MLP or embedding at r) to every node that reads it (head
    nodes whose in-circuit q edge has destination r for a q port; whose k / v edge has source r for
    a k / v port, across the group's heads; the MLP at r; the logits). Link key and attribute
    ``type``: the port kind; ``score``: the sum of the residual edges' scores it stands for. Meant for extracted circuits (it has one link
    per sender node x reader node pair).
    """
    import networkx as nx

    scores.check(circuit)
    shape, roles = scores.shape, scores.roles
    s_layer, s_kind, s_head = shape.sender_arrays()
    p_layer, p_kind, p_index = shape.port_arrays()
    g = nx.MultiDiGraph()
    am, rm = circuit.attn_mask, circuit.resid_mask
    attn = np.nan_to_num(scores.attn)
    resid = np.nan_to_num(scores.resid)

    out_nodes: dict[tuple[int, int, int], list[str]] = {}  # (l, h, t) -> head nodes writing at t
    q_readers: dict[tuple[int, int, int], list[str]] = {}  # (l, h, t) -> nodes with q edge at dst t
    kv_readers: dict[tuple[int, int, int, int], list[str]] = {}  # (l, g, s, c) -> nodes reading s
    for l, h, s, t in np.argwhere(am.any(-1)):
        l, h, s, t = int(l), int(h), int(s), int(t)
        name = head_node_name(l, h, roles[s], roles[t])
        comps = am[l, h, s, t]
        g.add_node(name, kind="head", layer=l, head=h, src=roles[s], dst=roles[t],
                   score=float((attn[l, h, s, t] * comps).sum()),
                   weight=float((np.abs(attn[l, h, s, t]) * comps).sum()))
        out_nodes.setdefault((l, h, t), []).append(name)
        if comps[0]:
            q_readers.setdefault((l, h, t), []).append(name)
        for c in (1, 2):
            if comps[c]:
                kv_readers.setdefault((l, shape.group(h), s, c), []).append(name)

    def add_simple(name: str, kind: str, layer: int, r: int, score: float) -> str:
        if name not in g:
            g.add_node(name, kind=kind, layer=layer, head=-1, src=roles[r], dst=roles[r], score=0.0, weight=0.0)
        g.nodes[name]["score"] += score
        g.nodes[name]["weight"] += abs(score)
        return name

    for s, p, r in np.argwhere(rm):
        s, p, r = int(s), int(p), int(r)
        sc = float(resid[s, p, r])
        kind = str(s_kind[s])
        if kind == "emb":
            senders = [add_simple(f"emb {roles[r]}", "emb", -1, r, sc)]
        elif kind == "mlp":
            senders = [add_simple(f"{s_layer[s]}.MLP {roles[r]}", "mlp", int(s_layer[s]), r, 0.0)]
        else:
            senders = out_nodes.get((int(s_layer[s]), int(s_head[s]), r), [])
        pk, pl, pi = str(p_kind[p]), int(p_layer[p]), int(p_index[p])
        if pk == "q":
            readers = q_readers.get((pl, pi, r), [])
        elif pk in ("k", "v"):
            readers = kv_readers.get((pl, pi, r, 1 if pk == "k" else 2), [])
        elif pk == "mlp":
            readers = [add_simple(f"{pl}.MLP {roles[r]}", "mlp", pl, r, sc)]
        else:
            readers = [add_simple(f"logits {roles[r]}", "logits", shape.n_layers, r, sc)]
        for a in senders:
            for b in readers:
                if g.has_edge(a, b, key=pk):
                    g.edges[a, b, pk]["score"] += sc
                else:
                    g.add_edge(a, b, key=pk, type=pk, score=sc)
    return g


def head_feeds(g: Any) -> dict[str, set[tuple[str, str]]]:
    """For every head node A of ``node_graph``: the ``(B, type)`` pairs such that A's output at its
    role t reaches head node B's ``type`` input (q at B's dst = t, or k / v at B's src = t) through
    a chain of links that stays at role t (relays: MLP nodes at t and heads t->t). B ranges over
    heads with src != dst; a relay head itself is also reported."""
    out: dict[str, set[tuple[str, str]]] = {}
    for a, d in g.nodes(data=True):
        if d["kind"] != "head":
            continue
        role = d["dst"]
        found: set[tuple[str, str]] = set()
        stack, seen = [a], {a}
        while stack:
            u = stack.pop()
            for _, b, ty in g.out_edges(u, keys=True):
                bd = g.nodes[b]
                if bd["kind"] == "head" and ty in COMPONENTS:
                    found.add((b, ty))
                relay = (bd["kind"] == "mlp" and bd["dst"] == role) or (
                    bd["kind"] == "head" and bd["src"] == bd["dst"] == role)
                if relay and b not in seen:
                    seen.add(b)
                    stack.append(b)
        out[a] = found
    return out


# --- graph.json and .dot ---------------------------------------------------------------------
def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def circuit_to_json(circuit: Circuit, scores: EdgeScores, extra: dict[str, Any] | None = None,
                    node_classes: dict[str, str] | None = None) -> dict:
    """The circuit as a JSON-ready dict: every in-circuit edge with its indices, name, type and
    score (enough to rebuild the masks), plus the figure's nodes (with their class when
    ``node_classes`` maps node names to one) and links (``node_graph``).

    Format (``graph.json``, version 1)::

        {"format": "gar-circuit", "version": 1, "model": {"n_layers", "n_heads", "n_groups"},
         "roles": [...], "n_edges": int,
         "edges": [{"name": "3.1@V -> 4.g0.k", "kind": "resid", "type": "k", "score": float|null,
                    "sender": int, "port": int, "role": "V"},
                   {"name": "4.2 K->V k", "kind": "attn", "type": "k", "score": ..., "layer": 4,
                    "head": 2, "src": "K", "dst": "V"}, ...],
         "nodes": [{"name": "4.2 K->V", "kind": "head", "layer", "head", "src", "dst", "score",
                    "weight", "class"?}, {"name": "3.MLP V", "kind": "mlp", ...}, ...],
         "links": [{"source": node, "target": node, "type": "q"|"k"|"v"|"mlp"|"logits", "score"}],
         ...extra}
    """
    shape, roles = scores.shape, scores.roles
    flat = scores.flat()
    edges = []
    for i in circuit.edge_indices():
        kind, idx = unravel_edge(shape, len(roles), int(i))
        e: dict[str, Any] = {"name": edge_name(shape, roles, int(i)), "kind": kind,
                             "type": edge_type(shape, len(roles), int(i)), "score": _finite(flat[i])}
        if kind == "resid":
            e.update(sender=int(idx[0]), port=int(idx[1]), role=roles[idx[2]])
        else:
            e.update(layer=idx[0], head=idx[1], src=roles[idx[2]], dst=roles[idx[3]])
        edges.append(e)
    g = node_graph(circuit, scores)
    nodes = [{"name": n, **{k: (v if not isinstance(v, float) else _finite(v)) for k, v in d.items()},
              **({"class": node_classes[n]} if node_classes and n in node_classes else {})}
             for n, d in g.nodes(data=True)]
    links = [{"source": a, "target": b, "type": d["type"], "score": _finite(d["score"])}
             for a, b, d in g.edges(data=True)]
    return {"format": GRAPH_FORMAT, "version": GRAPH_VERSION,
            "model": shape.to_dict(),
            "roles": list(roles), "n_edges": circuit.n_edges, "edges": edges, "nodes": nodes,
            "links": links, **(extra or {})}


def save_graph_json(path: str | Path, circuit: Circuit, scores: EdgeScores,
                    extra: dict[str, Any] | None = None, node_classes: dict[str, str] | None = None) -> Path:
    """Write ``graph.json`` atomically."""
    return atomic_write(path, json.dumps(circuit_to_json(circuit, scores, extra, node_classes), indent=1))


def circuit_from_json(data: dict) -> tuple[Circuit, ModelShape, list[str]]:
    """Rebuild ``(circuit, model shape, roles)`` from ``circuit_to_json``'s dict (names are checked)."""
    if data.get("format") != GRAPH_FORMAT:
        raise ValueError(f"not a {GRAPH_FORMAT} graph (format={data.get('format')!r})")
    shape = ModelShape(**data["model"])
    roles = list(data["roles"])
    R = len(roles)
    rm = np.zeros((shape.n_senders, shape.n_ports, R), bool)
    am = np.zeros((shape.n_layers, shape.n_heads, R, R, 3), bool)
    rix = {r: i for i, r in enumerate(roles)}
    for e in data["edges"]:
        if e["kind"] == "resid":
            rm[e["sender"], e["port"], rix[e["role"]]] = True
            flat = np.ravel_multi_index((e["sender"], e["port"], rix[e["role"]]), rm.shape)
        else:
            c = COMPONENTS.index(e["type"])
            idx = (e["layer"], e["head"], rix[e["src"]], rix[e["dst"]], c)
            am[idx] = True
            flat = rm.size + np.ravel_multi_index(idx, am.shape)
        if edge_name(shape, roles, int(flat)) != e["name"]:
            raise ValueError(f"edge {e['name']!r} does not match its indices")
    return Circuit(rm, am), shape, roles


def load_graph_json(path: str | Path) -> tuple[Circuit, ModelShape, list[str]]:
    return circuit_from_json(json.loads(Path(path).read_text()))


def to_dot(circuit: Circuit, scores: EdgeScores, name: str = "circuit") -> str:
    """Graphviz text of the figure's node graph (q red, k green, v blue, pen width by |score|)."""
    g = node_graph(circuit, scores)
    colors = {"q": "red", "k": "green3", "v": "blue", "mlp": "gray40", "logits": "black"}
    top = max([abs(d["score"]) for *_, d in g.edges(data=True)] + [1e-12])
    lines = [f'digraph "{name}" {{', "  rankdir=LR;", '  node [shape=box, style=rounded, fontsize=10];']
    for n, d in g.nodes(data=True):
        lines.append(f'  "{n}" [label="{n}\\n{d["score"]:.3g}"];')
    for a, b, d in g.edges(data=True):
        w = 0.5 + 3.5 * abs(d["score"]) / top
        lines.append(f'  "{a}" -> "{b}" [color={colors[d["type"]]}, penwidth={w:.2f}, '
                     f'tooltip="{d["type"]} {d["score"]:.3g}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def iter_edges(circuit: Circuit, scores: EdgeScores) -> Iterator[tuple[int, str, str, float]]:
    """``(flat index, name, type, score)`` of every in-circuit edge, in flat order."""
    flat = scores.flat()
    for i in circuit.edge_indices():
        yield int(i), scores.edge_name(int(i)), edge_type(scores.shape, len(scores.roles), int(i)), float(flat[i])


__all__ = ["COMPONENTS", "EDGE_TYPES", "Circuit", "EdgeScores", "ModelShape",
           "circuit_from_json", "circuit_to_json", "edge_name", "edge_type", "edge_type_arrays",
           "head_feeds", "head_node_name", "infer_shape", "iter_edges", "load_graph_json", "node_graph", "resid_structure",
           "save_graph_json", "to_dot", "unravel_edge"]
