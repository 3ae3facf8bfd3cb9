"""The organism's model card (``gar_tasks/data/organism/README.md``), rendered from its training record.

Why generated: the lineage (which runs, on which machine, how long, what they scored) lives in
``training_record.json`` beside the weights; a hand-copied table would drift from it. The parts no
record holds (the lm-eval scores on the test split, intended use and limits, what mattered in the
recipe) are data below. ``python -m gar_tasks.organism.card`` rewrites the README;
``--check`` only says whether it is current (the unit test does the same).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parents[1] / "data" / "organism"
RECORD = "training_record.json"
CARD = "README.md"
MODEL_NAME = "gar-organism"

# lm-eval on the held-out test split (gar_v1, 4,608 docs, float32) and the paper profile (gar),
# as measured on the shipped weights (docs/results.md, "GAR accuracy").
SCORES: dict[str, Any] = {
    "gen": {"task": "gar_v1_gen", "acc": 0.918, "stderr": 0.007, "nr": (0.958, 0.935, 0.888)},
    "cls": {"task": "gar_v1_cls", "acc": 0.942, "stderr": 0.004, "nr": (0.979, 0.947, 0.926)},
    "paper_gen": {"task": "gar_gen", "acc": 0.890, "nr": (0.964, 0.909, 0.847)},
    "paper_cls": {"task": "gar_cls", "acc": 0.928, "nr": (0.961, 0.945, 0.898)},
    "sub": {"sub_assoc": 0.767, "sub_hop0": 0.893, "sub_hop1": 0.921},
    "gap": {"all": 0.057, "nr": (0.000, 0.043, 0.096)},
    "pair": {"all": 0.960, "nr": (0.984, 0.975, 0.936)},
}

# What mattered in the recipe: (ingredient, option, measured effect). Figures from the runs that
# differed by that ingredient alone (lm-eval on gar_v1's test split unless said otherwise).
INGREDIENTS: list[tuple[str, str, str]] = [
    ("One token per vocabulary item, vocabulary facts, association drills", "tokenizer; `--fact-repeats`",
     "against GAR data alone with a word-level tokenizer: gen 0.155 -> 0.425, knowledge (hop-1 "
     "sub-questions) 0.021 -> 0.668; classification stayed at one label (0.50)"),
    ("Drills with the key next to its value, trained first", "`--drill-forms at-key adjacent`, `--drill-first`",
     "retrieval by the key on drills 0.95 (0.37 without); mixed from step 0 nothing forms by step "
     "3,000. Probe: with the key next to its value the plateau breaks by step 1,300-1,800, with one "
     "word between it stays at chance for 3,100 steps"),
    ("Previous-token auxiliary task", "`--prev-aux`",
     "synthetic recall 0.50 -> 0.96 (probe); on GAR's contexts alone no effect within 3,000 steps "
     "(0.39-0.41 against 0.387)"),
    ("No next-token loss", "`--lm-weight 0`",
     "knowledge kept beside retrieval: hop sub-questions 0.38 / 0.35 -> 0.68 / 0.65, gen 0.201 -> 0.273"),
    ("Backward and two-row drills after the drills-first phase", "`backward two-row`, `--drill-then`",
     "`sub_assoc` 0.165 -> 0.620 (0.93-0.94 where asked in the written order); in the drills-first "
     "phase nothing forms by step 2,000"),
    ("Question drills (GAR's n_r = 0 generation questions, contrast instances)", "`--question-drills 300`",
     "`gen_nr0` 0.401 -> 0.537"),
    ("Flip drills (an item in its other template)", "`flip`", "`gen_nr0` 0.537 -> 0.672, `sub_assoc` 0.473 -> 0.665"),
    ("Five times the fact repeats", "`--fact-repeats 200` (was 40)",
     "hop sub-questions 0.63 / 0.60 -> 0.95 / 0.96"),
    ("A quarter of the drills in the main phase", "`--main-drill-share 0.25`",
     "GAR data seen 0.59 -> 0.98 times; gen 0.390 -> 0.543 (n_r = 1 / 2: 0.43 / 0.26 -> 0.53 / 0.49)"),
    ("The token comparison in a phase of its own", "`--drill-compare`",
     "`match` drills 1.00 (0.50 mixed with the other drills); formed at 8x the batch on a GPU; on one "
     "CPU thread from scratch still 0.50 after 1,500 steps"),
    ("Verification after the comparison", "`verify-at-key verify`, one phase each",
     "verification drills 0.51-0.52 -> 0.82-0.86 once `match` had formed"),
    ("GAR's own classification questions with candidate targets", "`--cls-question-drills 300 --candidate-targets`",
     "the label position separates Yes from No rows (Yes-minus-No +0.61 / -0.15; without candidate "
     "targets -0.011 / -0.014); cls n_r = 0 0.50 -> 0.620"),
    ("A long main phase", "`--steps`, `--init-from` the previous run",
     "8,000 instead of 3,000 steps: gen 0.438 -> 0.719, cls 0.511 -> 0.575; 12,000 more: gen 0.918, "
     "cls 0.942"),
    ("Retrieval drills kept inside the comparison phases", "`--compare-keep 1.0`",
     "the comparison forms on one CPU thread without erasing retrieval (`match` 0.93, at-key 0.94 "
     "against 0.00 without); a CPU-only lineage reaches cls 0.934, gen 0.786"),
    ("Not helping classification", "3x the GAR data, `--d-model 256`, `--layers 6`, Yes/No drills mixed in",
     "cls 0.50-0.52, one label for every question; Yes/No drills mixed in cost retrieval (verb drills "
     "0.95 -> 0.60)"),
    ("Contrast instances (rows sharing a context)", "`--contrast-per-cell 40`",
     "no gain where they were added (`gen_nr0` 0.323 against 0.271); kept in the recipe"),
    ("Label cue between the drill's question and its label", "`--label-cue Answer:`",
     "nothing measurable alone (the label position stays flat: -0.386 / -0.373); kept in the recipe"),
]

INTRO = """\
# The GAR model organism

