"""nnsight interpretability on GAR (attribution patching, heads, probes).

The flow: ``make_pairs(records, tokenizer) -> Pairs`` (clean/corrupted prompts and a metric per
pair), then ``attribution_scores(model, pairs) -> [layers, heads]`` (AtP, every head at once),
``select_heads`` + ``exact_patch_scores`` (the check) and ``agreement``. Importing this package
is light: torch, transformers and nnsight are imported inside the functions.
"""

from .model import as_nnsight, check_remote
from .pairs import Pair, PairBatch, Pairs, make_pairs
from .patching import (Agreement, ExactResult, agreement, attribution_batch, attribution_scores,
                       exact_patch_batch, exact_patch_scores, select_heads)
from .plots import heatmap
from .run import PatchArgs, run_patch, select_slices
from .sites import HEAD_OUTPUT_SITES, HeadSites, head_sites
from .intervene import intervened, random_heads
from .heads import HeadsArgs, head_effects, load_heads, run_heads, score_heads

__all__ = ["Agreement", "ExactResult", "HEAD_OUTPUT_SITES", "HeadSites", "Pair", "PairBatch", "Pairs",
           "agreement", "as_nnsight", "attribution_batch", "attribution_scores", "check_remote",
           "PatchArgs", "exact_patch_batch", "heatmap", "run_patch", "select_slices", "exact_patch_scores", "head_sites", "intervened", "make_pairs", "random_heads",
           "select_heads", "HeadsArgs", "head_effects", "load_heads", "run_heads", "score_heads"]
