"""The GAR model organism shipped in the package: it loads offline, its weights are the ones
the training record describes, its tokenizer agrees with the record spans and with lm-eval's
encoding, lm-eval scores it doc by doc as plain torch does, its accuracy on both families (at least
0.8) is far above what a broken loader, tokenizer or scoring path gives, and the heads the
package's tools find carry its generation and its classification (CI never retrains). The shipped
checkpoint solves GAR's held-out test split (docs/results.md: gen 0.92, cls 0.94)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gar_tasks import models
from gar_tasks.errors import GARConfigError
from gar_tasks.generate import GeneratorConfig
from gar_tasks.grid import iter_cells
from gar_tasks.models import PackagedModel, embedded_model_path, packaged_model_path
from gar_tasks.tokens import end_position, record_token_positions

pytestmark = pytest.mark.integration

ENTRY = models.EMBEDDED_MODELS["organism"]


@pytest.fixture(scope="module")
def folder() -> Path:
    return embedded_model_path("organism")


@pytest.fixture(scope="module")
def loaded(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32", local_files_only=True).eval()
    return model, tok


@pytest.fixture(scope="module")
def v1_records():
    """Two test records of every 8th v1 cell (both families, every n_r)."""
    cfg = GeneratorConfig(profile="v1", n_per_task=2)
    return [r for c in list(iter_cells())[::8] for r in cfg.cell_records(c)]


def test_the_organism_is_a_folder_inside_the_package(folder):
    import gar_tasks

    assert isinstance(ENTRY, PackagedModel)
    assert folder.is_relative_to(Path(gar_tasks.__file__).parent / "data")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / ENTRY.record).is_file()


def test_missing_folder_is_a_clear_config_error():
    with pytest.raises(GARConfigError, match=r"no-such-model is incomplete \(no such folder\): reinstall"):
        packaged_model_path(PackagedModel(folder="no-such-model", record="x.json", description=""))


def test_weights_match_the_training_record(folder):
    record = json.loads((folder / ENTRY.record).read_text())
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert sha == record["weights_sha256"]
    assert record["data"]["split"] == "train" and record["wall_time_s"] > 0
    assert "scripts/train_organism.py" in record["command"]


def test_loads_offline_as_a_grouped_query_llama(loaded):
    model, tok = loaded
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert tok.is_fast and len(tok) == cfg.vocab_size
    assert {tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token} == {"<s>", "</s>", "[PAD]", "[UNK]"}


def test_tokenizer_covers_v1_and_matches_lm_eval_encoding(loaded, v1_records):
    """No unknown words; prompt + ' ' + answer splits exactly into the prompt's and the
    answer's tokens, which is how lm-eval separates context from continuation."""
    _, tok = loaded
    for r in v1_records:
        whole = tok(r.prompt + " " + r.answer, add_special_tokens=False)["input_ids"]
        ctx = tok(r.prompt, add_special_tokens=False)["input_ids"]
        cont = tok(" " + r.answer, add_special_tokens=False)["input_ids"]
        assert whole == ctx + cont, r.id
        assert tok.unk_token_id not in whole, r.id


def test_span_to_token_mapping_hits_the_role_words(loaded, v1_records):
    _, tok = loaded
    for r in v1_records[:40]:
        rows = record_token_positions(r, tok)
        ids = tok(r.text)["input_ids"]
        for row, spans in zip(rows, r.spans):
            (s, e), = spans["Q"]
            a, b = row["Q"][0]
            assert tok.decode(ids[a:b]).replace(" ", "") == r.text[s:e].replace(" ", "")
        end = end_position(r, tok)
        assert end == len(tok(r.prompt)["input_ids"]) - 1


def _plain_scores(model, tok, docs) -> list[float]:
    """The lm-eval metric recomputed in plain torch, one prompt at a time: cls = the gold
    label's log-likelihood beats the other's; gen = greedy decoding reproduces the answer."""
    import torch

    out = []
    with torch.no_grad():
        for d in docs:
            ctx = tok(d["prompt"], add_special_tokens=False)["input_ids"]
            options = list(d["choices"]) if d["family"] == "cls" else [d["answer"]]
            lls, greedy = [], []
            for opt in options:
                cont = tok(" " + opt, add_special_tokens=False)["input_ids"]
                logp = model(input_ids=torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
                rows = logp[len(ctx) - 1:len(ctx) - 1 + len(cont)]
                lls.append(float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum()))
                greedy.append(rows.argmax(-1).tolist() == cont)
            if d["family"] == "cls":
                out.append(float(options[max(range(len(options)), key=lls.__getitem__)] == d["answer"]))
            else:
                out.append(float(greedy[0]))
    return out


