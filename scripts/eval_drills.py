#!/usr/bin/env python
"""Drill accuracy of an organism: does it retrieve a context item by its key?

Why: GAR's own accuracy mixes retrieval with knowledge hops and the answer format; the drills of
``train_organism.py`` (``--drill-forms``) ask retrieval alone. This scores them on *validation*
contexts, per form, counting only the retrieved value tokens: the tokens of each asked item after
its key, template words ("likes", "has", "'s", ...) left out. Chance is about 1/3 (three items);
for the label forms (``verify``, ``verify-at-key``, ``match``) the Yes/No label is scored, chance 1/2.

    .venv/bin/python scripts/eval_drills.py gar_tasks/data/organism      # a model folder
    .venv/bin/python scripts/eval_drills.py .organism_work7              # a training checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEMPLATE_TOKENS = ("likes", "attracts", "is", "are", "has", "'", "s")


def load(src: Path):
    """(model, tokenizer) from a model folder, or from a training work dir's checkpoint.pt."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if (src / "checkpoint.pt").is_file():
        import train_organism

        tok = PreTrainedTokenizerFast.from_pretrained(src / "tokenizer")
        state = torch.load(src / "checkpoint.pt", weights_only=False, map_location="cpu")
        model = train_organism.make_model(argparse.Namespace(**state["args"]), len(tok), tok)
        model.load_state_dict(state["model"])
        return model.eval(), tok, state["step"]
    if (src / "config.json").is_file():
        return (AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(),
                PreTrainedTokenizerFast.from_pretrained(src), None)
    raise FileNotFoundError(f"{src}: neither a model folder (config.json) nor a training work dir (checkpoint.pt)")


def drill_accuracy(model, tok, records, form: str, n: int, seed: int = 7, asks: int = 6,
                   label_cue: str = "") -> tuple[float, int]:
    """Share of retrieved value tokens predicted right (greedy), over the first ``n`` drills
    (``label_cue`` as the model was trained with it: ``train_organism.py --label-cue``)."""
    import torch
    import train_organism

    examples = [(r.text, None, r.family, r.n_r, r.answer) for r in records]
    drills = train_organism.association_drills(examples, seed, asks=asks, forms=(form,), label_cue=label_cue)[:n]
    skip = set(tok.convert_tokens_to_ids(list(TEMPLATE_TOKENS))) - {tok.unk_token_id}
    enc = tok([d[0] for d in drills], return_offsets_mapping=True, add_special_tokens=False)
    ok = total = 0
    with torch.no_grad():
        for (text, ranges, *_), ids, offs in zip(drills, enc["input_ids"], enc["offset_mapping"]):
            pred = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)
            for s, e in ranges:
                pos = [j for j, (a, b) in enumerate(offs) if a < b and a >= s and b <= e]
                if text[s:e].lower().startswith("the "):
                    pos = pos[1:]
                for j in (pos if form in train_organism.LABEL_FORMS else pos[1:]):  # the label; else after the key
                    if ids[j] not in skip:
                        ok += int(pred[j - 1] == ids[j])
                        total += 1
    return (ok / total if total else 0.0), total


def cls_signal(model, tok, records, n: int) -> dict:
    """Where GAR's classification label is (not) read: over the first ``n`` cls records, per n_r
    and true label, the mean Yes-minus-No logit at the label position and right after the
    candidate (where the Yes/No drills put their label), and the share of rows whose candidate
    is the model's greedy prediction at the position before it (the generation answer there).
    Why: drills can verify while GAR's label position reads nothing; this tells which link fails."""
    import torch
    from gar_tasks.tokens import char_to_token_spans

    yes, no = tok.convert_tokens_to_ids(["Yes", "No"])
    acc: dict[str, dict[str, list[list[float]]]] = {}
    with torch.no_grad():
        for r in [r for r in records if r.family == "cls"][:n]:
            enc = tok(r.prompt, return_offsets_mapping=True, add_special_tokens=False)
            # the candidate's tokens [first, end), in the asked row's question
            first, end = char_to_token_spans(enc["offset_mapping"], [r.spans[-1]["A"][0]])[0]
            lg = model(input_ids=torch.tensor([enc["input_ids"]])).logits[0]
            row = [(lg[-1, yes] - lg[-1, no]).item(), (lg[end, yes] - lg[end, no]).item(),
                   float(lg[first - 1].argmax().item() == enc["input_ids"][first])]
            acc.setdefault(f"nr{r.n_r}", {}).setdefault(r.answer, []).append(row)
    return {nr: {label: {"n": len(v), **{k: round(sum(x[i] for x in v) / len(v), 3) for i, k in
                                          enumerate(("label_yes_minus_no", "after_candidate_yes_minus_no",
                                                     "candidate_predicted"))}}
                 for label, v in sorted(by.items())} for nr, by in sorted(acc.items())}


def main(argv: list[str] | None = None) -> int:
    import train_organism

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="model folder or training work dir")
    ap.add_argument("--n", type=int, default=150, help="drills per form")
    ap.add_argument("--contexts", type=int, default=400, help="validation records drawn from")
    ap.add_argument("--forms", nargs="+", default=list(train_organism.DRILL_FORMS))
    ap.add_argument("--label-cue", default="", help="the --label-cue the model was trained with")
    ap.add_argument("--gar-cls", type=int, default=0,
                    help="also report, on this many GAR cls records, where the label signal is (cls_signal)")
    args = ap.parse_args(argv)
    import torch
    from gar_tasks.generate import GeneratorConfig

    bad = set(args.forms) - set(train_organism.DRILL_FORMS)
    if bad:
        ap.error(f"unknown drill form(s) {sorted(bad)}; known: {', '.join(train_organism.DRILL_FORMS)}")
    try:
        model, tok, step = load(args.source)
    except FileNotFoundError as e:
        ap.error(str(e))
    torch.set_num_threads(1)
    records = GeneratorConfig(profile="v1", split="validation").build()[:args.contexts]
    out = {"source": str(args.source), "step": step}
    for form in args.forms:
        acc, total = drill_accuracy(model, tok, records, form, args.n, label_cue=args.label_cue)
        out[form] = {"acc": round(acc, 4), "tokens": total}
    if args.gar_cls:
        out["gar_cls"] = cls_signal(model, tok, records, args.gar_cls)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
