"""Write lm-eval's --samples JSON for a quick GAR run with the compositionality gap.

Usage: python scripts/quick_samples.py N [--config paper|v1] [--chat] > samples.json
then: lm_eval ... --tasks gar,gar_sub --samples samples.json   (gar_chat,gar_chat_sub with --chat)
N documents of every benchmark leaf (as --limit N) plus exactly their sub-questions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gar_tasks.lm_eval_glue import quick_samples  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("per_leaf", type=int)
    ap.add_argument("--config", default="paper")
    ap.add_argument("--chat", action="store_true", help="the chat route's leaves (gar_chat, gar_chat_sub)")
    args = ap.parse_args()
    json.dump(quick_samples(args.per_leaf, args.config, args.chat), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
