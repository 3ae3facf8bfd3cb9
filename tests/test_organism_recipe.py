"""The organism's training recipe (gar_tasks.organism) as data: one token per vocabulary
item, vocabulary facts phrased as GAR's own knowledge sub-questions, association drills that ask
back exactly the items of a training context. CI never retrains; these pin what the shipped
tokenizer and the recorded run were built from."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from gar_tasks.cli import main
from gar_tasks.generate import GeneratorConfig
from gar_tasks.organism import data, record, training
from gar_tasks.organism import drills as drill_forms
from gar_tasks.profiles import load_profile
from gar_tasks.subq import fact_templates

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
ORGANISM = ROOT / "gar_tasks" / "data" / "organism"


def gar_organism_error(capsys, *argv: str) -> tuple[int, str]:
    """(exit code, last stderr line) of ``gar organism train ARGV`` in-process."""
    code = main(["organism", "train", *argv])
    return code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def train_records():
    return GeneratorConfig(profile="v1", split="train", n_per_task=1, seed=0).build()


@pytest.fixture(scope="module")
def train_texts(train_records):
    return [(r.text, None, r.family, r.n_r, r.answer) for r in train_records]


def test_every_vocabulary_item_is_one_token_and_decodes_verbatim(train_texts):
    tok = data.build_tokenizer([t[0] for t in train_texts] + data.vocabulary_words("v1"),
                                 data.entity_tokens("v1"))
    items = data.vocabulary_items("v1")
    assert "Dr. Mehmet Oz" in data.entity_tokens("v1") and "Olot" not in data.entity_tokens("v1")
    for item in items:
        ids = tok(" " + item, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, item
        assert tok.decode(ids) == item
    # an item inside a longer word is not matched (word boundaries): 'Pau' is not split off 'Paul'
    assert tok.tokenize("Paul likes Olot.")[0] == "Paul"


def test_fact_sentences_state_every_vocabulary_fact_in_the_subquestion_phrasing():
    facts = data.fact_sentences("v1")
    vocab = load_profile("v1").vocab
    trees = [s for s in vocab.schemas.values() if hasattr(s, "category_of")]
    adjs = vocab["person_adjs"]
    n_syn = sum(len(adjs.relation("similar")(w)) for w in adjs.members)
    assert len(facts) == sum(len(s.category_of) for s in trees) + n_syn
    by_text = {f[0]: f[0][f[1]:f[2]] for f in facts}
    assert by_text["Olot is a place in Spain."] == "Spain"
    assert fact_templates()["countries_of_landmarks"] == "{x} is a place in"
    cities = vocab["countries_of_cities"]
    for text, a, b in facts:
        assert text.endswith(".") and text[a - 1] == " "
    for m, c in cities.category_of.items():
        assert f"{m} is a city of {c}." in by_text


def test_association_drills_ask_back_exactly_the_context_items(train_texts):
    sample = random.Random(0).sample(train_texts, 60)
    drills = drill_forms.association_drills(sample, seed=0)
    assert len(drills) >= 50  # items with '. ' inside (Dr. Mehmet Oz) are skipped
    for text, ranges, family, *_ in drills:
        ctx, asked = text.split(" >. ", 1)
        items = {i.strip().rstrip(".") for i in ctx[2:].split(". ")}
        got = {text[a:b] for a, b in ranges}
        assert family == "drill" and len(ranges) == 3
        assert {g[:1].upper() + g[1:] if g.startswith("the ") else g for g in got} == items
        assert asked.count(" So ") + asked.startswith("So ") == 3


def test_drills_with_replacement_ask_only_context_items(train_texts):
    sample = random.Random(1).sample(train_texts, 60)
    drills = drill_forms.association_drills(sample, seed=0, asks=6)
    repeated = 0
    for text, ranges, *_ in drills:
        ctx = text.split(" >. ", 1)[0]
        items = {i.strip().rstrip(".") for i in ctx[2:].split(". ")}
        got = [text[a:b] for a, b in ranges]
        assert len(got) == 6
        assert {g[:1].upper() + g[1:] if g.startswith("the ") else g for g in got} <= items
        repeated += len(set(got)) < len(got)
    assert repeated == len(drills)  # 6 asks of 3 items always repeat one: nothing to eliminate


def test_drill_forms_keep_the_asks_and_drop_only_template_words(train_texts):
    sample = random.Random(2).sample(train_texts, 60)
    forms = ("verb", "at-key", "adjacent")
    drills = drill_forms.association_drills(sample, seed=0, asks=4, forms=forms)
    assert len(drills) % 3 == 0 and len(drills) >= 150
    template = {"likes", "attracts", "is", "are", "has"}
    for verb, at_key, adjacent in zip(drills[0::3], drills[1::3], drills[2::3]):
        assert (verb[4], at_key[4], adjacent[4]) == forms
        asked = [[verb[0][a:b] for a, b in verb[1]], [at_key[0][a:b] for a, b in at_key[1]],
                 [adjacent[0][a:b] for a, b in adjacent[1]]]
        # the same items, in the same order; at-key and adjacent ask the key then its value
        assert [drill_forms.without_template_words(v) for v in asked[0]] == asked[1] == asked[2]
        for a in asked[1]:
            assert not set(a.split()) & template and "'s" not in a
        # at-key keeps the context as written; adjacent drops the template words there too
        ctx_verb, ctx_key, ctx_adj = (d[0].split(" >. ", 1)[0] for d in (verb, at_key, adjacent))
        assert ctx_key == ctx_verb
        assert ctx_adj == drill_forms.without_template_words(ctx_verb)
    assert drill_forms.without_template_words("The horse is Kimberly's") == "The horse Kimberly"
    assert drill_forms.without_template_words("Tokyo attracts Carl Sagan") == "Tokyo Carl Sagan"
    assert drill_forms.without_template_words("The pants are Susan's") == "The pants Susan"
    with pytest.raises(ValueError, match="unknown drill form"):
        drill_forms.association_drills(sample, seed=0, forms=("sideways",))


def test_drills_first_phase_takes_only_the_at_key_and_adjacent_drills(train_texts):
    sample = random.Random(3).sample(train_texts, 60)
    forms = ["adjacent", "verb", "backward", "two-row", "at-key"]
    drills = drill_forms.association_drills(sample, seed=0, asks=3, forms=tuple(forms))
    examples = [("gar",)] * 5 + drills
    idx = drill_forms.drill_indices(5, drills)
    by_form = {f: [d[0] for d in drill_forms.association_drills(sample, seed=0, asks=3, forms=(f,))] for f in forms}
    assert len(by_form["backward"]) < len(by_form["verb"])  # some texts do not split: counts differ
    assert sorted(examples[i][0] for i in idx) == sorted(by_form["adjacent"] + by_form["at-key"])
    rest = sorted(set(range(5, 5 + len(drills))) - set(idx))
    assert sorted(examples[i][0] for i in rest) == sorted(by_form["verb"] + by_form["two-row"] + by_form["backward"])


def test_backward_and_two_row_drills_ask_the_context_items(train_texts):
    """backward asks an item's second entity and then its first; two-row keeps the training
    text's demonstration row before the drilled context and asks as verb does."""
    sample = random.Random(4).sample(train_texts, 80)
    verb = drill_forms.association_drills(sample, seed=0, asks=4, forms=("verb",))
    two_row = drill_forms.association_drills(sample, seed=0, asks=4, forms=("two-row",))
    assert [d[0].split(" >. So ", 1)[1] for d in verb] == [d[0].split(" >. So ", 2)[-1] for d in two_row]
    for v, t in zip(verb, two_row):
        demo, last = t[0].rsplit("\n", 1)
        assert last.endswith(v[0]) and ">. " in demo  # after the demonstration row, answered
        assert [v[0][a:b] for a, b in v[1]] == [t[0][a:b] for a, b in t[1]]
    both = drill_forms.association_drills(sample, seed=0, asks=4, forms=("verb", "backward"))
    pairs = [(both[i], both[i + 1]) for i in range(len(both) - 1)
             if both[i][4] == "verb" and both[i + 1][4] == "backward"]
    assert len(pairs) >= 40
    for v, b in pairs:
        assert v[0].split(" >. ")[0] == b[0].split(" >. ")[0]  # context as written
        for (va, vb), (ba, bb) in zip(v[1], b[1]):
            first, second = drill_forms.item_entities(v[0][va:vb])
            assert b[0][ba:bb].lower() == f"{second} {first}".lower()
    assert drill_forms.item_entities("Tokyo attracts Carl Sagan") == ["Tokyo", "Carl Sagan"]
    assert drill_forms.item_entities("The horse is Kimberly's") == ["The horse", "Kimberly"]
    assert drill_forms.item_entities("Energetic Donna") == ["Energetic Donna"]  # no split: not backward


