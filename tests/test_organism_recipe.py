"""The organism's training recipe (scripts/train_organism.py) as data: one token per vocabulary
item, vocabulary facts phrased as GAR's own knowledge sub-questions, association drills that ask
back exactly the items of a training context. CI never retrains; these pin what the shipped
tokenizer and the recorded run were built from."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from gar_tasks.generate import GeneratorConfig
from gar_tasks.profiles import load_profile
from gar_tasks.subq import fact_templates

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_organism.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_organism", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def train_texts():
    recs = GeneratorConfig(profile="v1", split="train", n_per_task=1, seed=0).build()
    return [(r.text, None, r.family, r.n_r, r.answer) for r in recs]


def test_every_vocabulary_item_is_one_token_and_decodes_verbatim(recipe, train_texts):
    tok = recipe.build_tokenizer([t[0] for t in train_texts] + recipe.vocabulary_words("v1"),
                                 recipe.entity_tokens("v1"))
    items = recipe.vocabulary_items("v1")
    assert "Dr. Mehmet Oz" in recipe.entity_tokens("v1") and "Olot" not in recipe.entity_tokens("v1")
    for item in items:
        ids = tok(" " + item, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, item
        assert tok.decode(ids) == item
    # an item inside a longer word is not matched (word boundaries): 'Pau' is not split off 'Paul'
    assert tok.tokenize("Paul likes Olot.")[0] == "Paul"


def test_fact_sentences_state_every_vocabulary_fact_in_the_subquestion_phrasing(recipe):
    facts = recipe.fact_sentences("v1")
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


def test_association_drills_ask_back_exactly_the_context_items(recipe, train_texts):
    sample = random.Random(0).sample(train_texts, 60)
    drills = recipe.association_drills(sample, seed=0)
    assert len(drills) >= 50  # items with '. ' inside (Dr. Mehmet Oz) are skipped
    for text, ranges, family, *_ in drills:
        ctx, asked = text.split(" >. ", 1)
        items = {i.strip().rstrip(".") for i in ctx[2:].split(". ")}
        got = {text[a:b] for a, b in ranges}
        assert family == "drill" and len(ranges) == 3
        assert {g[:1].upper() + g[1:] if g.startswith("the ") else g for g in got} == items
        assert asked.count(" So ") + asked.startswith("So ") == 3