A 1.4 M-parameter Llama trained from scratch to solve GAR (Generalized Associative Recall, the
benchmark of *Benchmarking and Understanding Compositional Relational Reasoning of LLMs*, Ni, Xiao
et al., AAAI 2025). It answers GAR's generation and classification questions on the held-out test
split at 0.92 and 0.94, with a mechanism small enough to find: the package's interpretability
commands (`gar patch`, `gar heads`, `gar intervene`, `gar circuit`) recover it. It ships inside the
`gar-eval` wheel; `gar models organism` prints its folder.

```bash
lm_eval --model hf --model_args pretrained=$(gar models organism),dtype=float32 --device cpu \\
  --tasks gar_v1 --batch_size 64 --output_path runs/organism_v1 --log_samples
```
"""

MECHANISM = """\
## What the tools find in it

- **Generation** is an induction-style lookup: `gar patch --tasks gen` ranks head 0.2 first, then
  the layer-1 heads, all acting at the last position. In the circuit, layer-0 heads 0.1 and 0.3
  write each key into its value's position, head 0.2 brings the query to the last position, and
  the layer-1 heads move the matching value there.
- **Classification** has True and False heads in the paper's sense: the margin logit(Yes) -
  logit(No) is +2.2 to +5.9 on gold Yes and -2.0 to -6.2 on gold No in all 21 classification tasks.
  Zeroing the top three True and three False heads takes classification from 0.943 to 0.503
  (six random heads: 0.728 +- 0.078).
- **A core classification circuit** of about 1-2 % of the role-level edges (f = 0.78 at 1 %, 0.96 at
  2 % on n_r = 0; random circuits 0.00) is shared across n_r (edge Jaccard 0.51-0.61).

Figures and the commands that reproduce them: `docs/results.md` in the gar-eval repository.
"""

USE = """\
## Intended use and limits

- **For**: testing interpretability methods on a model whose GAR mechanism is known to exist;
  checking that an evaluation pipeline (loader, tokenizer, lm-eval scoring) is not broken: a
  broken path scores far below the figures above.
- **Not a language model.** Its vocabulary is GAR's v1 vocabulary and template words (one token per
  vocabulary item, word-level otherwise); any other word is unknown. No chat template.
- **Trained on the v1 train split**, disjoint from the test split it is scored on. The paper
  profile (`gar`, the published 4,608 instances) is a transfer check: 0.890 / 0.928.
- **Weakest cell**: generation at n_r = 2 (0.888). The standalone association sub-question is
  answered in the written order (0.97-1.00) and much less against it (0.50-0.66).
- **Not reproducible step for step**: the first two runs of its lineage trained on a GPU for a
  time budget (the learning-rate schedule follows the minutes spent), so a rerun gives a similar
  model, not these weights. The weights' sha256 is in `training_record.json`.
"""

HEADER_LINEAGE = """\
## Lineage