def test_lm_eval_scores_every_doc_as_plain_torch_does(folder, loaded):
    """lm-eval's hf model on the shipped folder (its loader, tokenizer and context/continuation
    split) gives, doc by doc, the accuracy a plain-torch reading of the same model gives."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    leaves = ["gar_v1_cls_nr1_gender_city", "gar_v1_gen_nr2_occupation_kind"]
    res = simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=leaves,
                          limit=12, batch_size=8, task_manager=TaskManager(), bootstrap_iters=0, device="cpu",
                          log_samples=True)
    model, tok = loaded
    for leaf in leaves:
        samples = sorted(res["samples"][leaf], key=lambda s: s["doc_id"])
        assert len(samples) == 12
        assert [s["acc"] for s in samples] == _plain_scores(model, tok, [s["doc"] for s in samples]), leaf


def test_train_split_never_asks_a_test_question():
    """The organism's training data: disjoint from the test split by construction, and a stream
    of its own (not the validation split's)."""
    def key(r):
        row = r.rows[-1]
        return (row.keys, row.values, row.query)

    for cell in list(iter_cells())[::48]:
        test = {key(r) for r in GeneratorConfig(profile="v1").cell_records(cell)}
        train = GeneratorConfig(profile="v1", split="train", n_per_task=30).cell_records(cell)
        val = GeneratorConfig(profile="v1", split="validation", n_per_task=30).cell_records(cell)
        assert train and not test & {key(r) for r in train}, cell.code
        assert {r.text for r in train} != {r.text for r in val}
        assert all(r.split == "train" and "/train/" in r.id for r in train)


def test_lm_eval_accuracy_is_far_above_a_broken_path_on_both_families(folder):
    """A floor of 0.8, through lm-eval, on a few cls and gen leaves of each n_r (16 docs each). A
    broken loader, tokenizer or scoring path gives about 0 on exact-match generation and 0.5 on
    classification (one label: SmolLM2, and the organism's runs before the label cue). Measured
    here: the shipped one 0.96 on cls and 0.96 on gen (0.92-0.99 per leaf over all its test docs,
    docs/results.md); e5b, the lineage's third run, 0.56 on cls and 0.71 on gen."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    cells = ["nr0_gender_city", "nr1_gender_landmark", "nr2_gender_landmark"]
    leaves = [f"gar_v1_{fam}_{cell}" for fam in ("cls", "gen") for cell in cells]
    res = simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=leaves,
                          limit=16, batch_size=16, task_manager=TaskManager(), bootstrap_iters=0, device="cpu")
    accs = {leaf: res["results"][leaf]["acc,none"] for leaf in leaves}
    for fam in ("cls", "gen"):
        mine = [a for leaf, a in accs.items() if leaf.startswith(f"gar_v1_{fam}_")]
        assert sum(mine) / len(mine) >= 0.8, (fam, accs)
    assert min(accs.values()) >= 0.6, accs


def nr0_results(folder, heads=()) -> dict:
    """lm-eval results of gar_v1_gen_nr0 (8 docs per leaf), with ``heads`` zeroed when given
    (the package's ``gar-hf-intervened`` model)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from interp.intervene import format_heads

    spec = format_heads(heads)
    model, args = (("gar-hf-intervened", f"pretrained={folder},dtype=float32,heads={spec},mode=ablate")
                   if heads else ("hf", f"pretrained={folder},dtype=float32"))
    return simple_evaluate(model=model, model_args=args, tasks=["gar_v1_gen_nr0"], limit=8, batch_size=24,
                           task_manager=TaskManager(), bootstrap_iters=0, device="cpu")["results"]


@pytest.fixture(scope="module")
def nr0_plain(folder) -> dict:
    return nr0_results(folder)


def test_lm_eval_n_r_0_generation_selects_the_item_by_the_query(nr0_plain):
    """gen n_r = 0 asks which of three context items the query names: copying any item of the
    right type scores about 1/3 (the second run: 0.25 on these 24 docs, 0.27 on all 192),
    selecting it by the query scores far more (the shipped one: 1.00 here, 0.96 on all)."""
    leaves = {k: v for k, v in nr0_plain.items() if k.startswith("gar_v1_gen_nr0_")}
    assert len(leaves) == 3, sorted(nr0_plain)
    acc = sum(v["acc,none"] for v in leaves.values()) / len(leaves)
    assert acc >= 0.6, leaves


def test_ablating_the_heads_gar_patch_finds_drops_generation_more_than_random_heads(folder, loaded, nr0_plain,
                                                                                    tmp_path):
    """The intervention check on generation: the heads `gar patch` ranks first on gen
    n_r = 0 query-swap pairs are zeroed through lm-eval (`gar-hf-intervened`), and n_r = 0
    accuracy falls to about the 1/3 of copying any context item, below five draws of as many
    random heads (measured on these 24 docs: 1.00 -> 0.25; random 1.00, 0.04, 0.38, 0.96, 0.96;
    run 16 on all 192 docs: 0.77 -> 0.33 against 0.60 +- 0.16 for ten draws)."""
    import numpy as np

    from interp.commands.patch import PatchArgs, run_patch, top_heads
    from interp.intervene import random_heads

    run_patch(PatchArgs(model="organism", tasks="gen_nr0", config="v1", n=24, verify_top=5, out=str(tmp_path / "p"),
                        threads=1))
    heads = top_heads(np.load(tmp_path / "p" / "scores.npz")["atp_gen"], 5)
    cfg = loaded[0].config

    def acc(ablated):
        return nr0_results(folder, ablated)["gar_v1_gen_nr0"]["acc,none"]

    base, targeted = nr0_plain["gar_v1_gen_nr0"]["acc,none"], acc(heads)
    random = [acc(random_heads(len(heads), heads, cfg.num_hidden_layers, cfg.num_attention_heads, seed=i))
              for i in range(5)]
    assert base - targeted >= 0.3, (heads, base, targeted)
    assert targeted < sum(random) / len(random) - 0.15, (heads, targeted, random)


def test_true_and_false_heads_gar_heads_finds_carry_the_classification(tmp_path):
    """The same check on classification, on n_r = 0 (0.98 on the test split, docs/results.md).
    `gar heads` labels True and False heads; zeroing its top three of each (0.1, 1.4, 3.1; 0.2,
    3.6, 3.5) takes accuracy from 0.99 to 0.53 and the Yes/No margin (logit(gold) - logit(other))
    from 5.8 to 0.1; ten draws of as many random heads: 0.68 +- 0.18 and 2.3 +- 2.3 (the first
    five, which the test draws: 0.67 and 2.2). A model at one label has no margin to take away
    (run 16: -0.18 on either label)."""
    from interp.commands.heads import HeadsArgs, run_heads
    from interp.commands.intervene import InterveneArgs, run_intervene
    from interp.intervene import format_heads

    run_heads(HeadsArgs(model="organism", out=str(tmp_path / "h"), tasks="cls_nr0", config="v1", n=32, threads=1))
    found = json.loads((tmp_path / "h" / "heads.json").read_text())
    assert len(found["true_heads"]) >= 3 and len(found["false_heads"]) >= 3, found["n_labelled"]
    spec = format_heads(found["true_heads"][:3] + found["false_heads"][:3])
    run_intervene(InterveneArgs(model="organism", mode="ablate", out=str(tmp_path / "i"), heads=spec,
                                tasks="cls_nr0", config="v1", n=64, random_draws=5, threads=1))
    overall = json.loads((tmp_path / "i" / "intervene.json").read_text())["overall"]
    base, targeted, random = (overall[k] for k in ("baseline", "targeted", "random"))
    assert base["acc"] >= 0.9 and base["metric"] >= 2.0, overall
    assert targeted["acc"] < random["acc"]["mean"] - 0.1, (spec, overall)
    assert targeted["metric"] < random["metric"]["mean"] - 1.0, (spec, overall)
