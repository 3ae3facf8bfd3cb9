"""AtP vs exact patching on the tiny random models of every architecture the tests build.

Usage: .venv/bin/python scripts/atp_agreement_architectures.py [--pairs 12] [--scales 1 3 10]

Prints a markdown table (docs/architecture.md, "Architectures"): Pearson, Spearman and top-3
overlap of AtP against exact patching over all 8 heads, per weight scale (``scale`` multiplies
every weight matrix: small keeps a plain pre-norm model near linear in its heads). Random
weights: this shows how each architecture's norms shape the first-order approximation, not what
a trained checkpoint does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from interp.core.model import as_nnsight  # noqa: E402
from interp.pairs import make_pairs  # noqa: E402
from interp.patching import agreement, attribution_scores, exact_patch_scores  # noqa: E402
from tiny_models import BUILDERS, N_HEADS, N_LAYERS, one_thread, tiny_model  # noqa: E402
from tiny_tokenizers import bpe_tokenizer, gar_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=12, help="shortest pairs, half gen and half cls")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    args = ap.parse_args()
    tok = bpe_tokenizer()
    full = make_pairs(gar_records("paper")[:300], tok)
    by_family = {f: sorted((i for i in range(len(full)) if full[i].family == f), key=lambda i: full[i].length)
                 for f in ("gen", "cls")}
    pairs = full.subset(by_family["gen"][:args.pairs // 2] + by_family["cls"][:args.pairs - args.pairs // 2])
    heads = [(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS)]
    print("| model | " + " | ".join(f"weights x{s:g}: r / rho / top-3" for s in args.scales) + " |")
    print("|---|" + "---|" * len(args.scales))
    with one_thread():
        for arch in BUILDERS:
            cells = []
            for scale in args.scales:
                model = as_nnsight(tiny_model(arch, scale=scale), tok)
                ag = agreement(attribution_scores(model, pairs, batch_size=6),
                               exact_patch_scores(model, pairs, heads, batch_size=6, heads_per_forward=8), k=3)
                cells.append(f"{ag.pearson:.3f} / {ag.spearman:.2f} / {ag.topk_overlap:.2f}")
            print(f"| {arch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