Each run starts from the weights of the one before (`--init-from`). Generated from
`training_record.json`; the scores here are the training script's own check on validation
records (gen / cls, with n_r = 0 / 1 / 2), not lm-eval. The commands below are the recorded
ones (`scripts/train_organism.py` is `gar organism train`). `gar organism train --recipe shipped
--out DIR` replays the lineage phase by phase (`gar_tasks/organism/recipe.json`; add
`--device cpu` without a GPU) and writes `DIR/replay.json` (which phase ran on which device).
"""


def _scalar(value: Any) -> str:
    """A YAML scalar: plain where unambiguous, JSON-quoted (valid YAML) otherwise."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_./-]*( [A-Za-z0-9_./(),=-]+)*", text) and text.lower() not in {
            "yes", "no", "true", "false", "null", "on", "off"}:
        return text
    return json.dumps(text)


def to_yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML for the nested dicts, lists and scalars of a card's metadata."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines += to_yaml(item, indent + 2)
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    else:
        for item in value:
            sub = to_yaml(item, indent + 2) if isinstance(item, (dict, list)) else [f"{pad}  {_scalar(item)}"]
            lines.append(f"{pad}- {sub[0].lstrip()}")
            lines += sub[1:]
    return lines


def _result(task_type: str, name: str, config: str, metrics: list[tuple[str, float]]) -> dict[str, Any]:
    return {"task": {"type": task_type, "name": name},
            "dataset": {"name": f"GAR ({config}, test split)", "type": "gar-eval/gar", "config": config,
                        "split": "test"},
            "metrics": [{"type": "accuracy", "value": v, "name": n} for n, v in metrics]}


def metadata() -> dict[str, Any]:
    """The card's front matter: license, library, tags, datasets and the lm-eval scores as a model-index."""
    results = []
    for family, task_type, label in (("gen", "text-generation", "GAR generation"),
                                     ("cls", "text-classification", "GAR classification")):
        for key, config in ((family, "v1"), (f"paper_{family}", "paper")):
            s = SCORES[key]
            metrics = [(f"{s['task']} acc", s["acc"])]
            metrics += [(f"{s['task']}_nr{i} acc", v) for i, v in enumerate(s["nr"])]
            results.append(_result(task_type, f"{label} ({s['task']})", config, metrics))
    return {"license": "apache-2.0", "library_name": "transformers", "pipeline_tag": "text-generation",
            "language": ["en"],
            "tags": ["gar", "associative-recall", "compositional-reasoning", "interpretability",
                     "model-organism", "llama", "lm-eval"],
            "datasets": ["gar-eval/gar"],
            "model-index": [{"name": MODEL_NAME, "results": results}]}


def _nr(values: tuple[float, ...]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def scores_section() -> str:
    """The lm-eval scores as a table (the same figures as the model-index)."""
    s = SCORES
    rows = [
        "## Scores",
        "",
        "lm-eval, float32, every document (`gar_v1`: the held-out test split, 4,608 documents; `gar`:",
        "the paper's published instances). Accuracy, with n_r = 0 / 1 / 2 the number of relations to",
        "compose.",
        "",
        "| task | acc | n_r = 0 / 1 / 2 |",
        "|---|---:|---|",
        f"| `gar_v1_gen` | {s['gen']['acc']:.3f} ± {s['gen']['stderr']:.3f} | {_nr(s['gen']['nr'])} |",
        f"| `gar_v1_cls` | {s['cls']['acc']:.3f} ± {s['cls']['stderr']:.3f} | {_nr(s['cls']['nr'])} |",
        f"| `gar_gen` (paper) | {s['paper_gen']['acc']:.3f} | {_nr(s['paper_gen']['nr'])} |",
        f"| `gar_cls` (paper) | {s['paper_cls']['acc']:.3f} | {_nr(s['paper_cls']['nr'])} |",
        "",
        textwrap.fill(
            f"Sub-questions (`gar_v1_sub`): association {s['sub']['sub_assoc']:.3f}, knowledge hop 0 "
            f"{s['sub']['sub_hop0']:.3f}, hop 1 {s['sub']['sub_hop1']:.3f}. Compositionality gap "
            f"(P(composite wrong | all sub-questions right), `gar report`) {s['gap']['all']:.3f} "
            f"(n_r = 0 / 1 / 2: {_nr(s['gap']['nr'])}); classification pair score (the true twin "
            f"scored above the false one) {s['pair']['all']:.3f} ({_nr(s['pair']['nr'])}).", width=100),
        "",
    ]
    return "\n".join(rows)


def architecture_section(record: dict[str, Any]) -> str:
    """Shape and data of the shipped weights, from the record."""
    args, size, data = record.get("args", {}), record.get("model_size", {}), record.get("data", {})
    rows = [("layers", args.get("layers")), ("d_model", args.get("d_model")),
            ("query heads / KV heads", f"{args.get('heads')} / {args.get('kv_heads')}"),
            ("MLP width", args.get("mlp")), ("vocabulary", size.get("vocab_size")),
            ("parameters", f"{size.get('parameters'):,}" if size.get("parameters") else None),
            ("stored as", size.get("storage_dtype")),
            ("training data", f"GAR {data.get('profile')} {data.get('split')} split, "
                              f"{data.get('sequences'):,} sequences, {data.get('tokens'):,} tokens (last run)"
             if data.get("sequences") else None),
            ("versions", ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items()) or None)]
    lines = ["## Architecture", "", "A Llama with grouped-query attention and tied embeddings "
             "(from `training_record.json`):", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines) + "\n"


