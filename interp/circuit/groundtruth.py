"""Compiled GAR models with known circuits, and scores of an attribution against them.

A *fixture* is a small Llama (``LlamaForCausalLM``, MLPs zero but ``negation``'s last; the gen
fixtures 2 layers of 2 heads) whose weights are set by hand from a small :class:`FixtureSpec` so
that it solves the non-negated rows of a slice with n_r = 0 (a generation slice, default
``gar_v1_gen_nr0_gender_kind``; ``cls`` below: a classification one; ``negation``: both
polarities of it) exactly, with a word-level
tokenizer over the slice's words. Nothing is trained; a fixture builds in seconds.

The mechanism (every block of the residual stream is one-hot, so every read is exact):

* residual stream ``[tokens | const | P (items) | M | B (items) | A (items)]``, an *item* being any
  key or value of the slice's rows; a token's embedding is its one-hot plus ``const`` (every token
  has the same norm);
* ``0.0`` previous-token head (rotary positions only, from ``const``): copies the previous
  token's item into P and sets M when that token is a marker (``has``, ``is``, ``are``); ``0.1``
  two-back head: copies the item two back into B;
* ``1.0`` and ``1.1`` retrieval heads at END ("owns" or "?", right after the query Q), query P:
  ``1.0`` keys on B and M, so it attends the value two after its key ("David has shirt"; "The
  apricot is Christopher's") and copies that token; ``1.1`` keys on the item itself and M, so it
  attends the key two after its value ("The shirt is David's"; "Christopher has apricot") and
  copies the value 0.1 moved there (B). Both fall back on the BOS token (a sink) in rows of the
  other order; each writes the answer's direction in A, which ``lm_head`` reads.

Under the query swap (``pair``) the clean run attends V (or K) and the corrupted run the other
column's; the true circuit is the query path (10 edges). Under ``context`` (V and a V' swap their
values) it is the value path (8 edges). The rest of the mechanism (key paths, markers, positional
queries and keys, the sink) is the same in both runs of a counterfactual: no activation patching
can see it; the truth file lists its main edges as ``constant``. A row whose test row shares an
item with its demonstration row is not solved exactly when the query is that item (the two rows
tie in the retrieval).

Variants: ``sharp`` (attention logit gaps of 40: saturated heads) and ``soft`` (gaps of 4: the
same circuit, heads far from saturation), to tell saturation from bugs of an attribution; ``gqa``
(sharp, grouped-query: both heads of a layer share one key/value group). In layer 0 both heads key
on ``const`` alone and copy the same item, so they share k and v as they are (only the queries and
the output projections differ); in layer 1 each head's key and value contents take their own slots
of the head (``head_dim`` doubles), each query and o_proj reading only its head's slots. Its truth
is the same circuits with every k/v port in group 0 (:func:`true_edges`): edges that now name one
port are one edge, and a constant edge that merges with a true one is true.

``cls`` (:func:`build_cls_model`, 3 layers of 3 heads) answers the affirmative rows of the
classification slice ``gar_v1_cls_nr0_gender_kind`` (all 64, every layout): "Can it be inferred
from the premise that K owns V?" (or "... that the one who owns K is V?") is Yes when the premise
holds the pair, in either order ("K has V", "The V is K's", "V has K", "The K is V's"). The head
``1.0`` at the question's value matches its item and the item two back against every premise
token's, a marker flag required, a BOS sink in between; ``2.0`` moves the verdict to END. Under
``pair`` (the Yes/No twins: the question's value swapped for another row's) the true circuit is
the query path of ``1.0`` and the move to the logits (6 edges, :data:`CLS_TRUE_EDGES`).

``negation`` (:func:`build_neg_model`, 4 layers of 3 heads) answers every row of that slice, the
negated ones too ("... that K does not own V?", "... that the one who owns K is not V?": Yes when
the premise lacks the pair): its answer is the pair's verdict XOR the negation, computed by the
MLP of layer 3 from the verdict cls's mechanism moves to END and a flag of a head that attends
``not``. Under ``pair`` (Yes/No twins of both polarities) the true circuit is the match's query
path, the move and the MLP's two edges (9 edges, :data:`NEG_TRUE_EDGES`); the negation flag is
constant, and the move's direct edge to the logits has no effect (:data:`NEG_DIRECT`).

:func:`score_against_truth` is the scoring (precision/recall of the true edges in the top k,
rank of every true edge, AUROC of |score| against the truth, and, given the exact patcher, the
faithfulness of the true circuit next to the top-|truth| one); :func:`truth_scores` applies it to
a run, with the truth file's entry for the run's counterfactual. ``python -m
interp.circuit.groundtruth --out DIR`` writes a fixture as a model folder with its truth file.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from gar_tasks.errors import GARConfigError

from .graph import Circuit, EdgeScores

if TYPE_CHECKING:  # pragma: no cover
    from gar_tasks.records import GARRecord

TRUTH_FORMAT = "gar-circuit-truth"
TRUTH_VERSION = 1
TRUTH_FILE = "truth.json"
N_LAYERS, N_HEADS = 2, 2
SPECIALS = ("[UNK]", "[PAD]", "<s>", "</s>")


@dataclass(frozen=True)
class FixtureSpec:
    """What a fixture is: its slice, its attention sharpness and its answer margin (logits).

    ``pos_gap``: logit gap of the positional heads' target over every other position;
    ``match_gap``: logit of a matching key over a non-matching one in the retrieval heads;
    ``margin``: logit of the retrieved answer over every other token (sharp heads);
    ``n_kv_heads``: key/value groups per layer (``N_HEADS``: one per head; 1: grouped-query);
    ``family``: ``gen`` (the retrieval fixtures of :func:`build_model`) or ``cls`` (the Yes/No
    fixture of :func:`build_cls_model`) or ``neg`` (:func:`build_neg_model`: both polarities of a cls
    slice), with its own ``n_layers`` and ``n_heads``.
    """

    name: str
    tasks: str = "gar_v1_gen_nr0_gender_kind"
    config: str = "v1"
    family: str = "gen"
    n_layers: int = N_LAYERS
    n_heads: int = N_HEADS
    pos_gap: float = 40.0
    match_gap: float = 40.0
    margin: float = 30.0
    n_kv_heads: int = N_HEADS  # key/value groups per layer (1: both heads share one, grouped-query)
    n_pos_pairs: int = 16      # rotary frequency pairs the positional heads use
    rope_theta: float = 1e30   # the content pairs' frequencies stay below 1e-3: ~no rotation over a prompt
    dtype: str = "float64"


SPECS: dict[str, FixtureSpec] = {
    "sharp": FixtureSpec("sharp"),
    "soft": FixtureSpec("soft", pos_gap=4.0, match_gap=4.0),
    # one k/v group: the retrieval heads' slots side by side double head_dim, and twice the
    # positional pairs keep the content pairs' rotation that of sharp (2e-4 rad over a prompt)
    "gqa": FixtureSpec("gqa", n_kv_heads=1, n_pos_pairs=32),
    # the Yes/No twins of the cls slice: three layers, three heads (three positional heads in layer 0)
    "cls": FixtureSpec("cls", tasks="gar_v1_cls_nr0_gender_kind", family="cls", n_layers=3, n_heads=3, n_kv_heads=3),
    # both polarities of the cls slice: the verdict XOR the question's negation, in an MLP
    "negation": FixtureSpec("negation", tasks="gar_v1_cls_nr0_gender_kind", family="neg", n_layers=4, n_heads=3,
                            n_kv_heads=3),
}

# The true edges per counterfactual (names as ``gar circuit`` writes them). ``edges``: the circuit
# activation patching of that counterfactual sees; ``constant``: the main other parts of the
# mechanism (the same in both runs, so invisible to any patching of this counterfactual).
# Rows whose value comes two after its key ("David has shirt"; "The apricot is Christopher's") use
# 1.0 (attending V), rows whose value comes two before ("The shirt is David's"; "Christopher has
# apricot") use 1.1 (attending K, reading the value 0.1 moved there).
_QUERY_PATH = ["emb@Q -> 0.g0.v", "0.0 Q->END v", "0.0@END -> 1.0.q", "0.0@END -> 1.1.q",
               "1.0 V->END q", "1.0 V'->END q", "1.1 K->END q", "1.1 K'->END q",
               "1.0@END -> logits", "1.1@END -> logits"]
_VALUE_PATH = ["emb@V -> 1.g0.v", "1.0 V->END v", "1.0@END -> logits",
               "emb@V -> 0.g1.v", "0.1 V->K v", "0.1@K -> 1.g1.v", "1.1 K->END v", "1.1@END -> logits"]
_KEY_PATH = [e for key, val in (("K", "V"), ("K'", "V'")) for e in (
    f"emb@{key} -> 0.g1.v", f"0.1 {key}->{val} v", f"0.1@{val} -> 1.g0.k", f"1.0 {val}->END k",
    f"0.0@{val} -> 1.g0.k", f"emb@{key} -> 1.g1.k", f"0.0@{key} -> 1.g1.k", f"1.1 {key}->END k")]
_POSITIONAL = ["emb@END -> 0.0.q", "emb@Q -> 0.g0.k", "0.0 Q->END q", "0.0 Q->END k",
               "emb@END -> 1.0.q", "emb@END -> 1.1.q", "emb@pre -> 1.g0.k", "emb@pre -> 1.g1.k"]
TRUE_EDGES: dict[str, dict[str, list[str]]] = {
    "pair": {"edges": _QUERY_PATH,
             "constant": _KEY_PATH + _POSITIONAL + [e for e in _VALUE_PATH if e not in _QUERY_PATH]},
    "context": {"edges": _VALUE_PATH,
                "constant": _KEY_PATH[:8] + _POSITIONAL + [e for e in _QUERY_PATH if e not in _VALUE_PATH
                                                          and "'" not in e]},
}


def true_edges(n_kv_heads: int = N_HEADS) -> dict[str, dict[str, list[str]]]:
    """:data:`TRUE_EDGES` for a fixture with ``n_kv_heads`` key/value groups per layer.

    Head h's k/v ports become those of group ``h // (N_HEADS // n_kv_heads)``; two edges that now
    name one port merge (one edge, first place kept). A merged edge carries the signal of either
    of its parts, so a constant edge that merges with a true one is true, not constant.
    """
    import re

    if n_kv_heads < 1 or N_HEADS % n_kv_heads:
        raise ValueError(f"{n_kv_heads} key/value groups do not divide {N_HEADS} heads")
    size = N_HEADS // n_kv_heads

    def mapped(names: Sequence[str], drop: Sequence[str] = ()) -> list[str]:
        out = [re.sub(r"\.g(\d+)\.", lambda m: f".g{int(m.group(1)) // size}.", e) for e in names]
        return [e for e in dict.fromkeys(out) if e not in drop]

    res = {}
    for cf, entry in TRUE_EDGES.items():
        edges = mapped(entry["edges"])
        res[cf] = {"edges": edges, "constant": mapped(entry["constant"], drop=edges)}
    return res


# The cls fixture (Yes/No twins: the question's value swapped for another row's value). Its
# premise pair (K, V) stands as "K has V" / "The K is V's" (second item V) or "The V is K's" /
# "V has K" (second item K); 1.0 at the question's value A attends that second item (Yes) or the
# BOS sink (No), so the true path is A's query and the two attention q edges, then 2.0 moving the
# flag to END. The sink's score does not depend on the query (its key has no item), so its q edge
# is constant, as are the pair's keys, the markers, the sink, the values and the positional head.
_CLS_PATH = ["emb@A -> 1.0.q", "1.0 V->A q", "1.0 K->A q", "1.0@A -> 2.g0.v", "2.0 A->END v", "2.0@END -> logits"]
_CLS_PAIR_KEYS = [e for first, second in (("K", "V"), ("V", "K")) for e in (
    f"emb@{first} -> 0.g1.v", f"0.1 {first}->{second} v", f"0.1@{second} -> 1.g0.k", f"emb@{second} -> 1.g0.k",
    f"0.0 other->{second} v", f"0.0@{second} -> 1.g0.k", f"1.0 {second}->A k", f"0.0@{second} -> 1.g0.v",
    f"1.0 {second}->A v")]
_CLS_CONSTANT = (["emb@Q -> 0.g1.v", "0.1 Q->A v", "0.1@A -> 1.0.q"] + _CLS_PAIR_KEYS
                 + ["emb@pre -> 1.g0.k", "emb@pre -> 1.g0.v", "1.0 pre->A q", "1.0 pre->A k", "1.0 pre->A v",
                    "0.0@A -> 1.g0.k", "0.2 other->A v", "0.2@A -> 1.g0.k",
                    "emb@END -> 2.0.q", "emb@A -> 2.g0.k", "2.0 A->END q", "2.0 A->END k"])
CLS_TRUE_EDGES: dict[str, dict[str, list[str]]] = {"pair": {"edges": _CLS_PATH, "constant": _CLS_CONSTANT}}

# The negation fixture (Yes/No twins of both polarities). The verdict path is cls's, one layer
# later (2.0 matches at A, 3.0 moves to END), then the MLP of layer 3 XORs it with the negation
# flag and writes the answer (the direct edge 3.0@END -> logits has no effect: lm_head reads the
# MLP's answer block only). An affirmative Yes twin matches the premise pair (K, V: either is the
# second item), its No twin the sink; a negated Yes twin the sink, its No twin another row's pair
# (K', V'). The flag NEG (1.1 attends the test row's not, R, and the demonstration's, other), the
# negated question's partner fetched by 1.0, the keys, markers, the sink and the move's positional
# query and key are the same in both twins: constant.
_NEG_PATH = ["emb@A -> 2.0.q", "2.0 V->A q", "2.0 K->A q", "2.0 V'->A q", "2.0 K'->A q", "2.0@A -> 3.g0.v",
             "3.0 A->END v", "3.0@END -> 3.MLP.in", "3.MLP@END -> logits"]
_NEG_PAIR_KEYS = [e for first, second in (("K", "V"), ("V", "K"), ("K'", "V'"), ("V'", "K'")) for e in (
    f"emb@{first} -> 0.g1.v", f"0.1 {first}->{second} v", f"0.1@{second} -> 2.g0.k", f"emb@{second} -> 2.g0.k",
    f"0.0 other->{second} v", f"0.0@{second} -> 2.g0.k", f"2.0 {second}->A k", f"0.0@{second} -> 2.g0.v",
    f"2.0 {second}->A v")]
_NEG_CONSTANT = (["emb@Q -> 0.g1.v", "0.1 Q->A v", "0.1@A -> 2.0.q",            # affirmative: Q two back
                  "emb@Q -> 1.g0.v", "1.0 Q->A v", "1.0@A -> 2.0.q",            # negated: Q fetched
                  "0.0 other->A v", "0.0@A -> 1.0.q", "emb@Q -> 1.g0.k", "1.0 Q->A q", "1.0 Q->A k"]
                 + _NEG_PAIR_KEYS
                 + ["emb@pre -> 2.g0.k", "emb@pre -> 2.g0.v", "2.0 pre->A q", "2.0 pre->A k", "2.0 pre->A v",
                    "emb@R -> 1.g1.k", "emb@R -> 1.g1.v", "emb@other -> 1.g1.v", "emb@END -> 1.1.q",
                    "1.1 R->END q", "1.1 R->END k", "1.1 R->END v", "1.1 other->END v", "1.1 pre->END v",
                    "1.1@END -> 3.MLP.in", "emb@END -> 3.MLP.in", "0.0@END -> 3.MLP.in", "2.0@END -> 3.MLP.in",
                    "emb@END -> 3.0.q", "emb@A -> 3.g0.k", "3.0 A->END q", "3.0 A->END k"])
NEG_TRUE_EDGES: dict[str, dict[str, list[str]]] = {"pair": {"edges": _NEG_PATH, "constant": _NEG_CONSTANT}}
NEG_DIRECT = "3.0@END -> logits"  # Y / N at END straight to the logits: no effect (lm_head reads the MLP)


def fixture_truth(spec: FixtureSpec) -> dict[str, dict[str, list[str]]]:
    """The true edges of the fixture ``spec`` per counterfactual (its family's, mapped to its k/v groups)."""
    if spec.family in ("cls", "neg"):
        table = CLS_TRUE_EDGES if spec.family == "cls" else NEG_TRUE_EDGES
        return {cf: {k: list(v) for k, v in entry.items()} for cf, entry in table.items()}
    return true_edges(spec.n_kv_heads)


# ------------------------------------------------------------------------------------------
# building


def slice_records(spec: FixtureSpec) -> list["GARRecord"]:
    """Every record of the spec's slice (both polarities: the tokenizer covers them all)."""
    from ..core.select import filter_records, load_records, select_slices

    return list(filter_records(load_records(spec.config), select_slices(spec.tasks, spec.config)))


WORD = r"\w+(?:-\w+)*|[^\w\s]+"  # a word (hyphenated words whole: "T-shirt") or a punctuation run
MARKERS = ("has", "is", "are")  # the words right before a row's second item
OWNS = ("owns", "own")  # the question's relation word (cls): not a marker
YES_NO = ("Yes", "No")


def _words(text: str) -> list[str]:
    import re

    return re.findall(WORD, text)


def vocabulary(records: Sequence["GARRecord"]) -> tuple[list[str], list[str]]:
    """(every word, every item: keys and values of any row), sorted: the fixture's vocabulary."""
    words, items = set(), set()
    for r in records:
        words.update(_words(r.text))
        for row in r.rows:
            items.update(row.keys + row.values + row.queries + row.answers)
    return sorted(words | items), sorted(items)


def build_tokenizer(words: Sequence[str]) -> Any:
    """A word-level fast tokenizer over ``words`` with a ``<s>`` BOS (as tests/tiny_tokenizers)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(WORD), behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>",
                                   eos_token="</s>")


def _positional(inv_freq: np.ndarray, n_pairs: int, target: int, max_len: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-pair (query, key) 2-vectors whose rotary score peaks at distance ``target``, and the
    smallest gap between that peak and any other distance in ``[0, max_len)``."""
    th = inv_freq[:n_pairs]
    k = np.stack([np.ones(n_pairs), np.zeros(n_pairs)], 1)
    q = np.stack([np.cos(th * target), -np.sin(th * target)], 1)  # R(-theta t) k: q.R(-theta d)k = cos(theta (d - t))
    d = np.arange(max_len)
    f = np.cos(th[None, :] * (d[:, None] - target)).sum(1)
    gap = float(f[target] - np.delete(f, target).max())
    return q, k, gap


def content_slot(spec: FixtureSpec, hd: int, j: int) -> int:
    """Content slot ``j`` of a head of width ``hd``: one coordinate of rotary pair
    ``n_pos_pairs + j // 2`` (the pairs past the positional ones barely rotate over a prompt)."""
    return spec.n_pos_pairs + j // 2 + (j % 2) * (hd // 2)


def block_size(d: int, n_blocks: int) -> float:
    """The normalised size of a one-hot read from a stream of width ``d`` holding ``n_blocks``
    one-hots (what a unit RMSNorm leaves of each)."""
    return (n_blocks / d) ** -0.5


def set_positional_heads(q0: np.ndarray, k0: np.ndarray, heads: Iterable[int], spec: FixtureSpec,
                         inv_freq: np.ndarray, max_len: int, const: int) -> None:
    """Layer-0 positional heads of the cls fixtures (``[head, hd, d]`` arrays of one layer): head ``h``
    attends ``h + 1`` back, its target's score ahead by ``pos_gap``, from the const block (2-block
    embeddings)."""
    hd, d = q0.shape[1], q0.shape[2]
    half, root = hd // 2, hd ** 0.25
    for h in heads:
        qv, kv, gap = _positional(inv_freq, spec.n_pos_pairs, 1 + h, max_len)
        amp = (spec.pos_gap * root ** 2 / gap) ** 0.5 / block_size(d, 2)
        for i in range(spec.n_pos_pairs):
            q0[h, i, const], q0[h, i + half, const] = amp * qv[i]
            k0[h, i, const], k0[h, i + half, const] = amp * kv[i]


def set_pair_match(q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray, spec: FixtureSpec,
                   item_id: Sequence[int], bos: int, blocks: tuple[int, int, int],
                   at: dict[str, int], scores: tuple[float, float, float]) -> None:
    """Head 0 of one layer (``q/k/v [head, hd, d]``, ``o [d, head, hd]``) finds the premise pair of a
    question's value: query its item and B, keys each token's item and B (either order) and M,
    ``scores`` ``(a, b, s)`` for an item match, the marker and the BOS sink; the pair's second item
    writes Y, the sink N. ``blocks``: the one-hot blocks of the query, of a premise pair's second
    item and of BOS; ``at``: the stream indices ``C``, ``M``, ``B0``, ``Y0`` and the content slots
    ``MARK``, ``SINK``."""
    hd, d = q.shape[1], q.shape[2]
    root = hd ** 0.25

    def slot(j: int) -> int:
        return content_slot(spec, hd, j)

    def size(n_blocks: int) -> float:
        return block_size(d, n_blocks)

    a, b, s_ = scores
    nq, nk, nb = blocks
    qs, ks = root / size(nq), root / size(nk)
    for j, t in enumerate(item_id):
        q[0, slot(j), t] = q[0, slot(j), at["B0"] + j] = qs
        k[0, slot(j), t] = k[0, slot(j), at["B0"] + j] = a * ks
    q[0, slot(at["MARK"]), at["C"]] = qs
    k[0, slot(at["MARK"]), at["M"]] = b * ks
    q[0, slot(at["SINK"]), at["C"]] = qs
    k[0, slot(at["SINK"]), bos] = s_ * root / size(nb)
    v[0, slot(0), at["M"]] = 1.0               # the pair's second item: M -> Y
    o[at["Y0"], 0, slot(0)] = 1.0 / size(nk)
    v[0, slot(1), bos] = 1.0                   # the sink: N
    o[at["Y0"] + 1, 0, slot(1)] = 1.0 / size(nb)


def blank_llama(spec: FixtureSpec, tok: Any, records: Sequence["GARRecord"], d: int, hd: int, n_layers: int,
                n_heads: int, n_kv_heads: int) -> tuple[Any, np.ndarray, int]:
    """``(model, rotary inverse frequencies, longest prompt + 2)``: a fixture's eager Llama of these
    sizes (MLP width 4, no biases, untied unembedding), its weights still to be set. Refuses a
    ``rope_theta`` under which the content pairs (past ``n_pos_pairs``) rotate over a prompt."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=4, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=hd,
                      max_position_embeddings=512, rope_theta=spec.rope_theta, rms_norm_eps=1e-6,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).to(getattr(torch, spec.dtype)).eval()
    inv_freq = model.model.rotary_emb.inv_freq.double().cpu().numpy()
    max_len = max(len(tok(r.text)["input_ids"]) for r in records) + 2
    worst = float(inv_freq[spec.n_pos_pairs] * max_len)
    if worst > 0.05:
        raise ValueError(f"content pairs rotate by {worst:.3f} rad over a prompt: raise rope_theta")
    return model, inv_freq, max_len


def set_weights(model: Any, dtype: str, emb: np.ndarray, lm: np.ndarray, layers: Iterable[Sequence[np.ndarray]],
                mlps: dict[int, Sequence[np.ndarray]] | None = None) -> None:
    """Zero every parameter of a fixture's Llama, then set its embedding, unembedding, per-layer
    ``(q, k, v, o)`` (heads and groups folded into the rows / columns) and ``mlps`` (layer ->
    ``(gate, up, down)``); every norm's gain is 1. The one place the builders' arrays meet torch."""
    import torch

    t = getattr(torch, dtype)
    d = emb.shape[1]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.tensor(emb, dtype=t))
        model.lm_head.weight.copy_(torch.tensor(lm, dtype=t))
        model.model.norm.weight.fill_(1.0)
        for layer, (q, k, v, o) in zip(model.model.layers, layers):
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
            at = layer.self_attn
            at.q_proj.weight.copy_(torch.tensor(q.reshape(-1, d), dtype=t))
            at.k_proj.weight.copy_(torch.tensor(k.reshape(-1, d), dtype=t))
            at.v_proj.weight.copy_(torch.tensor(v.reshape(-1, d), dtype=t))
            at.o_proj.weight.copy_(torch.tensor(o.reshape(d, -1), dtype=t))
        for i, (gate, up, down) in (mlps or {}).items():
            mlp = model.model.layers[i].mlp
            mlp.gate_proj.weight.copy_(torch.tensor(gate, dtype=t))
            mlp.up_proj.weight.copy_(torch.tensor(up, dtype=t))
            mlp.down_proj.weight.copy_(torch.tensor(down, dtype=t))
    model.requires_grad_(False)


def build_model(spec: FixtureSpec, records: Sequence["GARRecord"] | None = None, tokenizer: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the fixture, weights set from the spec (deterministic)."""
    if spec.family == "cls":
        return build_cls_model(spec, records, tokenizer)
    if spec.family == "neg":
        return build_neg_model(spec, records, tokenizer)
    records = slice_records(spec) if records is None else records
    words, items = vocabulary(records)
    tok = build_tokenizer(words) if tokenizer is None else tokenizer
    V, n = len(tok), len(items)
    G = spec.n_kv_heads
    if G < 1 or N_HEADS % G:
        raise ValueError(f"{G} key/value groups do not divide {N_HEADS} heads")
    per_group = N_HEADS // G
    # content slots per retrieval head: n items, marker, sink; heads sharing a k/v group use disjoint ones
    n_slots = per_group * (n + 2)
    hd = 2 * (spec.n_pos_pairs + (n_slots + 1) // 2)
    C, P0 = V, V + 1                           # const; P: the previous item
    M, B0 = P0 + n, P0 + n + 1                 # M: the previous word is a marker; B: the item two back
    A0 = B0 + n                                # A: the answer
    d = A0 + n
    d += d % 2
    model, inv_freq, max_len = blank_llama(spec, tok, records, d, hd, N_LAYERS, N_HEADS, G)
    half = hd // 2

    def slot(j: int) -> int:
        return content_slot(spec, hd, j)

    MARK, SINK = n, n + 1
    item_id = [tok.convert_tokens_to_ids(w) for w in items]
    if tok.unk_token_id in item_id:
        raise ValueError("an item is not one token of the fixture's tokenizer")

    def size(n_blocks: int) -> float:
        return block_size(d, n_blocks)

    root = hd ** 0.25                          # q.k / sqrt(hd): each side carries hd ** 0.25
    g = spec.match_gap
    # retrieval scores (logits): item match a, marker b, sink s: a + b - s = g, s - b = g, s - 1.41 a > g
    a, b, s_ = 2 * g, 3 * g, 4 * g
    emb = np.zeros((V, d))
    emb[np.arange(V), np.arange(V)] = 1.0
    emb[:, C] = 1.0
    lm = np.zeros((V, d))
    layers = []

    def amp(h: int) -> float:  # positional head h's q and k scale: its target's score ahead by pos_gap
        _, _, gap = _positional(inv_freq, spec.n_pos_pairs, 1 + h, max_len)
        return (spec.pos_gap * root ** 2 / gap) ** 0.5 / size(2)

    for layer in range(N_LAYERS):
        q = np.zeros((N_HEADS, hd, d))
        k = np.zeros((G, hd, d))  # heads of one group write the same k / v rows (identical writes)
        v = np.zeros((G, hd, d))
        o = np.zeros((d, N_HEADS, hd))
        for h in range(N_HEADS):
            grp = h // per_group
            if layer == 0:  # positional heads: previous token (h 0) into P and M, two back (h 1) into B;
                # both key on const alone, so a group shares the key of its first head (the query rescaled)
                qv, kv, _ = _positional(inv_freq, spec.n_pos_pairs, 1 + h, max_len)
                k_amp = amp(grp * per_group)
                for i in range(spec.n_pos_pairs):
                    q[h, i, C], q[h, i + half, C] = amp(h) * (amp(h) / k_amp) * qv[i]
                    k[grp, i, C], k[grp, i + half, C] = k_amp * kv[i]
                out0 = P0 if h == 0 else B0
                for j, t in enumerate(item_id):
                    v[grp, slot(j), t] = 1.0
                    o[out0 + j, h, slot(j)] = 1.0 / size(2)
                if h == 0:
                    for w in MARKERS:
                        if w in tok.get_vocab():
                            v[grp, slot(MARK), tok.convert_tokens_to_ids(w)] = 1.0
                    o[M, h, slot(MARK)] = 1.0 / size(2)
            else:  # retrieval: query P (at END the query item); 1.0 keys B (item two after its key),
                # 1.1 keys the item itself (item two before its key); both need M; BOS is the sink.
                # A head's slots are its own within its group (offset c), so shared k / v do not mix.
                qs, ks = root / size(3), root / size(4)
                c = (h % per_group) * (n + 2)
                for j, t in enumerate(item_id):
                    q[h, slot(c + j), P0 + j] = qs
                    k[grp, slot(c + j), (B0 + j) if h == 0 else t] = a * ks
                    v[grp, slot(c + j), t if h == 0 else B0 + j] = 1.0
                    o[A0 + j, h, slot(c + j)] = 1.0 / size(4)
                q[h, slot(c + MARK), C] = qs
                k[grp, slot(c + MARK), M] = b * ks
                q[h, slot(c + SINK), C] = qs
                k[grp, slot(c + SINK), tok.bos_token_id] = s_ * root / size(2)
        layers.append((q, k, v, o))
    for j, t in enumerate(item_id):
        lm[t, A0 + j] = spec.margin / size(4)
    set_weights(model, spec.dtype, emb, lm, layers)
    return model, tok


def build_cls_model(spec: FixtureSpec, records: Sequence["GARRecord"] | None = None,
                    tokenizer: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a cls fixture (3 layers, 3 heads), weights set from the spec.

    Residual stream ``[tokens | const | M | B (items) | Y N | answer Y N]``, one-hot blocks:

    * layer 0, positional (rotary, from ``const``): ``0.0`` previous token, +1 into M after a
      marker (``has``, ``is``, ``are``); ``0.1`` two back, the item into B; ``0.2`` three back,
      -1 into M three after ``owns``: the question's value in "the one who owns K is V" is no
      premise pair (its M cancels), while "K owns V" has no marker at all;
    * ``1.0`` at every token: query its own item and B (at the question's value A: V and K), keys
      each token's item and B (either order: "K has V" and "The V is K's" match alike) and M, the
      BOS sink between a full and a half match; the premise pair's second item (M set) writes Y,
      the sink writes N;
    * ``2.0`` at END: attends A, three back (rotary, its score offset so that only A's is above
      zero: the norms of the other tokens differ), and copies Y / N into the answer block, which
      ``lm_head`` reads as ``Yes`` / ``No`` by ``margin``.

    Every norm the reads divide by is known (A has 3 blocks before layer 1 and 4 after it, a
    premise pair's second item 4, BOS 2, END 4 at the end), so the answer logit is the margin.
    """
    records = slice_records(spec) if records is None else records
    words, items = vocabulary(records)
    tok = build_tokenizer(words) if tokenizer is None else tokenizer
    V, n = len(tok), len(items)
    L, H = spec.n_layers, spec.n_heads
    if (L, H, spec.n_kv_heads) != (3, 3, 3):
        raise ValueError("the cls fixture is 3 layers of 3 heads, one key/value group per head")
    item_id = [tok.convert_tokens_to_ids(w) for w in items]
    yes_no = [tok.convert_tokens_to_ids(w) for w in YES_NO]
    if tok.unk_token_id in item_id + yes_no:
        raise ValueError("an item, Yes or No is not one token of the fixture's tokenizer")
    C, M, B0 = V, V + 1, V + 2                 # const; M: marker flag; B: the item two back
    Y0 = B0 + n                                # Y, N: the pair exists (layer 1's verdict)
    A0 = Y0 + 2                                # the answer's Y, N (at END)
    d = A0 + 2
    d += -d % (2 * H)                          # even, and a multiple of the heads (the config checks it)
    MARK, SINK, OFF = n, n + 1, n + 2          # content slots past the items
    hd = 2 * (spec.n_pos_pairs + (n + 4) // 2)
    model, inv_freq, max_len = blank_llama(spec, tok, records, d, hd, L, H, H)
    half = hd // 2

    def slot(j: int) -> int:
        return content_slot(spec, hd, j)

    def size(n_blocks: int) -> float:
        return block_size(d, n_blocks)

    root = hd ** 0.25
    g = spec.match_gap
    # retrieval (logits at a premise pair's 4-block second item, scaled by sqrt(4 / blocks) elsewhere):
    # full match 2a + b - s = g; two items without M (3 blocks): s - 1.155 * 2a > g; one item and M
    # (3 blocks): s - 1.155 (a + b) > g; one item alone (2 blocks): s - 1.414 a > g
    a, b, s_ = 4 * g, 4 * g, 11 * g
    emb = np.zeros((V, d))
    emb[np.arange(V), np.arange(V)] = 1.0
    emb[:, C] = 1.0
    q = np.zeros((L, H, hd, d))
    k = np.zeros((L, H, hd, d))
    v = np.zeros((L, H, hd, d))
    o = np.zeros((L, d, H, hd))
    # layer 0: previous token (M +1 after a marker), two back (B), three back (M -1 after owns)
    set_positional_heads(q[0], k[0], range(H), spec, inv_freq, max_len, C)
    for h in range(H):
        if h == 1:
            for j, t in enumerate(item_id):
                v[0, h, slot(j), t] = 1.0
                o[0, B0 + j, h, slot(j)] = 1.0 / size(2)
        else:
            for w in MARKERS if h == 0 else OWNS:
                if w in tok.get_vocab():
                    v[0, h, slot(MARK), tok.convert_tokens_to_ids(w)] = 1.0
            o[0, M, h, slot(MARK)] = (1.0 if h == 0 else -1.0) / size(2)
    # layer 1: the pair's retrieval; query item and B (3 blocks at A), keys item, B and M
    set_pair_match(q[1], k[1], v[1], o[1], spec, item_id, tok.bos_token_id, (3, 4, 2),
                   {"C": C, "M": M, "B0": B0, "Y0": Y0, "MARK": MARK, "SINK": SINK}, (a, b, s_))
    # layer 2: END (3 blocks) attends A (4 blocks), three back; the offset slot puts every other
    # token's positional score below zero, whatever its norm
    qv, kv, gap = _positional(inv_freq, spec.n_pos_pairs, 3, max_len)
    amp = (2 * spec.pos_gap * root ** 2 / (gap * size(3) * size(4))) ** 0.5
    for i in range(spec.n_pos_pairs):
        q[2, 0, i, C], q[2, 0, i + half, C] = amp * qv[i]
        k[2, 0, i, C], k[2, 0, i + half, C] = amp * kv[i]
    q[2, 0, slot(OFF), C] = amp
    k[2, 0, slot(OFF), C] = -amp * (spec.n_pos_pairs - gap / 2)
    for j in range(2):                         # Y, N at A (4 blocks) -> the answer block
        v[2, 0, slot(j), Y0 + j] = 1.0
        o[2, A0 + j, 0, slot(j)] = 1.0 / size(4)
    lm = np.zeros((V, d))
    for j, t in enumerate(yes_no):             # END: token, const, N (layer 1's sink), answer: 4 blocks
        lm[t, A0 + j] = spec.margin / size(4)
    set_weights(model, spec.dtype, emb, lm, zip(q, k, v, o))
    return model, tok


def build_neg_model(spec: FixtureSpec, records: Sequence["GARRecord"] | None = None,
                    tokenizer: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the negation fixture (4 layers, 3 heads), weights set from the spec.

    It answers every row of the cls slice, affirmative and negated ("Can it be inferred from the
    premise that K does not own V?", "... that the one who owns K is not V?"): Yes iff (the premise
    holds the pair) XOR (the question is negated). Residual stream ``[tokens | const | M OWN NOT
    PLAIN | B (items) | NEG AFF | Y N | Z_Y Z_N | answer Yes No]``, one-hot blocks:

    * layer 0, positional (rotary, from ``const``): ``0.0`` previous token, one flag per token:
      M after a marker (``has``, ``is``, ``are``), OWN after ``own``, NOT after ``not``, PLAIN
      after any other; ``0.1`` two back, the item into B; ``0.2`` three back, after ``owns`` turns
      M into PLAIN ("the one who owns K is V": V is no premise pair);
    * ``1.0`` fetches the negated question's first item into B at the positions after ``own``
      (four back: "K does not own V") and ``not`` (three back: "... owns K is not V"), a BOS sink
      elsewhere; ``1.1`` attends every ``not`` (the demonstration row's and the test row's, which
      share their polarity in this slice: NEG either way) and writes NEG, else the BOS sink: AFF;
    * ``2.0`` at every token (cls's ``1.0``): query its item and B, keys item, B and M, BOS sink;
      the pair's second item writes Y, the sink N;
    * ``3.0`` at END copies Y / N from the question's value A (three back) into Z; the MLP of
      layer 3 computes the XOR: four units ``silu(G (a + b - 3/2))`` over (Z_Y, Z_N) x (AFF, NEG),
      each an AND of two one-hots (pre-activation +-g: the silu's tails below e^-g), gated by a
      constant ``up``; (Z_Y, AFF) and (Z_N, NEG) write the answer's Yes, the others its No.

    Every position carries one flag, one NEG/AFF and one Y/N, so the norms the reads divide by are
    the same in both polarities (A: 5 blocks before layer 2, 6 after; END 6 at the MLP, 7 at the
    end) and the answer logit is the margin.
    """
    records = slice_records(spec) if records is None else records
    words, items = vocabulary(records)
    tok = build_tokenizer(words) if tokenizer is None else tokenizer
    V, n = len(tok), len(items)
    L, H = spec.n_layers, spec.n_heads
    if (L, H, spec.n_kv_heads) != (4, 3, 3):
        raise ValueError("the negation fixture is 4 layers of 3 heads, one key/value group per head")
    vocab = tok.get_vocab()
    item_id = [vocab.get(w, tok.unk_token_id) for w in items]
    yes_no = [vocab.get(w, tok.unk_token_id) for w in YES_NO]
    if tok.unk_token_id in item_id + yes_no or not {"not", "own", "owns"} <= set(vocab):
        raise ValueError("an item, Yes, No, not, own or owns is not one token of the fixture's tokenizer")
    C = V                                      # const
    M, OWN, NOT, PLAIN = V + 1, V + 2, V + 3, V + 4   # the previous token's flag
    B0 = V + 5                                 # the item two back (the negated question's partner)
    NEG = B0 + n                               # NEG, AFF: the question is negated (or not)
    Y0 = NEG + 2                               # Y, N: the pair exists (layer 2's verdict)
    Z0 = Y0 + 2                                # Y, N moved to END
    A0 = Z0 + 2                                # the answer's Yes, No
    d = A0 + 2
    d += -d % (2 * H)
    MARK, SINK, OFF = n, n + 1, n + 2          # content slots past the items
    hd = 2 * (spec.n_pos_pairs + (n + 5) // 2)   # content slots up to OFF + 1 = n + 3
    model, inv_freq, max_len = blank_llama(spec, tok, records, d, hd, L, H, H)
    half = hd // 2

    def slot(j: int) -> int:
        return content_slot(spec, hd, j)

    def size(n_blocks: int) -> float:
        return block_size(d, n_blocks)

    def tid(w: str) -> int:
        return vocab[w]

    root = hd ** 0.25
    g = spec.match_gap
    a, b, s_ = 4 * g, 4 * g, 11 * g            # cls's retrieval scores (here at 5-block keys)
    emb = np.zeros((V, d))
    emb[np.arange(V), np.arange(V)] = 1.0
    emb[:, C] = 1.0
    q = np.zeros((L, H, hd, d))
    k = np.zeros((L, H, hd, d))
    v = np.zeros((L, H, hd, d))
    o = np.zeros((L, d, H, hd))

    def positional(layer: int, head: int, target: int, q_blocks: int, k_blocks: int, src: int = C,
                   gap_to: float = 2 * g) -> None:
        """Head (layer, head) attends ``target`` back from the positions whose ``src`` is set: the
        target's score +gap_to/2, every other position's below -gap_to/2 (an offset slot from const)."""
        qv, kv, gap = _positional(inv_freq, spec.n_pos_pairs, target, max_len)
        alpha = gap_to / gap
        qs, ks = root / size(q_blocks), root / size(k_blocks)
        for i in range(spec.n_pos_pairs):
            q[layer, head, i, src], q[layer, head, i + half, src] = alpha * qs * qv[i]
            k[layer, head, i, C], k[layer, head, i + half, C] = ks * kv[i]
        q[layer, head, slot(OFF + (target % 2)), src] = alpha * qs * (spec.n_pos_pairs - gap / 2)
        k[layer, head, slot(OFF + (target % 2)), C] = -ks

    # layer 0: previous token (one flag), two back (B), three back (owns: M -> PLAIN); every
    # embedding has 2 blocks
    flags = {w: M for w in MARKERS} | {"own": OWN, "not": NOT}
    set_positional_heads(q[0], k[0], range(3), spec, inv_freq, max_len, C)
    for t in range(V):
        w = tok.convert_ids_to_tokens(t)
        f = flags.get(w, PLAIN)
        v[0, 0, slot(f - M), t] = 1.0
    for f in (M, OWN, NOT, PLAIN):
        o[0, f, 0, slot(f - M)] = 1.0 / size(2)
    for j, t in enumerate(item_id):
        v[0, 1, slot(j), t] = 1.0
        o[0, B0 + j, 1, slot(j)] = 1.0 / size(2)
    v[0, 2, slot(0), tid("owns")] = 1.0
    o[0, M, 2, slot(0)] = -1.0 / size(2)
    o[0, PLAIN, 2, slot(0)] = 1.0 / size(2)
    # layer 1, 1.0: after own four back, after not three back (query and target: 3 blocks), the
    # BOS sink (3 blocks) elsewhere: +g from const, -g where a flag is set
    positional(1, 0, 4, 3, 3, src=OWN)
    positional(1, 0, 3, 3, 3, src=NOT)
    q[1, 0, slot(SINK), C] = root / size(3)
    q[1, 0, slot(SINK), OWN] = q[1, 0, slot(SINK), NOT] = -2 * root / size(3)
    k[1, 0, slot(SINK), tok.bos_token_id] = g * root / size(3)
    for j, t in enumerate(item_id):
        v[1, 0, slot(j), t] = 1.0
        o[1, B0 + j, 0, slot(j)] = 1.0 / size(3)
    # 1.1: every not (4 blocks) over the BOS sink (3 blocks) by 2g, the sink over the rest by g
    q[1, 1, slot(0), C] = q[1, 1, slot(1), C] = root / size(3)
    k[1, 1, slot(0), tid("not")] = 3 * g * root / size(4)
    k[1, 1, slot(1), tok.bos_token_id] = g * root / size(3)
    v[1, 1, slot(0), tid("not")] = 1.0
    o[1, NEG, 1, slot(0)] = 1.0 / size(4)
    v[1, 1, slot(1), tok.bos_token_id] = 1.0
    o[1, NEG + 1, 1, slot(1)] = 1.0 / size(3)
    # layer 2: the pair's retrieval (cls's 1.0); query item and B (5 blocks at A), keys item, B, M
    # (5 blocks at a premise pair's second item); BOS (token, const, PLAIN, AFF: 4 blocks) the sink
    set_pair_match(q[2], k[2], v[2], o[2], spec, item_id, tok.bos_token_id, (5, 5, 4),
                   {"C": C, "M": M, "B0": B0, "Y0": Y0, "MARK": MARK, "SINK": SINK}, (a, b, s_))
    # layer 3: END (token, const, PLAIN, NEG/AFF, N: 5 blocks) attends A (6 blocks), three back
    positional(3, 0, 3, 5, 6)
    for j in range(2):
        v[3, 0, slot(j), Y0 + j] = 1.0
        o[3, Z0 + j, 0, slot(j)] = 1.0 / size(6)
    # the MLP of layer 3 at END (6 blocks): AND units of (Z_Y, Z_N) x (AFF, NEG); pre-activation +-g
    G = 2 * g
    gate = np.zeros((4, d))
    up = np.zeros((4, d))
    down = np.zeros((d, 4))
    units = [(Z0, NEG + 1, A0), (Z0 + 1, NEG, A0), (Z0, NEG, A0 + 1), (Z0 + 1, NEG + 1, A0 + 1)]  # (verdict, flag, answer)
    for u, (z, f, ans) in enumerate(units):
        gate[u, z] = gate[u, f] = G / size(6)
        gate[u, C] = -1.5 * G / size(6)
        up[u, C] = 1.0 / size(6)
        down[ans, u] = 1.0 / (g * (1.0 / (1.0 + np.exp(-g))))   # silu(g) = g sigmoid(g): the answer 1
    lm = np.zeros((V, d))
    for j, t in enumerate(yes_no):             # END: token, const, PLAIN, NEG/AFF, N, Z, answer: 7 blocks
        lm[t, A0 + j] = spec.margin / size(7)
    set_weights(model, spec.dtype, emb, lm, zip(q, k, v, o), {3: (gate, up, down)})
    return model, tok


def truth_json(spec: FixtureSpec) -> dict[str, Any]:
    """The fixture's truth file: its true edges per counterfactual, in ``gar circuit``'s names."""
    return {"format": TRUTH_FORMAT, "version": TRUTH_VERSION, "fixture": asdict(spec),
            "model": {"n_layers": spec.n_layers, "n_heads": spec.n_heads, "n_groups": spec.n_kv_heads},
            "counterfactuals": fixture_truth(spec),
            "mechanism": MECHANISMS[spec.family]}


MECHANISMS = {
    "gen": "0.0 previous token -> P, 0.1 two back -> B; 1.0 and 1.1 at END: query P, key B, "
           "value the attended token -> answer; lm_head reads the answer",
    "cls": "0.0 previous token -> marker flag M, 0.1 two back -> B, 0.2 three back cancels M after owns; "
           "1.0 at the question's value: query its item and B, keys item, B and M, BOS sink; the pair's "
           "second item writes Y, the sink N; 2.0 at END copies them three back; lm_head reads Yes / No",
    "neg": "0.0 previous token -> one flag (marker M, own, not, plain), 0.1 two back -> B, 0.2 three back "
           "turns M into plain after owns; 1.0 fetches the negated question's first item into B (four back "
           "after own, three back after not), 1.1 flags NEG (any not) or AFF (BOS sink); 2.0 at the question's "
           "value: cls's match, Y or N; 3.0 at END copies Y / N three back; the MLP of layer 3 computes "
           "(Y, AFF) or (N, NEG) -> Yes, else No; lm_head reads Yes / No (so the direct edge 3.0@END -> logits "
           "has no effect: not a true edge)"}


def save_fixture(name: str, out: str | Path) -> Path:
    """Write fixture ``name`` to ``out`` (model, tokenizer, ``truth.json``); returns the truth file."""
    spec = SPECS[name]
    model, tok = build_model(spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    path = out / TRUTH_FILE
    path.write_text(json.dumps(truth_json(spec), indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------------------
# scoring


def load_truth(path: str | Path) -> dict[str, Any]:
    """A truth file, checked (a ``ValueError`` naming what is wrong)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the truth file {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != TRUTH_FORMAT:
        raise ValueError(f"{path} is not a {TRUTH_FORMAT} file")
    cfs = data.get("counterfactuals")
    if not isinstance(cfs, dict) or not all(isinstance(v, dict) and isinstance(v.get("edges"), list)
                                            for v in cfs.values()):
        raise ValueError(f"{path}: 'counterfactuals' must map each counterfactual to its 'edges' list")
    return data


def edge_indices(scores: EdgeScores, names: Sequence[str]) -> np.ndarray:
    """Flat indices of named edges in the scores' graph (``ValueError`` for a name not in it)."""
    table = {scores.edge_name(i): i for i in range(scores.flat().size)}
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"edges not in this graph: {', '.join(missing)}")
    return np.array([table[n] for n in names], dtype=np.int64)


def truth_circuit(scores: EdgeScores, names: Sequence[str]) -> Circuit:
    """The circuit of the named edges in the scores' graph."""
    mask = np.zeros(scores.flat().size, bool)
    mask[edge_indices(scores, names)] = True
    return Circuit.from_flat(mask, scores)


def auroc(values: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``values`` ranking ``positive`` first (ties count one half)."""
    values, positive = np.asarray(values, float), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sv = values[order]
    i = 0
    while i < len(sv):  # average ranks over ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


ZERO = 1e-6  # |score| at most this share of the largest |score| counts as 0 (floating-point noise)


def score_against_truth(scores: EdgeScores, edges: Sequence[str], constant: Sequence[str] = (),
                        evaluate: Callable[[np.ndarray, np.ndarray], float] | None = None,
                        m_full: float | None = None, m_empty: float | None = None,
                        zero: float = ZERO) -> dict[str, Any]:
    """How ``scores`` (ranked by |score|) find the true ``edges``.

    |score| up to ``zero`` times the largest counts as 0: a sparse compiled model leaves most edges
    at rounding noise, and noise must not order them. Ranks count from 1 over the existing
    (non-NaN) edges, pessimistically: an edge tied with others ranks after all of them (so every
    edge scored 0 ranks last); a true edge absent from the graph has rank None.
    ``precision``/``recall`` at k = |truth| and 2|truth| count the true edges of rank <= k.
    ``auroc``: |score| against the truth over the existing edges (ties count one half), the
    ``constant`` edges (true, but invisible to this counterfactual) left out of both classes.
    With the exact patcher (``evaluate``, ``m_full``, ``m_empty``): ``f_truth``, the faithfulness
    of the true circuit, and ``f_top``, that of the top-k circuit of ``gar circuit``'s extraction.
    """
    from .extract import topn
    from .faithfulness import faithfulness

    flat = scores.flat()
    exists = ~np.isnan(flat)
    true_idx = edge_indices(scores, edges)
    const_idx = edge_indices(scores, constant) if len(constant) else np.zeros(0, np.int64)
    key = np.where(exists, np.abs(np.nan_to_num(flat)), -np.inf)
    top = float(key[exists].max()) if exists.any() else 0.0
    key = np.where(exists & (key <= zero * top), 0.0, key)
    present = np.sort(key[exists])
    # pessimistic rank: the number of existing edges whose key is >= this one's
    rank = np.where(exists, present.size - np.searchsorted(present, key, side="left"), -1)
    n = len(true_idx)
    out: dict[str, Any] = {"n_true": n, "n_constant": len(const_idx), "n_edges_graph": int(exists.sum()),
                           "zero": zero, "ranks": {}, "precision": {}, "recall": {}}
    for name, i in zip(edges, true_idx):
        out["ranks"][name] = {"rank": int(rank[i]) if exists[i] else None,
                              "score": float(flat[i]) if exists[i] else None}
    true_ranks = np.array([rank[i] if exists[i] else np.iinfo(np.int64).max for i in true_idx])
    for k in (n, 2 * n):
        hit = int((true_ranks <= k).sum())
        out["precision"][str(k)] = hit / k if k else float("nan")
        out["recall"][str(k)] = hit / n if n else float("nan")
    keep = exists.copy()
    keep[const_idx] = False
    positive = np.zeros(flat.size, bool)
    positive[true_idx] = True
    out["auroc"] = auroc(key[keep], positive[keep])
    if evaluate is not None and m_full is not None and m_empty is not None:
        out["f_truth"] = faithfulness(evaluate(*truth_circuit(scores, edges).masks()), m_full, m_empty)
        out["f_top"] = {str(k): faithfulness(evaluate(*topn(scores, k).masks()), m_full, m_empty) for k in (n, 2 * n)}
    return out


def truth_edges(path: str | Path, counterfactual: str) -> dict[str, Any]:
    """The truth file's entry for ``counterfactual`` (``edges``, ``constant``), checked before a run."""
    try:
        data = load_truth(path)
    except ValueError as e:
        raise GARConfigError(str(e)) from None
    entry = data["counterfactuals"].get(counterfactual)
    if entry is None:
        raise GARConfigError(f"the truth file {path} has no edges for the {counterfactual} counterfactual "
                             f"(it has {', '.join(sorted(data['counterfactuals'])) or 'none'})")
    return entry


def truth_scores(path: str | Path, counterfactual: str, scores: EdgeScores,
                 evaluate: Callable[[np.ndarray, np.ndarray], float] | None = None, m_full: float | None = None,
                 m_empty: float | None = None) -> dict[str, Any]:
    """A run's scores against the truth file (:func:`score_against_truth`; with the exact patcher,
    the true circuit's faithfulness too), labelled with the file and the counterfactual."""
    entry = truth_edges(path, counterfactual)
    try:
        res = score_against_truth(scores, entry["edges"], entry.get("constant", []), evaluate, m_full, m_empty)
    except ValueError as e:
        raise GARConfigError(f"the truth file {path} does not fit this model's graph: {e}") from None
    return {"file": str(path), "counterfactual": counterfactual, **res}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m interp.circuit.groundtruth --out DIR [--fixture NAME]`` (a name of :data:`SPECS`)."""
    p = argparse.ArgumentParser(prog="python -m interp.circuit.groundtruth",
                                description="Write a compiled GAR fixture: model folder, tokenizer and truth.json.")
    p.add_argument("--out", required=True, help="folder to write (created)")
    p.add_argument("--fixture", default="sharp", choices=sorted(SPECS))
    a = p.parse_args(argv)
    path = save_fixture(a.fixture, a.out)
    spec = SPECS[a.fixture]
    print(f"wrote {a.fixture} fixture to {a.out}; score it with: gar circuit --model {a.out} --config {spec.config} "
          f"--tasks {spec.tasks} --truth {path} --out RUN")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["CLS_TRUE_EDGES", "FixtureSpec", "NEG_DIRECT", "NEG_TRUE_EDGES", "SPECS", "TRUE_EDGES", "TRUTH_FILE",
           "auroc", "build_cls_model", "build_model", "build_neg_model", "build_tokenizer", "fixture_truth",
           "edge_indices", "load_truth", "save_fixture", "score_against_truth", "slice_records", "truth_circuit",
           "true_edges", "truth_edges", "truth_json", "truth_scores", "vocabulary"]
