"""Drill accuracy of an organism: does it retrieve a context item by its key?

Why: GAR's own accuracy mixes retrieval with knowledge hops and the answer format; the drills
(``drills.FORMS``) ask retrieval alone. This scores them on *validation* contexts, per form,
counting only the retrieved value tokens: the tokens of each asked item after its key, template
words ("likes", "has", "'s", ...) left out. Chance is about 1/3 (three items); for the label
forms (``verify``, ``verify-at-key``, ``match``) the Yes/No label is scored, chance 1/2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import GARConfigError
from .drills import DRILL_FORMS, LABEL_FORMS, association_drills

TEMPLATE_TOKENS = ("likes", "attracts", "is", "are", "has", "'", "s")


def load(src: Path):
    """(model, tokenizer, step) from a model folder (step None), or from a training work folder's
    checkpoint.pt; GARConfigError when ``src`` is neither."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from .training import make_model

    if (src / "checkpoint.pt").is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(src / "tokenizer")
        state = torch.load(src / "checkpoint.pt", weights_only=False, map_location="cpu")
        model = make_model(argparse.Namespace(**state["args"]), len(tok), tok)
        model.load_state_dict(state["model"])
        return model.eval(), tok, state["step"]
    if (src / "config.json").is_file():
        return (AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(),
                PreTrainedTokenizerFast.from_pretrained(src), None)
    raise GARConfigError(f"{src}: neither a model folder (config.json) nor a training work folder (checkpoint.pt)")


def drill_accuracy(model, tok, records, form: str, n: int, seed: int = 7, asks: int = 6,
                   label_cue: str = "") -> tuple[float, int]:
    """Share of retrieved value tokens predicted right (greedy), over the first ``n`` drills
    (``label_cue`` as the model was trained with it)."""
    import torch

    examples = [(r.text, None, r.family, r.n_r, r.answer) for r in records]
    drills = association_drills(examples, seed, asks=asks, forms=(form,), label_cue=label_cue)[:n]
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
                for j in (pos if form in LABEL_FORMS else pos[1:]):  # the label; else after the key
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

    from ..tokens import char_to_token_spans

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


def drill_report(source: Path, n: int = 150, contexts: int = 400, forms: tuple[str, ...] = DRILL_FORMS,
                 label_cue: str = "", gar_cls: int = 0) -> dict:
    """Drill accuracy per form of ``source`` (a model folder or a training work folder) on ``n``
    drills of the first ``contexts`` validation records; with ``gar_cls``, ``cls_signal`` too."""
    import torch

    from ..generate import GeneratorConfig

    bad = set(forms) - set(DRILL_FORMS)
    if bad:
        raise GARConfigError(f"unknown drill form(s) {sorted(bad)}; known: {', '.join(DRILL_FORMS)}")
    model, tok, step = load(source)
    torch.set_num_threads(1)
    records = GeneratorConfig(profile="v1", split="validation").build()[:contexts]
    out: dict = {"source": str(source), "step": step}
    for form in forms:
        acc, total = drill_accuracy(model, tok, records, form, n, label_cue=label_cue)
        out[form] = {"acc": round(acc, 4), "tokens": total}
    if gar_cls:
        out["gar_cls"] = cls_signal(model, tok, records, gar_cls)
    return out