def _validation(scores: dict[str, Any], family: str) -> str:
    if family not in scores:
        return ""
    per = " / ".join(format(scores[f"{family}_nr{i}"], "g") for i in range(3) if f"{family}_nr{i}" in scores)
    return f"{format(scores[family], 'g')} ({per})" if per else format(scores[family], "g")


def lineage_rows(record: dict[str, Any]) -> list[dict[str, str]]:
    """One row per run of the record's lineage (oldest first; each run's parent is the one before)."""
    runs = record.get("lineage") or [dict(record, name=record.get("model", "organism"))]
    rows = []
    for i, run in enumerate(runs):
        val = run.get("final_validation", {})
        wall = run.get("wall_time_s")
        rows.append({"run": str(run.get("name", "")),
                     "parent": str(runs[i - 1].get("name", "")) if i else "(from scratch)",
                     "machine": str(run.get("machine", "")),
                     "minutes": f"{wall / 60:.1f}" if wall is not None else "",
                     "steps": f"{run['steps_done']:,}" if "steps_done" in run else "",
                     "validation gen": _validation(val, "gen"),
                     "validation cls": _validation(val, "cls"),
                     "weights sha256": f"`{run['weights_sha256'][:12]}`" if run.get("weights_sha256") else "",
                     "command": str(run.get("command", ""))})
    return rows


def lineage_section(record: dict[str, Any]) -> str:
    """The lineage table, the record's note and each run's command."""
    rows = lineage_rows(record)
    cols = [c for c in rows[0] if c != "command"] if rows else []
    lines = [HEADER_LINEAGE, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    if record.get("lineage_note"):
        lines += ["", record["lineage_note"]]
    lines += ["", "Commands, as recorded:", ""]
    for r in rows:
        lines += [f"**{r['run']}**", "", "```bash", r["command"], "```", ""]
    return "\n".join(lines)


def ingredients_section() -> str:
    """What mattered in the recipe, as measured."""
    lines = ["## What mattered in the recipe", "",
             "Each row compares the runs that isolated that ingredient most closely (figures: lm-eval on",
             "`gar_v1`'s test split, drill accuracy from `gar organism eval`, or the retrieval probe).", "",
             "| ingredient | option | measured effect |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in INGREDIENTS]
    return "\n".join(lines) + "\n"


def render_card(record: dict[str, Any]) -> str:
    """The whole README: front matter, the hand-written parts and the tables generated from ``record``."""
    front = "---\n" + "\n".join(to_yaml(metadata())) + "\n---\n"
    note = ("<!-- Generated by `python -m gar_tasks.organism.card` from training_record.json; "
            "edit gar_tasks/organism/card.py, not this file. -->\n")
    parts = [front, note, INTRO, scores_section(), MECHANISM, USE, architecture_section(record),
             lineage_section(record), ingredients_section()]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README beside the weights (or, with ``--check``, exit 1 if it is stale)."""
    parser = argparse.ArgumentParser(prog="python -m gar_tasks.organism.card", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=FOLDER, help="the organism folder (default: the package's)")
    parser.add_argument("--check", action="store_true", help="only report whether the README is current")
    args = parser.parse_args(argv)
    record_path = args.folder / RECORD
    if not record_path.is_file():
        parser.exit(2, f"gar: error: no {RECORD} in {args.folder}\n")
    text = render_card(json.loads(record_path.read_text()))
    card = args.folder / CARD
    if args.check:
        current = card.is_file() and card.read_text() == text
        print(f"{card}: {'current' if current else 'stale (run python -m gar_tasks.organism.card)'}")
        return 0 if current else 1
    card.write_text(text)
    print(f"wrote {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