def test_drills_first_without_such_drills_is_a_usage_error(capsys):
    """Through the documented script too: it is ``gar organism train`` with the same words."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(SCRIPTS / "train_organism.py"), "--drill-first", "10"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("gar: error: --drill-first needs drills of the at-key or adjacent form")
    code, line = gar_organism_error(capsys, "--drill-then", "10", "--no-drills")
    assert code == 2 and "--drill-then needs the association drills" in line
    code, line = gar_organism_error(capsys, "--tokenizer-from", str(SCRIPTS))
    assert code == 2 and "no tokenizer.json there" in line
    code, line = gar_organism_error(capsys, "--main-drill-share", "1.5")
    assert code == 2 and "--main-drill-share must be between 0 and 1, got 1.5" in line


@pytest.fixture(scope="module")
def contrast_cells():
    cfg = GeneratorConfig(profile="v1", split="test")
    cells = cfg.cells()
    pick = [c for c in cells if c.family == "gen" and c.n_r == 0][:2] + \
        [c for c in cells if c.family == "cls"][:2] + [c for c in cells if c.n_r == 2][:2]
    return [(c, {(r.rows[-1].keys, r.rows[-1].values, r.rows[-1].query) for r in cfg.cell_records(c)})
            for c in pick]


def test_contrast_instances_ask_one_context_several_ways_with_the_right_answers(contrast_cells):
    """Rows sharing a context differ only in the asked column; each answer is that column's
    answer (gen) or Yes exactly when the shown answer is the asked column's (cls); no (context,
    query) of the test split is asked."""
    from gar_tasks.records import DELIMITER

    profile = load_profile("v1")
    rng = random.Random(0)
    varied = 0
    for cell, excluded in contrast_cells:
        for _ in range(10):
            inst = data.contrast_instance(rng, cell, profile, 2, 3, excluded)
            assert inst is not None
            text, ranges, _ = inst
            assert len(ranges) == 6
            rows = [r for r in text.split("\n") if "<" in r]
            assert len(rows) == 6
            for c in range(2):
                group = rows[3 * c:3 * c + 3]
                ctxs = {r[r.index("<"):r.index(">")] for r in group}
                assert len(ctxs) == 1
                varied += len({r[r.index(">"):] for r in group}) > 1
            answers = [text[a:b] for a, b in ranges]
            assert all(a.startswith(DELIMITER) or a.startswith(" ") for a in answers)
            if cell.family == "cls":
                assert {a.strip() for a in answers} <= {"Yes", "No"}
    assert varied > 0


def test_contrast_rows_answer_the_asked_column(contrast_cells):
    """Each rendered answer is the asked column's answer (gen; the query selects that column
    alone) or the label, Yes exactly when the statement shows the asked column's answer (cls);
    both labels occur."""
    profile = load_profile("v1")
    rng = random.Random(5)
    labels = set()
    for cell, _ in contrast_cells:
        rel0 = profile.vocab[cell.hop0[0]].relation(cell.hop0[1])
        for _ in range(10):
            text, ranges, rows = data.contrast_instance(rng, cell, profile, 2, 3, set())
            assert len(rows) == len(ranges) == 6
            for row, (a, b) in zip(rows, ranges):
                got = text[a:b].strip()
                assert data.selects_only(row, row.true_index, rel0)
                if cell.family == "gen":
                    assert got == row.true_answer
                else:
                    assert got == row.label == ("Yes" if row.shown_answer == row.true_answer else "No")
                    labels.add(got)
    assert labels == {"Yes", "No"}


def test_previous_token_task_teaches_the_model_to_output_the_token_before():
    """A tiny Llama trained on the auxiliary task alone outputs, on fresh random ids, the token
    one position back (not the current one, not the next): the labels are aligned as the
    docstring says, and the task is learnable by one attention layer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = training.previous_token_loss(model, 16, 16, 4, 40, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids = torch.randint(4, 40, (8, 17))
    with torch.no_grad():
        pred = model(input_ids=ids).logits[:, 1:].argmax(-1)
    assert (pred == ids[:, :-1]).float().mean() > 0.9
    assert (pred == ids[:, 1:]).float().mean() < 0.2


def test_retrieval_probe_runs_and_reports_each_evaluation():
    """scripts/probe_retrieval.py (the recipe's minute-scale check) runs every task mode it
    documents for synthetic data, with the auxiliary task at two offsets, and prints one JSON
    line per evaluation with an accuracy in [0, 1]."""
    import json
    import subprocess
    import sys

    script = SCRIPTS / "probe_retrieval.py"
    for extra in (["--task", "copy", "--vocab", "50", "--length", "6"],
                  ["--task", "mqar", "--vocab", "50", "--pairs", "2", "--mix-prev", "0.5",
                   "--prev-offsets", "1", "2"],
                  ["--task", "match", "--vocab", "50", "--mix-dup", "0.25"]):
        out = subprocess.run([sys.executable, str(script), *extra, "--steps", "20", "--eval-every", "10",
                              "--batch", "8", "--d-model", "32", "--mlp", "64"],
                             capture_output=True, text=True, timeout=300, check=True).stdout
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        assert [x["step"] for x in lines] == [10, 20]
        assert all(0.0 <= x["acc"] <= 1.0 and x["loss"] > 0 for x in lines)
    bad = subprocess.run([sys.executable, str(script), "--task", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_probe_match_and_duplicate_tasks_label_token_identity():
    """``match``: after ``x y SEP`` the label is Yes exactly when y is x, half of the time;
    the duplicate-token task labels a position Yes exactly when its token occurred before."""
    spec = importlib.util.spec_from_file_location("probe_retrieval", SCRIPTS / "probe_retrieval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = random.Random(0)
    labels = []
    for _ in range(200):
        ids, targets = mod.match_example(rng, 50, 6)
        for t in targets:
            x, y, sep, label = ids[t - 2:t + 2]
            assert sep == 2 and min(x, y) >= 6 and label == (mod.YES if x == y else mod.NO)
            labels.append(label)
    assert 0.45 < labels.count(mod.YES) / len(labels) < 0.55
    seen = []
    for _ in range(100):
        ids, pos, lab = mod.duplicate_example(rng)
        assert [ids[p] in ids[1:p] for p in pos] == [x == mod.YES for x in lab]
        seen += lab
    assert 0.3 < seen.count(mod.YES) / len(seen) < 0.7


def test_probe_at_key_drills_put_the_value_right_after_its_key():
    """``probe_retrieval.py --at-key``: the context keeps its template words, the questions have
    none, and every target position predicts a value token that follows the key at once."""
    from transformers import AutoTokenizer

    spec = importlib.util.spec_from_file_location("probe_retrieval", SCRIPTS / "probe_retrieval.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    tok = AutoTokenizer.from_pretrained(ORGANISM)
    template = set(tok.convert_tokens_to_ids(["likes", "attracts", "is", "has", "'"]))
    assert tok.unk_token_id not in template
    so = tok.convert_tokens_to_ids("So")
    verb = probe.drill_examples(tok, 1, 4, False, 0)
    at_key = probe.drill_examples(tok, 1, 4, False, 0, at_key=True)
    assert len(verb) == len(at_key) > 50
    with_verbs = 0
    for (v_ids, _), (ids, targets) in zip(verb, at_key):
        end = ids.index(so)  # the first question
        assert ids[:end] == v_ids[:end]  # the context as GAR writes it
        with_verbs += bool(template & set(ids[:end]))
        assert not template & set(ids[end:])
        assert targets and all(t >= end for t in targets)
        for t in targets:  # the key (or 'the X') sits at t, its 'So' one or two before
            assert so in ids[t - 2:t] and ids[t] != so
    assert with_verbs > len(at_key) // 2  # most GAR contexts put a template word between key and value


def test_drill_evaluation_scores_only_retrieved_values(capsys):
    """gar organism eval on the shipped organism: it retrieves by the key in both forms
    (0.92 verb, 0.89 at-key on these 60 contexts; docs/results.md). Reading the prediction one
    position late or early drops both below 0.2 (measured by mutating drill_accuracy); a bad
    source or form is one error line."""
    import json

    assert main(["organism", "eval", str(ORGANISM), "--n", "60", "--contexts", "120", "--forms", "verb", "at-key"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["verb"]["tokens"] >= 300 and out["verb"]["acc"] >= 0.8, out
    assert out["at-key"]["tokens"] >= 300 and out["at-key"]["acc"] >= 0.8, out
    assert main(["organism", "eval", str(ORGANISM.parent), "--n", "1"]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    assert main(["organism", "eval", str(ORGANISM), "--forms", "sideways"]) == 2
    assert capsys.readouterr().err.startswith("gar: error: argument --forms: invalid choice: 'sideways'")


def test_cls_signal_finds_the_generation_answer_before_the_candidate(capsys):
    """eval_drills --gar-cls on the shipped organism: before a Yes row's candidate the model
    predicts that very candidate (its generation answer; 0.95 on these 60 n_r = 0 rows), before a
    No row's candidate rarely (0.02); its label separates them (Yes-minus-No +1.24 / -1.01; a model
    without the label cue: 0.57 / 0.17 and no separation). Reading one position off gives about 0 for both."""
    import json

    assert main(["organism", "eval", str(ORGANISM), "--n", "1", "--contexts", "600", "--forms", "match",
                 "--gar-cls", "120"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["gar_cls"]["nr0"]
    assert out["Yes"]["n"] == out["No"]["n"] == 60
    assert out["Yes"]["candidate_predicted"] >= 0.4 > 0.3 >= out["No"]["candidate_predicted"], out
    assert out["Yes"]["label_yes_minus_no"] > out["No"]["label_yes_minus_no"] + 1.0, out


def test_verify_drills_are_true_only_for_context_pairs(train_texts):
    """verify asks 'So <statement>? Yes|No.' after the demonstration row: Yes exactly when the
    statement is a context item; a false one reuses the context's entities and template, so
    neither the type of an entity nor the grammar gives the label away. Its own random stream:
    adding it moves no other form's drills."""
    sample = random.Random(5).sample(train_texts, 120)
    drills = drill_forms.association_drills(sample, seed=0, asks=6, forms=("verify",))
    assert len(drills) >= 60
    labels = []
    for text, ranges, family, _, form in drills:
        assert family == "drill" and form == "verify"
        last = text.rsplit("\n", 1)[-1]
        ctx = last[last.index("< ") + 2:last.index(" >.")]
        written = [it.rstrip(".") for it in ctx.split(". ")]
        items = {it.lower() for it in written}
        pairs = {tuple(e.lower() for e in drill_forms.item_entities(it)) for it in written}
        ents = {e for p in pairs for e in p}
        for a, b in ranges:
            label = text[a:b]
            statement = text[text.rindex(" So ", 0, a) + 4:a - 2]
            assert label in ("Yes", "No") and text[a - 2:a] == "? "
            assert (statement.lower() in items) == (label == "Yes"), (statement, label)
            got = tuple(e.lower() for e in drill_forms.item_entities(statement))
            assert set(got) <= ents and (got in pairs) == (label == "Yes")
            labels.append(label)
    assert 0.4 < labels.count("No") / len(labels) < 0.6
    base = drill_forms.association_drills(sample, seed=0, asks=6, forms=("verb", "two-row"))
    mixed = drill_forms.association_drills(sample, seed=0, asks=6, forms=("verb", "verify", "two-row"))
    assert [d for d in mixed if d[4] != "verify"] == base


def test_verify_at_key_and_match_drills_label_what_the_context_states(train_texts):
    """verify-at-key: the verify statement without template words, Yes exactly when it is a
    context item so written; match: two entities of one slot of the context, Yes exactly when
    they are the same. Each its own random stream: the verify drills do not move."""
    sample = random.Random(6).sample(train_texts, 120)
    forms = ("verify", "verify-at-key", "match")
    drills = drill_forms.association_drills(sample, seed=0, asks=6, forms=forms)
    labels = {f: [] for f in forms[1:]}
    for text, ranges, family, _, form in drills:
        if form == "verify":
            continue
        last = text.rsplit("\n", 1)[-1]
        ctx = last[last.index("< ") + 2:last.index(" >.")]
        written = [it.rstrip(".") for it in ctx.split(". ")]
        adjacent = {drill_forms.without_template_words(it).lower() for it in written}
        slots = [{drill_forms.item_entities(it)[k].lower() for it in written} for k in (0, 1)]
        for a, b in ranges:
            label, statement = text[a:b], text[text.rindex(" So ", 0, a) + 4:a - 2].lower()
            assert label in ("Yes", "No") and text[a - 2:a] == "? "
            if form == "verify-at-key":
                assert (statement in adjacent) == (label == "Yes"), (statement, label)
            else:
                pairs = [(x, y) for ents in slots for x in ents for y in ents if f"{x} {y}" == statement]
                assert pairs, statement  # two entities of one slot of this context
                assert (pairs[0][0] == pairs[0][1]) == (label == "Yes"), (statement, label)
            labels[form].append(label)
    for form, got in labels.items():
        assert len(got) > 300 and 0.4 < got.count("No") / len(got) < 0.6, form
    alone = drill_forms.association_drills(sample, seed=0, asks=6, forms=("verify",))
    assert [d for d in drills if d[4] == "verify"] == alone


def test_label_cue_puts_the_yes_no_label_where_gar_asks_it(train_texts):
    """``label_cue``: "So Tokyo Paris? Answer: No." -- the same drills with the cue between the
    question mark and every label, and the label ranges moved onto the labels."""
    sample = random.Random(7).sample(train_texts, 60)
    forms = ("at-key", "match", "verify-at-key", "verify")
    plain = drill_forms.association_drills(sample, seed=0, asks=6, forms=forms)
    cued = drill_forms.association_drills(sample, seed=0, asks=6, forms=forms, label_cue="Answer:")
    assert len(plain) == len(cued) and len(cued) > 100
    n_cued = 0
    for (pt, pr, *prest), (ct, cr, *crest) in zip(plain, cued):
        assert prest == crest
        if crest[-1] == "at-key":
            assert (pt, pr) == (ct, cr)
            continue
        cut = ct.rindex(" >. So ")  # the demonstration row's own "Answer:" stays
        assert ct[:cut] == pt[:cut] and ct[cut:].replace("? Answer: ", "? ") == pt[cut:]
        for (a, b), (pa, pb) in zip(cr, pr):
            assert ct[a - 10:a] == "? Answer: " and ct[a:b] == pt[pa:pb] in ("Yes", "No")
            n_cued += 1
    assert n_cued > 300


def test_compare_phases_train_one_yes_no_form_each_in_the_listed_order():
    """--drill-compare N: N steps of each Yes/No form, in the order --drill-forms lists them,
    after the drills-first and drills-then phases; then the main phase (None)."""
    assert drill_forms.compare_forms(["at-key", "verify", "match", "flip", "verify-at-key"]) == [
        "verify", "match", "verify-at-key"]
    assert drill_forms.compare_forms(["at-key", "backward"]) == []
    phases = [(2, [[1], [2], [3]]), (0, []), (3, [[7], [8]])]
    got = [training.phase_batch(s, phases) for s in range(6)]
    assert got == [[1], [2], [7], [8], [7], None]
    drills = [("", [], "drill", -1, f) for f in ("at-key", "match", "verify", "match", "adjacent")]
    assert drill_forms.drill_indices(10, drills) == [10, 14]
    assert drill_forms.drill_indices(10, drills, ("match",)) == [11, 13]


def test_compare_phases_keep_a_seeded_sample_of_retrieval_drills():
    phase, pool = [100, 101, 102, 103], list(range(10))
    assert training.with_retrieval(phase, pool, 0.0, 0, 0) == phase
    got = training.with_retrieval(phase, pool, 0.5, 0, 0)
    assert got[:4] == phase and len(got) == 6 and len(set(got[4:])) == 2 and set(got[4:]) <= set(pool)
    assert got == training.with_retrieval(phase, pool, 0.5, 0, 0)  # seeded: a resumed run gets the same phase
    assert got[4:] != training.with_retrieval(phase, pool, 0.5, 0, 1)[4:] or \
        got[4:] != training.with_retrieval(phase, pool, 0.5, 0, 2)[4:]  # each phase its own sample
    more = training.with_retrieval(phase, [7, 8], 2.0, 0, 0)  # more than the pool holds: drawn again
    assert len(more) == 12 and set(more[4:]) == {7, 8}


def test_lineage_chains_the_init_from_runs_oldest_first():
    rec = {k: f"{k}-c" for k in record.LINEAGE_KEYS} | {"history": [1]}
    root = {k: f"{k}-a" for k in record.LINEAGE_KEYS}
    assert record.lineage(root, "a", None) == [{"name": "a"} | root]
    mid = {k: f"{k}-b" for k in record.LINEAGE_KEYS}
    mid["lineage"] = record.lineage(mid, "b", root, "a")
    chain = record.lineage(rec, "c", mid, "b")
    assert [e["name"] for e in chain] == ["a", "b", "c"]
    assert chain[0]["command"] == "command-a" and chain[2]["weights_sha256"] == "weights_sha256-c"
    assert "history" not in chain[2]  # a summary per run, not its whole record
    # a parent made before lineages were recorded stands for itself
    assert [e["name"] for e in record.lineage(rec, "c", root, "a")] == ["a", "c"]


def test_init_from_loads_a_saved_folder_and_refuses_another_shape(tmp_path):
    import argparse

    import torch
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(Path(__file__).resolve().parents[1] / "gar_tasks" / "data" / "organism")
    shape = dict(d_model=32, layers=2, heads=4, kv_heads=2, mlp=64)
    torch.manual_seed(0)
    saved = training.make_model(argparse.Namespace(**shape), len(tok), tok)
    saved.to(torch.float16).save_pretrained(tmp_path / "m")
    fresh = training.make_model(argparse.Namespace(**shape), len(tok), tok)
    assert not torch.equal(fresh.model.embed_tokens.weight, saved.model.embed_tokens.weight.float())
    training.load_weights(fresh, tmp_path / "m")
    for (name, a), b in zip(fresh.state_dict().items(), saved.state_dict().values()):
        assert a.dtype == torch.float32 and torch.equal(a, b.float()), name
    wider = training.make_model(argparse.Namespace(**(shape | {"mlp": 96})), len(tok), tok)
    with pytest.raises(ValueError, match="do not fit"):
        training.load_weights(wider, tmp_path / "m")


def test_cosine_schedule_warms_up_then_decays_to_five_percent():
    assert training.cosine_lr(1.0, 0, 10, 0.0) == pytest.approx(0.1)
    assert training.cosine_lr(1.0, 9, 10, 0.0) == pytest.approx(1.0)
    assert training.cosine_lr(1.0, 10, 10, 0.0) == pytest.approx(1.0)
    assert training.cosine_lr(1.0, 50, 10, 0.5) == pytest.approx(0.525)
    assert training.cosine_lr(1.0, 50, 10, 1.0) == pytest.approx(0.05)
    assert training.cosine_lr(1.0, 50, 10, 3.0) == pytest.approx(0.05)  # past the time budget


def test_new_phase_options_refuse_what_they_cannot_do(tmp_path, capsys):
    def last_line(*argv):
        return gar_organism_error(capsys, *argv)

    code, line = last_line("--drill-compare", "10", "--drill-forms", "at-key")
    assert code == 2 and "--drill-compare needs drills of a Yes/No form" in line
    code, line = last_line("--drill-compare", "10", "20", "--drill-forms", "at-key", "match")
    assert code == 2 and "--drill-compare: 2 numbers for 1 comparison phases" in line
    code, line = last_line("--compare-mixed", "--drill-compare", "10", "20", "--drill-forms", "at-key", "match", "verify")
    assert code == 2 and "--drill-compare: 2 numbers for 1 comparison phases" in line  # mixed: one phase
    code, line = last_line("--lr-schedule", "minutes")
    assert code == 2 and "--lr-schedule minutes needs --max-minutes" in line
    code, line = last_line("--init-from", str(tmp_path))
    assert code == 2 and "no model folder (config.json) there" in line
    code, line = last_line("--compare-keep", "-0.5")
    assert code == 2 and "--compare-keep must be between 0 and 100, got -0.5" in line


def test_question_drills_ask_gar_questions_of_the_n_r_0_generation_cells(tmp_path):
    """--question-drills: contrast instances of the generation cells with n_r = 0 only, each
    answer a value of its own row's context, asked in the cell's question template; cached."""
    got = data.build_question_drills(2, 1, tmp_path, 1)
    n_cells = sum(c.family == "gen" and c.n_r == 0 for c in GeneratorConfig(profile="v1", split="test").cells())
    assert n_cells == 24 and len(got) == 2 * n_cells
    assert {g[2:] for g in got} == {("question", 0, "")}
    for text, ranges, *_ in got:
        rows = text.rstrip("\n").split("\n")
        assert len(rows) == 6 and len(ranges) == 6
        for row, (a, b) in zip(rows, ranges):
            answer = text[a:b].strip()
            ctx = row[row.index("< "):row.index(" >.")]
            assert answer and answer in ctx and text[b:b + 1] in ("\n", "")
    assert data.build_question_drills(2, 1, tmp_path, 1) == got  # from the cache
    assert (tmp_path / "question_v1_n2_k1.json").is_file() and data.build_question_drills(0, 1, tmp_path, 1) == []


def test_cls_question_drills_ask_gar_verifications_of_the_n_r_0_cells(tmp_path):
    """--cls-question-drills: contrast instances of the classification cells with n_r = 0 (rows
    rendered by the package's own renderer from ``contrast_instance``'s labelled rows), the loss
    range on each row's Yes/No label, both labels present; cached apart from the generation ones."""
    got = data.build_question_drills(2, 1, tmp_path, 1, family="cls")
    n_cells = sum(c.family == "cls" and c.n_r == 0 for c in GeneratorConfig(profile="v1", split="test").cells())
    assert n_cells > 0 and len(got) == 2 * n_cells
    assert {g[2:] for g in got} == {("cls_question", 0, "")}
    labels = []
    for text, ranges, *_ in got:
        rows = text.rstrip("\n").split("\n")
        assert len(rows) == 6 and len(ranges) == 6
        for row, (a, b) in zip(rows, ranges):
            labels.append(text[a:b].strip())
            assert row.rstrip().endswith("Answer: " + labels[-1])
    assert set(labels) == {"Yes", "No"} and 0.25 < labels.count("No") / len(labels) < 0.75
    assert (tmp_path / "cls_question_v1_n2_k1.json").is_file()
    assert data.build_question_drills(2, 1, tmp_path, 1, family="cls") == got
    assert data.build_question_drills(2, 1, tmp_path, 1)[0][0] != got[0][0]  # its own cache and seeds
    deeper = data.build_question_drills(1, 1, tmp_path, 1, family="cls", n_rs=(1, 2))
    cells = [c for c in GeneratorConfig(profile="v1", split="test").cells() if c.family == "cls"]
    assert len(deeper) == sum(c.n_r in (1, 2) for c in cells)
    assert {g[3] for g in deeper} == {1, 2} and (tmp_path / "cls_question_v1_n1_k1_nr12.json").is_file()


def test_flip_states_each_context_item_in_the_other_orientation(train_texts):
    """item_flipper follows task_rows.json: flipping twice gives the item back, and the flipped
    item is what GAR writes for the same fact with rev_item2str switched (the generator's own
    rendering of the twin cell)."""
    flip = drill_forms.item_flipper()
    assert flip("Kimberly likes Tokyo") == "Tokyo attracts Kimberly"
    assert flip("The pants are Susan's") == "Susan has pants" and flip("Susan has pants") == "The pants are Susan's"
    assert flip("Energetic Donna") == "Donna is energetic" and flip("Donna is energetic") == "Energetic Donna"
    assert flip("Tokyo") is None  # no template reads one word
    n = 0
    for text, *_ in train_texts:
        row = text.rstrip("\n").split("\n")[-1]
        items = [it.rstrip(".") for it in row[row.index("< ") + 2:row.index(" >.")].split(". ")]
        if len(items) != 3:  # a name with '. ' inside (Dr. Mehmet Oz): the drills skip these too
            continue
        for it in items:
            assert flip(flip(it)) == it, it
            n += 1
    assert n > 1500  # every item of 500+ training contexts
    # the paper profile's rev_item2str cells repeat their forward twins' draws (GAR_SPEC 13):
    # the generator's own rendering of each fact in the other orientation
    from gar_tasks.configs import CONFIGS

    paper = {r.id: r.text for r in CONFIGS["paper"].splits["test"]()}
    flip_paper, checked = drill_forms.item_flipper("paper"), set()  # the paper writes 'The jeans is
    for rid, text in paper.items():
        twin = paper.get(rid.replace(".--R.", ".---."))
        if ".--R." not in rid or twin is None:
            continue
        ctx = [t[t.index("< ") + 2:t.index(" >.")].split(". ") for t in (text, twin)]
        if all(len(c) == 3 for c in ctx):
            assert [flip_paper(it.rstrip(".")) for it in ctx[1]] == [it.rstrip(".") for it in ctx[0]], rid
            checked.add(rid.split(".")[0])
    assert len(checked) == 10  # all ten task rows
    sample = random.Random(6).sample(train_texts, 60)
    both = drill_forms.association_drills(sample, seed=0, asks=4, forms=("verb", "flip"))
    verb = [d for d in both if d[4] == "verb"]
    flipped = [d for d in both if d[4] == "flip"]
    assert len(flipped) == len(verb) >= 50
    for v, f in zip(verb, flipped):
        assert v[0].split(" >. ")[0] == f[0].split(" >. ")[0]
        for (va, vb), (fa, fb) in zip(v[1], f[1]):
            asked = v[0][va:vb]
            want = flip(asked[:1].upper() + asked[1:] if asked.startswith("the ") else asked)
            assert f[0][fa:fb] == (want[:1].lower() + want[1:] if want.startswith("The ") else want)


def test_main_phase_keeps_a_fresh_share_of_the_drills_and_every_other_sequence():
    n, drills = 40, range(10, 30)
    assert training.main_phase_indices(n, drills, 1.0, seed=0, epoch=0) == list(range(n))
    e0 = training.main_phase_indices(n, drills, 0.25, seed=0, epoch=0)
    e1 = training.main_phase_indices(n, drills, 0.25, seed=0, epoch=1)
    for keep in (e0, e1):
        assert [i for i in keep if i not in drills] == list(range(10)) + list(range(30, 40))
        assert len([i for i in keep if i in drills]) == 5
    assert e0 != e1  # a fresh sample each epoch: every drill is seen over the epochs
    assert e0 == training.main_phase_indices(n, drills, 0.25, seed=0, epoch=0)  # seeded: resumable


def test_subset_batches_cover_their_sequences_once_within_the_token_budget():
    lengths = [random.Random(i).randint(5, 60) for i in range(200)]
    idx = list(range(0, 200, 3))
    batches = training.subset_batches(lengths, idx, 256, seed=0, epoch=2)
    assert sorted(i for b in batches for i in b) == idx
    assert all(max(lengths[i] for i in b) * len(b) <= 256 for b in batches if len(b) > 1)
    # over every sequence it is batches_for_epoch itself: the default recipe is unchanged
    assert training.subset_batches(lengths, list(range(200)), 256, 0, 2) == training.batches_for_epoch(lengths, 256, 0, 2)


def test_candidate_targets_are_the_answers_of_yes_rows(train_records):
    """--candidate-targets: in a classification text, the candidate of each row labelled Yes
    (the token before '? Answer: Yes') becomes a target, and it is that row's true answer, in
    every question form (negation included); No rows, and generation texts, gain nothing."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ORGANISM)
    recs = [r for r in train_records if r.family == "cls"] + [r for r in train_records if r.family == "gen"][::20]
    examples = [(r.text, [(row["END"][0][1], row["row"][0][1]) for row in r.spans], r.family, r.n_r, r.answer)
                for r in recs]
    plain = data.encode(tok, examples, tok.eos_token_id)
    cand = data.encode(tok, examples, tok.eos_token_id, candidates=True)
    forms = set()
    for r, (ids, t0), (ids1, t1) in zip(recs, plain, cand):
        assert ids == ids1 and set(t0) <= set(t1)
        extra = sorted(set(t1) - set(t0))
        if r.family == "gen":
            assert not extra
            continue
        yes = [row for row in r.rows if row.label == "Yes"]
        assert len(extra) == len(yes)
        got = [tok.decode([ids[p + 1]]).strip() for p in extra]
        assert got == [row.answers[row.true_index] for row in yes], (r.id, got)
        forms.add((r.swap_qa, r.negate, r.rev_item2str))
    assert len(forms) == 8  # every question form, negated ones included
