"""nnsight interpretability on GAR (attribution patching, heads, interventions, probes).

The flow: ``make_pairs(records, tokenizer) -> Pairs`` (clean/corrupted prompts and a metric per
pair), then ``attribution_scores(model, pairs) -> [layers, heads]`` (AtP, every head at once),
``select_heads`` + ``exact_patch_scores`` (the check) and ``agreement``. Everything is built on
:mod:`interp.core` (loader, encoder, selector, outputs); the ``gar`` commands live in
:mod:`interp.commands`. Importing this package is light: torch, transformers and nnsight are
imported inside the functions.
"""

from .core.encode import ClsPrompts, encode_cls, left_pad
from .core.loader import LoadedModel, load_model
from .core.model import as_nnsight, check_remote
from .core.select import Slice, select_slices
from .core.sites import HEAD_OUTPUT_SITES, HeadSites, head_sites
from .heads import head_effects, load_heads, score_heads
from .intervene import intervened, random_heads
from .pairs import Pair, PairBatch, Pairs, make_pairs
from .patching import (Agreement, ExactResult, agreement, attribution_batch, attribution_scores,
                       exact_patch_batch, exact_patch_scores, select_heads)
from .plots import heatmap

__all__ = ["Agreement", "ClsPrompts", "ExactResult", "HEAD_OUTPUT_SITES", "HeadSites", "LoadedModel", "Pair",
           "PairBatch", "Pairs", "Slice", "agreement", "as_nnsight", "attribution_batch", "attribution_scores",
           "check_remote", "encode_cls", "exact_patch_batch", "exact_patch_scores", "head_effects", "head_sites",
           "heatmap", "intervened", "left_pad", "load_heads", "load_model", "make_pairs", "random_heads",
           "score_heads", "select_heads", "select_slices"]
