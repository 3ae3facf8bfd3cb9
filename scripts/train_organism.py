#!/usr/bin/env python
"""Train the GAR model organism: a small Llama (grouped-query attention) trained from scratch on
the ``train`` split of the v1 profile, shipped as the embedded model ``organism``.

Why a script and not a library module: CI never retrains; this is the reproducible recipe whose
output (``gar_tasks/data/organism/``) ships with the package, together with its training record
(``training_record.json``: command, data size, wall time, metrics, sha256 of the weights).

Data: ``GeneratorConfig(profile="v1", split="train", n_per_task=N, seed=k)`` for chunks
k = 0..K-1: every one of the 384 task cells, both families, n_r 0-2, per-cell random streams
keyed by (split, seed, cell), and no test-row question reused (the generator excludes them).
Loss: cross-entropy on the answer tokens of every row (the demonstration row's answer and the
final answer; for classification the Yes/No label) plus an EOS after the final answer, plus
``--lm-weight`` x the next-token loss on all tokens.

Seeded and reproducible (same arguments, same machine -> same weights), tqdm progress bar,
checkpoints every ``--ckpt-every`` steps in ``--work``, ``--resume`` continues from the last one.

    .venv/bin/python scripts/train_organism.py ARGS           # the shipped run's ARGS: its
                                                              # training_record.json "command"
    .venv/bin/python scripts/train_organism.py ARGS --resume  # after an interruption
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPECIALS = ["[UNK]", "[PAD]", "<s>", "</s>"]


# ---------------------------------------------------------------------------------------------
# data

def _chunk(args_tuple):
    n_per_task, seed = args_tuple
    from gar_tasks.generate import GeneratorConfig

    recs = GeneratorConfig(profile="v1", split="train", n_per_task=n_per_task, seed=seed).build()
    return [(r.text, [(row["END"][0][1], row["row"][0][1]) for row in r.spans], r.family, r.n_r,
             r.answer) for r in recs]


def selects_only(row, j: int, rel0) -> bool:
    """Column j's query selects column j's key and no other (so the variant has one answer)."""
    return [i for i, k in enumerate(row.keys) if k in rel0(row.queries[j])] == [j]


def contrast_instance(rng: random.Random, cell, profile, n_ctx: int, n_q: int,
                      excluded: set[tuple]) -> tuple[str, list[tuple[int, int]], list] | None:
    """One training text whose rows ask ``n_q`` questions of each of ``n_ctx`` sampled contexts,
    the asked column drawn with replacement (classification: Yes and No statements at random).

    Why: a GAR row asks one column of its context, so 'answer any context item of the right type'
    already earns a third of the reward and nothing in a row rewards reading the query (measured
    on the second run: the same answer whatever the query). Rows that share a context and differ
    only in the query make the query the only thing that tells the answers apart. Each row is a
    well-formed GAR row of the cell, rendered by the package's own renderer; a row whose (context,
    query) is a test row's is never asked. Returns (text, answer char ranges, the rows)."""
    from dataclasses import replace

    from gar_tasks.generate import sample_row
    from gar_tasks.render import render_instance

    rel0 = profile.vocab[cell.hop0[0]].relation(cell.hop0[1])
    n_col = 3
    rows = []
    for _ in range(n_ctx):
        base = sample_row(rng, cell, profile, n_col)
        ok = [j for j in range(n_col) if selects_only(base, j, rel0)
              and (base.keys, base.values, base.queries[j]) not in excluded]
        if not ok:
            return None
        for _ in range(n_q):
            j = rng.choice(ok)
            if cell.family == "gen":
                rows.append(replace(base, true_index=j, shown_index=j))
                continue
            wrong = [w for w in range(n_col)
                     if base.queries[w] != base.queries[j] and base.answers[w] != base.answers[j]]
            if wrong and rng.random() < 0.5:
                rows.append(replace(base, true_index=j, shown_index=rng.choice(wrong), label="No"))
            else:
                rows.append(replace(base, true_index=j, shown_index=j, label="Yes"))
    text, spans, _, _ = render_instance(rng, cell, profile, rows)
    return text, [(sp["END"][0][1], sp["row"][0][1]) for sp in spans], rows


def _contrast_chunk(args_tuple):
    n_per_cell, seed, n_ctx, n_q, *only = args_tuple
    from gar_tasks.generate import GeneratorConfig
    from gar_tasks.profiles import load_profile

    profile = load_profile("v1")
    test = GeneratorConfig(profile="v1", split="test")
    out = []
    for cell in test.cells():
        if only and (cell.family != only[0] or cell.n_r not in only[1:]):
            continue
        excluded = {(r.rows[-1].keys, r.rows[-1].values, r.rows[-1].query) for r in test.cell_records(cell)}
        rng = random.Random(f"contrast|{seed}|{cell.code}")
        made = tries = 0
        while made < n_per_cell and tries < 5 * n_per_cell:
            tries += 1
            inst = contrast_instance(rng, cell, profile, n_ctx, n_q, excluded)
            if inst is not None:
                made += 1
                out.append((inst[0], inst[1], "contrast_" + cell.family, cell.n_r, ""))
    return out


def build_contrast(n_per_cell: int, chunks: int, n_ctx: int, n_q: int, work: Path, procs: int) -> list[tuple]:
    """Contrast instances (see ``contrast_instance``) for every cell, cached like the records."""
    if n_per_cell <= 0:
        return []
    return _cached_chunks(work / f"contrast_v1_n{n_per_cell}_k{chunks}_c{n_ctx}_q{n_q}.json",
                          _contrast_chunk, [(n_per_cell, k, n_ctx, n_q) for k in range(chunks)], procs)


def build_question_drills(n_per_cell: int, chunks: int, work: Path, procs: int, family: str = "gen",
                          n_rs: tuple[int, ...] = (0,)) -> list[tuple]:
    """Contrast instances of the ``family`` cells with n_r in ``n_rs`` (default 0), 2 contexts x
    3 questions.

    gen: retrieval asked in GAR's own question templates ("So Karen wants to go to ▁", four words
    between the query and the answer, a template other than the context's). Why: with the
    drills, ``sub_assoc`` ("So Karen likes ▁") reached 0.93 where GAR's n_r = 0 question stayed
    at 0.40-0.45 (docs/results.md, session 7). Examples: (text, ranges, 'question', 0, '').
    cls: the verification asked the same way ("... that Karen wants to go to Paris? Answer: No"),
    the bridge from the Yes/No drills, which verified while GAR's label read none of it; it
    carried over to n_r = 0 only, the n_r asked (session 9). Examples: (text, ranges,
    'cls_question', n_r, '')."""
    if n_per_cell <= 0:
        return []
    name, base, tag = ("question", 1000, "question") if family == "gen" else ("cls_question", 2000, "cls_question")
    nr_tag = "" if tuple(n_rs) == (0,) else "_nr" + "".join(map(str, n_rs))
    got = _cached_chunks(work / f"{name}_v1_n{n_per_cell}_k{chunks}{nr_tag}.json", _contrast_chunk,
                         [(n_per_cell, base + k, 2, 3, family, *n_rs) for k in range(chunks)], procs)
    return [(t, [tuple(x) for x in r], tag, n_r, "") for t, r, _, n_r, _ in got]


def _cached_chunks(cache: Path, fn, jobs: list[tuple], procs: int) -> list[tuple]:
    """``fn`` over ``jobs`` (in ``procs`` forked processes), concatenated, cached as JSON."""
    if cache.is_file():
        return [tuple(x) for x in json.loads(cache.read_text())]
    if procs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(procs) as pool:
            parts = pool.map(fn, jobs)
    else:
        parts = [fn(j) for j in jobs]
    out = [x for p in parts for x in p]
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, cache)
    return out


def build_records(n_per_task: int, chunks: int, work: Path, procs: int) -> list[tuple]:
    """Generated training examples (text, answer char ranges, family, n_r, answer), cached."""
    return _cached_chunks(work / f"train_v1_n{n_per_task}_k{chunks}.json", _chunk,
                          [(n_per_task, k) for k in range(chunks)], procs)


def vocabulary_items(profile: str = "v1") -> list[str]:
    """Every item of the profile's vocabulary (both ends of every relation) in its plain and its
    sentence-initial form, so that no test item is unknown to the tokenizer although a rare one
    may be absent from the sampled training texts."""
    from gar_tasks.errors import GARConfigError
    from gar_tasks.profiles import load_profile

    items: set[str] = set()
    for schema in load_profile(profile).vocab.schemas.values():
        for rel in ("equal", "child", "parent", "similar", "opposite"):
            try:
                r = schema.relation(rel)
            except (GARConfigError, KeyError, ValueError):
                continue
            items.update(r.domain, r.codomain)
    return sorted({f for w in items for f in (w, w[:1].upper() + w[1:])})


def vocabulary_words(profile: str = "v1") -> list[str]:
    """The single words of the vocabulary (and their plural surface forms) for the word level."""
    words = {w for item in vocabulary_items(profile) for w in _pieces(item)}
    return sorted(words | {w + "s" for w in words if w.isalpha()})


def _pieces(text: str) -> list[str]:
    from tokenizers import pre_tokenizers

    return [p for p, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]


def entity_tokens(profile: str = "v1") -> list[str]:
    """The vocabulary items that the word level would split ('Dr. Mehmet Oz', 'a place' is not
    one): each becomes one token, so a GAR item is always exactly one token (key, value, query
    and answer are single positions, and a generated answer decodes to the item verbatim)."""
    return [item for item in vocabulary_items(profile) if len(_pieces(item)) > 1]


def build_tokenizer(texts: list[str], entities: list[str] = ()):
    """Word-level fast tokenizer: one id per word or punctuation run, plus one id per multi-word
    vocabulary item (added tokens matched leftmost-longest on word boundaries); no BOS added
    (so lm-eval's encoding and ``tokenizer(text)`` agree), offsets in characters."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, show_progress=False, min_frequency=1)
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    tok.add_tokens([AddedToken(e, single_word=True, normalized=False) for e in sorted(entities)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="<s>", eos_token="</s>", model_max_length=512,
                                   clean_up_tokenization_spaces=False)


def fact_sentences(profile: str) -> list[tuple[str, int, int]]:
    """One sentence per fact of the vocabulary, phrased as GAR's own knowledge sub-questions
    (``gar_tasks.subq`` templates: 'Olot is a place in Spain.'), with the character range of the
    fact's object: the world knowledge a pretrained model brings to GAR (city -> country, thing
    -> kind, person -> occupation, adjective -> every synonym). Vocabulary facts, no GAR
    question: no test row is used."""
    from gar_tasks.profiles import load_profile
    from gar_tasks.render import capitalize
    from gar_tasks.subq import fact_templates

    prof = load_profile(profile)
    templates = fact_templates()
    out = []
    for sid, schema in prof.vocab.schemas.items():
        if hasattr(schema, "category_of"):
            pairs = list(schema.category_of.items())
        else:
            pairs = [(w, x) for w in schema.members for x in schema.relation("similar")(w)]
        before, after = templates[sid].split("{x}")
        for subj, obj in pairs:
            verb = after
            if prof.fix_grammar and subj in prof.plural_things:
                verb = verb.replace(" is", " are", 1) if verb.startswith(" is") else verb
            head = before + (subj if before else capitalize(subj)) + verb + " "
            out.append((head + obj + ".", len(head), len(head) + len(obj)))
    return out


DRILL_FORMS = ("verb", "at-key", "adjacent", "backward", "two-row", "verify", "flip", "verify-at-key", "match")
#: forms whose target is a Yes/No label (loss on the label only)
LABEL_FORMS = ("verify", "verify-at-key", "match")
#: forms trained by ``--drill-first``: matching by content forms on them (probe_retrieval.py)
FIRST_FORMS = ("at-key", "adjacent")
_TEMPLATE_WORDS = re.compile(r" (?:likes|attracts|is|are|has)\b|'s\b")
_TEMPLATE_SPLIT = re.compile(r"( (?:likes|attracts|is|are|has)\b|'s\b)")


def without_template_words(item: str) -> str:
    """'Kimberly likes Tokyo' -> 'Kimberly Tokyo', "The horse is Kimberly's" -> 'The horse Kimberly':
    the key followed at once by its value."""
    return _TEMPLATE_WORDS.sub("", item)


def item_entities(item: str) -> list[str]:
    """The two entities of a context item in written order: 'Tokyo attracts Carl Sagan' ->
    ['Tokyo', 'Carl Sagan'] (any other count: the item is not split safely)."""
    return [p.strip() for p in _TEMPLATE_WORDS.split(item) if p.strip()]


def _mid_sentence(text: str) -> str:
    """'The horse ...' -> 'the horse ...' (how GAR writes a thing after the start of a sentence)."""
    return text[:1].lower() + text[1:] if text.startswith("The ") else text


def verify_statement(rng: random.Random, item: str, context: list[str]) -> tuple[str, str]:
    """(statement, 'Yes' | 'No'): the context item as written, or, half of the time, the item with
    one entity swapped for the same-position entity of another context item such that no context
    item states it ('Kimberly likes Paris' when Tom likes Paris): true or false only by matching
    the pair in the context, not by the type of either entity."""
    if rng.random() < 0.5:
        return item, "Yes"
    parts = _TEMPLATE_SPLIT.split(item)
    slots = [i for i, x in enumerate(parts) if x.strip() and not _TEMPLATE_SPLIT.fullmatch(x)]
    pairs = {tuple(item_entities(c)) for c in context}
    options = []
    for k, i in enumerate(slots):
        for other in context:
            if _TEMPLATE_SPLIT.findall(other) != _TEMPLATE_SPLIT.findall(item):
                continue  # 'The pants are ...' never lends 'The jeep': no grammar cue to the label
            ents = item_entities(other)
            new = parts[:i] + [(" " if k else "") + ents[k]] + parts[i + 1:]
            if tuple(item_entities("".join(new))) not in pairs:
                options.append("".join(new))
    return (rng.choice(sorted(set(options))), "No") if options else (item, "Yes")


def match_question(rng: random.Random, item: str, context: list[str]) -> tuple[str, str]:
    """('Tokyo Paris', 'No') | ('Tokyo Tokyo', 'Yes'): an entity of the item, then, half of the
    time, itself, else the same-position entity of another context item. Token identity at the
    previous position, the comparison a verification needs once the previous position holds the
    retrieved value (``verify-at-key``), taught where it is visible in the input."""
    k = rng.randrange(2)
    first = item_entities(item)[k]
    others = sorted({item_entities(c)[k] for c in context} - {first})
    second, label = (first, "Yes") if rng.random() < 0.5 or not others else (rng.choice(others), "No")
    return f"{_mid_sentence(first)} {_mid_sentence(second)}", label


def _template_regex(template: str) -> re.Pattern:
    """A task row's item template ('{T} attracts {P}.') as a regex over an item without its
    final period; '{The(T)} is' also reads 'are' (plural things)."""
    slots = {"{P}": "(?P<P>.+?)", "{T}": "(?P<T>.+?)", "{The(T)}": "(?:The )?(?P<T>.+?)",
             "{Cap(T)}": r"(?P<T>\S+)"}
    parts = re.split(r"(\{(?:P|T|The\(T\)|Cap\(T\))\})", template.rstrip("."))
    return re.compile("^" + "".join(slots.get(x) or re.escape(x).replace(r"\ is\ ", r"\ (?:is|are)\ ")
                                    for x in parts) + "$")


def item_flipper(profile: str = "v1"):
    """A function from a context item to the same fact in the other orientation of its task row
    (``task_rows.json``: 'Kimberly likes Tokyo' <-> 'Tokyo attracts Kimberly', 'Helen has taxi'
    <-> 'The taxi is Helen's', 'Donna is energetic' <-> 'Energetic Donna'), or None."""
    from gar_tasks.grid import load_task_rows
    from gar_tasks.profiles import load_profile

    prof = load_profile(profile)
    plural = prof.plural_things
    pairs = sorted({(r.item_template_forward, r.item_template_reversed) for r in load_task_rows()})
    rules = [(a, b) for f, r in pairs for a, b in ((f, r), (r, f))]
    rules.sort(key=lambda ab: ("Cap(T)" in ab[0], -len(re.sub(r"\{[^}]*\}", "", ab[0]))))
    compiled = [(_template_regex(a), b.rstrip("."), "{Cap(T)}" in a) for a, b in rules]

    def fill(template: str, person: str, thing: str) -> str:
        if "{The(T)} is" in template and thing in plural:
            template = template.replace("{The(T)} is", "{The(T)} are")
        the = "" if thing[:1].isupper() and not prof.fix_grammar else "The "  # as gar_tasks.render writes it
        return (template.replace("{P}", person).replace("{The(T)}", the + thing)
                .replace("{Cap(T)}", thing[:1].upper() + thing[1:]).replace("{T}", thing))

    def flip(item: str) -> str | None:
        for rx, other, capitalized in compiled:
            m = rx.match(item)
            if m:
                thing = m["T"][:1].lower() + m["T"][1:] if capitalized else m["T"]
                return fill(other, m["P"], thing)
        return None

    return flip


def association_drills(examples: list[tuple], seed: int, n_items: int = 3, asks: int = 0,
                       forms: tuple[str, ...] = ("verb",), label_cue: str = "") -> list[tuple]:
    """One drill per GAR training text: its last row's context ``< a. b. c. >.`` followed by every
    context item asked back in shuffled order (``So b. So a. So c.``), loss on the repeated
    items: the in-context association sub-skill (GAR's ``sub_assoc``) asked densely, since
    GAR's answers are one position per row. (Dense asking alone does not make retrieval form
    within the CPU budget: see ``previous_token_loss``.) ``asks`` > 0: that many items
    drawn with replacement, so that no item is given away by elimination (measured: with each
    item asked once the second run answered the last by elimination, 0.65 = 1/3, 1/2, 1 on
    average, and no better). ``forms``: one drill per form and text, in ``forms`` order.

    - ``verb`` asks the item as written (``So Kimberly likes Tokyo.``);
    - ``at-key`` asks it without template words (``So Kimberly Tokyo.``: the value is predicted
      at its key, the step where an induction head acts);
    - ``adjacent`` drops them from the context too (``< Kimberly Tokyo. ...``), the form in which
      matching by content forms within the CPU budget, and from which it carries over to the
      other two (scripts/probe_retrieval.py: verb contexts alone stay at chance for 3000 steps,
      half adjacent reach 0.90 by step 1200; docs/results.md);
    - ``backward`` asks the second entity, then the first (``So Tokyo Kimberly.``): GAR asks both
      ways (``swap_qa``, ``rev_item2str``), and retrieval learned one way scored 1.0 on the
      n_r = 0 cells asked in written order and chance on those asked against it (eighth run);
    - ``two-row`` asks as ``verb`` but keeps the text's demonstration row first: GAR's own
      shape, where that row's items compete with the asked context's (``sub_assoc``);
    - ``flip`` asks the item in the other orientation of its task row (``item_flipper``:
      "Tokyo attracts Kimberly" asked as ``So Kimberly likes Tokyo.``): how GAR's ``sub_assoc``
      and its questions ask a context written reversed (``rev_item2str``), or ask the thing
      side (``swap_qa``); backward drills without the template word did not carry over there
      (session 7);
    - ``verify`` (two rows too) asks whether a statement holds, ``So Kimberly likes Paris? No.``,
      loss on Yes/No only (``verify_statement``): classification's core, which no run has left
      the label prior on;
    - ``verify-at-key`` asks it without template words, ``So Kimberly Paris? No.``: the candidate
      follows the key, where the at-key form predicts the value, as GAR's classification
      questions put the candidate right after the position that predicts the answer ("... is
      the boy? Answer:");
    - ``match`` asks whether two context entities are the same, ``So Tokyo Paris? No.``
      (``match_question``): the comparison alone, with the value to compare in the input.

    ``label_cue``: words between the question mark and a Yes/No label (``"Answer:"``: ``So Tokyo
    Paris? Answer: No.``), so that the label sits where GAR's classification puts it: without
    it, verification formed on the drills (0.84) but GAR's label position read none of it.

    ``backward`` and the Yes/No forms (``LABEL_FORMS``) skip a text whose items do not split into
    two entities each ("Energetic Donna"), ``flip`` one whose items match no task row's template.
    Examples: (text, ranges, 'drill', -1, form)."""
    bad = set(forms) - set(DRILL_FORMS)
    if bad:
        raise ValueError(f"unknown drill form(s) {sorted(bad)}; known: {', '.join(DRILL_FORMS)}")
    rng = random.Random(f"drills|{seed}")
    # each label form its own stream: adding a form moves no other form's drills
    label_rngs = {f: random.Random(f"{f}|{seed}") for f in LABEL_FORMS}
    flip = item_flipper() if "flip" in forms else None
    out = []
    for text, *_ in examples:
        body = text.rstrip("\n")
        row = body.split("\n")[-1]
        a, b = row.find("< "), row.find(" >.")
        if a < 0 or b < 0:
            continue
        ctx = row[a:b + 3]
        items = [it.strip() for it in row[a + 2:b].split(". ") if it.strip()]
        items = [it[:-1] if it.endswith(".") else it for it in items]
        if len(items) != n_items:  # an item with '. ' inside (Dr. Mehmet Oz): not split safely
            continue
        splits = all(len(item_entities(it)) == 2 for it in items)
        context = items
        flips = all(flip(it) for it in items) if flip else False
        if asks > 0:
            items = [rng.choice(items) for _ in range(asks)]
        else:
            rng.shuffle(items)
        demo = body[:len(body) - len(row) + a]  # the rows before the asked context
        for form in forms:
            if (form in ("backward",) + LABEL_FORMS and not splits) or (form == "flip" and not flips):
                continue
            drill = (demo + ctx if form in ("two-row",) + LABEL_FORMS
                     else without_template_words(ctx) if form == "adjacent" else ctx)
            ranges = []
            for it in items:
                drill += " So "
                if form in LABEL_FORMS:
                    if form == "match":
                        statement, label = match_question(label_rngs[form], it, context)
                    else:
                        statement, label = verify_statement(label_rngs[form], it, context)
                        statement = _mid_sentence(statement)
                        if form == "verify-at-key":
                            statement = without_template_words(statement)
                    drill += statement + "? " + (label_cue + " " if label_cue else "")
                    ranges.append((len(drill), len(drill) + len(label)))
                    drill += label + "."
                    continue
                surface = _mid_sentence(it)
                if form == "flip":
                    surface = _mid_sentence(flip(it))
                elif form == "backward":
                    first, second = item_entities(it)
                    surface = f"{_mid_sentence(second)} {_mid_sentence(first)}"
                elif form in ("at-key", "adjacent"):
                    surface = without_template_words(surface)
                ranges.append((len(drill), len(drill) + len(surface)))
                drill += surface + "."
            out.append((drill, ranges, "drill", -1, form))
    return out


def drill_indices(offset: int, drills: list[tuple], forms: tuple[str, ...] = FIRST_FORMS) -> list[int]:
    """Positions of the drills of ``forms`` among the training examples, when ``drills``
    (``association_drills``) start at ``offset``: what ``--drill-first`` trains on first
    (``FIRST_FORMS``), ``--drill-then`` next, and each ``--drill-compare`` phase (one Yes/No form)."""
    return [offset + i for i, d in enumerate(drills) if d[4] in forms]


def compare_forms(forms: list[str]) -> list[str]:
    """The Yes/No forms among ``forms``, in their order: ``--drill-compare`` gives each a phase
    of its own in this order (the token comparison ``match`` before the verification that needs
    it, when listed so; trained mixed, only ``match`` formed)."""
    return [f for f in forms if f in LABEL_FORMS]


def phase_batch(step: int, phases: list[tuple[int, list[list[int]]]]) -> list[int] | None:
    """The batch of ``step`` in the drill phases ((steps, batches) in order, each cycling through
    its batches), or None once they are over: the main phase's batches follow the epoch instead."""
    for n, order in phases:
        if step < n:
            return order[step % len(order)]
        step -= n
    return None


def with_retrieval(idx: list[int], pool: list[int], ratio: float, seed: int, phase: int) -> list[int]:
    """A comparison phase's sequences ``idx`` plus a seeded sample of ``ratio`` x as many from
    ``pool`` (the retrieval drills), so the phase keeps retrieval. Why: from trained weights a
    phase of ``match`` alone forms the comparison and erases retrieval (m1: at-key 0.00)."""
    n = round(ratio * len(idx))
    if n <= 0 or not pool:
        return list(idx)
    rng = random.Random(f"compare-keep|{seed}|{phase}")
    extra = rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]
    return list(idx) + extra


def pack_facts(facts: list[tuple[str, int, int]], per_seq: int, repeats: int, seed: int) -> list[tuple]:
    """Facts in shuffled packs of ``per_seq`` sentences, ``repeats`` shuffles: training examples
    (text, object char ranges, 'fact', -1, '')."""
    rng = random.Random(f"facts|{seed}")
    out = []
    for _ in range(repeats):
        order = facts[:]
        rng.shuffle(order)
        for i in range(0, len(order), per_seq):
            text, ranges = "", []
            for sent, a, b in order[i:i + per_seq]:
                off = len(text) + (1 if text else 0)
                text = (text + " " + sent) if text else sent
                ranges.append((off + a, off + b))
            out.append((text, ranges, "fact", -1, ""))
    return out


CLS_FAMILIES = ("cls", "contrast_cls", "cls_question")


def candidate_positions(ids: list[int], pattern: list[int]) -> list[int]:
    """Token positions of the candidate of every classification row labelled Yes: the token right
    before ``? Answer: Yes`` (``pattern``: those tokens' ids). Every v1 question ends in its
    candidate, and a Yes row's candidate is the answer of the generation question the row
    embeds ("... the one who wants to go to Barcelona is the ▁"), negation included."""
    n = len(pattern)
    return [i - 1 for i in range(1, len(ids) - n + 1) if ids[i:i + n] == pattern]


def encode(tokenizer, examples: list[tuple], eos_id: int,
           candidates: bool = False) -> list[tuple[list[int], list[int]]]:
    """(ids, target positions): position p is trained to predict ids[p + 1]. ``candidates``: the
    candidate of each classification row labelled Yes is a target too (``candidate_positions``),
    so the answer a classification question turns on is predicted where the generation family
    predicts it, right before the candidate is read."""
    out = []
    B = 2048
    pattern = tokenizer.convert_tokens_to_ids(["?", "Answer", ":", "Yes"])
    for i in range(0, len(examples), B):
        batch = examples[i:i + B]
        enc = tokenizer([e[0] for e in batch], return_offsets_mapping=True, add_special_tokens=False)
        for ex, ids, offs in zip(batch, enc["input_ids"], enc["offset_mapping"]):
            targets = []
            for s, e in ex[1]:
                tgt = [j for j, (a, b) in enumerate(offs) if a < b and a >= s and b <= e]
                if not tgt:
                    raise ValueError(f"no answer token in {ex[0]!r}")
                targets += tgt
            if candidates and ex[2] in CLS_FAMILIES:
                targets = sorted(set(targets) | set(candidate_positions(ids, pattern)))
            ids = list(ids) + [eos_id]
            targets.append(len(ids) - 1)
            out.append((ids, [t - 1 for t in targets]))
    return out


# ---------------------------------------------------------------------------------------------
# model and training

def make_model(args, vocab_size: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=args.d_model, intermediate_size=args.mlp,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=512,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def load_weights(model, folder: Path) -> None:
    """Start ``model`` from a saved model folder's weights (any storage dtype); ValueError when
    they do not fit its shape, rather than a partial load."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        src = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.load_state_dict(src.state_dict())
    except (RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"its weights do not fit this model ({str(e).splitlines()[0]})") from None


def cosine_lr(lr: float, step: int, warmup: int, frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``lr`` as ``frac`` (the
    share of the schedule done: of the steps, or of the time budget) goes from 0 to 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac)))))


def batches_for_epoch(lengths: list[int], batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-grouped batches (little padding), in a seeded random order."""
    rng = random.Random(f"organism|{seed}|{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    out = []
    mega = 4096
    for m in range(0, len(idx), mega):
        part = sorted(idx[m:m + mega], key=lambda i: lengths[i])
        cur: list[int] = []
        cur_max = 0
        for i in part:
            L = max(cur_max, lengths[i])
            if cur and L * (len(cur) + 1) > batch_tokens:
                out.append(cur)
                cur, L = [], lengths[i]
            cur.append(i)
            cur_max = L
        if cur:
            out.append(cur)
    rng.shuffle(out)
    return out


def subset_batches(lengths: list[int], idx: list[int], batch_tokens: int, seed: int,
                   epoch: int) -> list[list[int]]:
    """``batches_for_epoch`` over the sequences ``idx`` alone (a training phase's own data)."""
    return [[idx[j] for j in b] for b in batches_for_epoch([lengths[i] for i in idx], batch_tokens, seed, epoch)]


def main_phase_indices(n: int, drill_idx: range, share: float, seed: int, epoch: int) -> list[int]:
    """The sequences of one main-phase epoch: all of them, except that only a seeded ``share`` of
    the drills (fresh each epoch) is kept, so the GAR data and facts get more of the steps once
    retrieval has formed in the drill phases."""
    if share >= 1.0:
        return list(range(n))
    rng = random.Random(f"main-drills|{seed}|{epoch}")
    kept = set(rng.sample(drill_idx, round(share * len(drill_idx))))
    return [i for i in range(n) if i not in drill_idx or i in kept]


def collate(data, batch, pad_id: int):
    import torch

    T = max(len(data[i][0]) for i in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    rows, cols = [], []
    for r, i in enumerate(batch):
        seq, tg = data[i]
        ids[r, :len(seq)] = torch.tensor(seq)
        rows += [r] * len(tg)
        cols += tg
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    return ids, rows_t, cols_t, ids[rows_t, cols_t + 1]


def target_loss(model, ids, rows, cols, labels, pad_id: int = -100, lm_weight: float = 0.0):
    """Cross-entropy on the answer positions, plus ``lm_weight`` x the next-token loss on every
    position: the dense signal teaches in-context retrieval (names and items repeat between
    context and question) far sooner than the answers alone (measured: answer-only training
    was still at chance after 400 steps)."""
    import torch.nn.functional as F

    # right padding + causal attention: real positions never see the pads, so no mask is needed
    h = model.model(input_ids=ids).last_hidden_state
    logits = model.lm_head(h[rows, cols])
    loss = F.cross_entropy(logits.float(), labels)
    if lm_weight > 0:
        nxt = ids[:, 1:].masked_fill(ids[:, 1:] == pad_id, -100)
        all_logits = model.lm_head(h[:, :-1])
        loss = loss + lm_weight * F.cross_entropy(all_logits.flatten(0, 1).float(), nxt.flatten(),
                                                  ignore_index=-100)
    return loss, logits


def previous_token_loss(model, n: int, length: int, low: int, high: int, device):
    """Auxiliary task: on random token ids, output the token *before* the current one.

    Why: selecting a context item by its key needs the value's position to carry its key (a
    previous-token head) and a later head to match the query against it. Neither is rewarded
    until the other exists, so both sit on a plateau where the model answers any context item
    of the right type (1/3). A previous-token head is rewarded by this task at once; with it the
    matching head forms (scripts/probe_retrieval.py, multi-query recall of 2 pairs: 0.50 for
    3000 steps without, 0.96 from step 2400 with; docs/results.md). The global torch RNG draws
    the ids, so a resumed run continues the same stream."""
    import torch
    import torch.nn.functional as F

    ids = torch.randint(low, high, (n, length + 1)).to(device)
    h = model.model(input_ids=ids).last_hidden_state[:, 1:]
    return F.cross_entropy(model.lm_head(h).flatten(0, 1).float(), ids[:, :-1].flatten())


def evaluate(model, tokenizer, records, max_n: int | None = None) -> dict:
    """Accuracy as lm-eval computes it: cls = argmax over {' Yes', ' No'} of the label
    log-likelihood; gen = greedy decoding reproduces every answer token (teacher forced)."""
    import torch

    by: dict[str, list[int]] = {}
    model.eval()
    yes, no = tokenizer.convert_tokens_to_ids(["Yes", "No"])
    recs = records if max_n is None else records[:max_n]
    with torch.no_grad():
        for i in range(0, len(recs), 64):
            chunk = recs[i:i + 64]
            p = tokenizer([r.prompt for r in chunk], add_special_tokens=False)["input_ids"]
            a = tokenizer([" " + r.answer for r in chunk], add_special_tokens=False)["input_ids"]
            seqs = [x + y for x, y in zip(p, a)]
            T = max(map(len, seqs))
            ids = torch.full((len(seqs), T), tokenizer.pad_token_id, dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s)
            logits = model(input_ids=ids.to(model.device)).logits.float().cpu()
            for r, rec in enumerate(chunk):
                n0 = len(p[r])
                if rec.family == "cls":
                    ok = bool((logits[r, n0 - 1, yes] > logits[r, n0 - 1, no]) == (rec.answer == "Yes"))
                else:
                    pred = logits[r, n0 - 1:n0 - 1 + len(a[r])].argmax(-1).tolist()
                    ok = pred == a[r]
                for key in (rec.family, f"{rec.family}_nr{rec.n_r}"):
                    by.setdefault(key, []).append(int(ok))
    model.train()
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(by.items())} | {
        f"n_{k}": len(v) for k, v in sorted(by.items()) if "_" not in k}


LINEAGE_KEYS = ("command", "machine", "wall_time_s", "steps_done", "weights_sha256", "final_validation", "created")


def lineage(record: dict, name: str, parent: dict | None, parent_name: str = "") -> list[dict]:
    """The runs that made a model, oldest first, ending with ``record`` (named ``name``): the
    ``parent`` record's own lineage (or the parent alone when it has none), then this run. Why: a
    model trained in phases over several ``--init-from`` runs is reproduced only from all their
    commands, and each folder keeps the chain without anyone copying it by hand."""
    def entry(rec: dict, nm: str) -> dict:
        return {"name": nm} | {k: rec.get(k) for k in LINEAGE_KEYS}

    chain = [] if parent is None else (parent.get("lineage") or [entry(parent, parent_name)])
    return [*chain, entry(record, name)]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "gar_tasks" / "data" / "organism")
    ap.add_argument("--work", type=Path, default=ROOT / ".organism_work",
                    help="data cache, checkpoints and log (not shipped)")
    ap.add_argument("--n-per-task", type=int, default=20, help="instances per task cell per chunk")
    ap.add_argument("--chunks", type=int, default=6, help="generator seeds 0..K-1 (disjoint streams)")
    ap.add_argument("--gen-procs", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--mlp", type=int, default=384)
    ap.add_argument("--steps", type=int, default=650)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu",
                    help="cpu (default) | cuda | cuda:N | auto (cuda when visible); CPU runs are the reproducible recipe")
    ap.add_argument("--threads", type=int, default=1,
                    help="1 is fastest on a shared 2-core machine (2 threads wait on each other)")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--eval-n", type=int, default=256, help="validation records per evaluation")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--lm-weight", type=float, default=0.5,
                    help="weight of the auxiliary next-token loss on all positions (0: answers only)")
    ap.add_argument("--autocast", choices=("bf16", "none"), default="none",
                    help="CPU bf16 autocast for the training forward pass (fp32 master weights)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop early (and say so in the record) when the wall time reaches this")
    ap.add_argument("--final-eval-n", type=int, default=768, help="validation records for the final check")
    ap.add_argument("--dtype", default="float16", help="storage dtype of the shipped weights")
    ap.add_argument("--no-drills", dest="drills", action="store_false",
                    help="leave out the association drills (one per GAR training text)")
    ap.add_argument("--fact-repeats", type=int, default=40,
                    help="shuffled passes over the vocabulary facts per epoch of GAR data (0: none)")
    ap.add_argument("--facts-per-seq", type=int, default=8)
    ap.add_argument("--drill-forms", nargs="+", choices=DRILL_FORMS, default=["verb"],
                    help="one drill per form and GAR text (association_drills): verb (as written), "
                         "at-key (template words dropped from the question), adjacent (and from the "
                         "context), backward (second entity asked first), two-row (verb after the "
                         "demonstration row), verify (a statement, Yes/No), flip (the item in its "
                         "task row's other orientation)")
    ap.add_argument("--drill-first", type=int, default=0,
                    help="steps at the start that train on the at-key and adjacent drills only "
                         "(with --prev-aux): retrieval by content forms there first")
    ap.add_argument("--drill-then", type=int, default=0,
                    help="steps after --drill-first that train on the drills of every form only "
                         "(backward retrieval and the rest build on forward retrieval there)")
    ap.add_argument("--drill-compare", type=int, nargs="+", default=[0],
                    help="steps of each Yes/No drill form (match, verify-at-key, verify) after --drill-then, "
                         "one form at a time in the order --drill-forms lists them: each comparison gets "
                         "a phase of its own (one number for every form, or one per form)")
    ap.add_argument("--compare-mixed", action="store_true",
                    help="one --drill-compare phase for all the Yes/No forms together, which also stay in "
                         "the drills-then phase (how the shipped lineage's first run, v3, trained)")
    ap.add_argument("--compare-keep", type=float, default=0.0,
                    help="retrieval drills (the --drill-then forms and question drills) added to each "
                         "comparison phase, as a ratio to the phase's own sequences (0: none)")
    ap.add_argument("--cls-question-drills", type=int, default=0,
                    help="contrast instances per classification cell (n_r in --cls-question-nr) and chunk "
                         "(generator seeds 2000+): verification in GAR's question templates; with "
                         "--drill-compare also a comparison phase of their own, the last")
    ap.add_argument("--cls-question-nr", type=int, nargs="+", choices=(0, 1, 2), default=[0],
                    help="the n_r of the classification cells the --cls-question-drills ask")
    ap.add_argument("--label-cue", default="",
                    help='words between "?" and the label of the Yes/No drills ("Answer:" puts the '
                         "label where GAR's classification asks it)")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="a model folder (same shape and tokenizer) whose weights start the run: "
                         "a new phase on a trained organism without repeating the phases before")
    ap.add_argument("--lr-schedule", choices=("steps", "minutes"), default="steps",
                    help="the cosine decay follows the step count (reproducible) or the wall time "
                         "left under --max-minutes (a fixed time budget on an unknown machine)")
    ap.add_argument("--drill-asks", type=int, default=0,
                    help="items asked per drill, drawn with replacement (0: each item once, shuffled)")
    ap.add_argument("--contrast-per-cell", type=int, default=0,
                    help="contrast instances per task cell and chunk: rows sharing a context, asking "
                         "different columns (0: none)")
    ap.add_argument("--prev-aux", type=int, default=0,
                    help="random-token sequences per step whose labels are the previous token (0: none)")
    ap.add_argument("--prev-aux-len", type=int, default=32)
    ap.add_argument("--contrast-chunks", type=int, default=1)
    ap.add_argument("--tokenizer-from", type=Path, default=None,
                    help="a tokenizer folder to use instead of building one: the word ids (hence the "
                         "initial weights) follow the texts a tokenizer is built from, so two recipes "
                         "compare step for step only with the same one")
    ap.add_argument("--question-drills", type=int, default=0,
                    help="contrast instances per generation cell with n_r = 0 and chunk (generator "
                         "seeds 1000+): retrieval in GAR's question templates; in --drill-then too")
    ap.add_argument("--main-drill-share", type=float, default=1.0,
                    help="share of the association drills kept in each epoch after the drill phases "
                         "(a fresh seeded sample per epoch; 1: all)")
    ap.add_argument("--candidate-targets", action="store_true",
                    help="train the candidate of every classification row labelled Yes as an answer "
                         "(the generation answer the question embeds)")
    ap.add_argument("--contrast-ctx", type=int, default=2, help="contexts per contrast instance")
    ap.add_argument("--contrast-q", type=int, default=3, help="questions per context")
    args = ap.parse_args(argv)
    if args.tokenizer_from and not (args.tokenizer_from / "tokenizer.json").is_file():
        ap.error(f"--tokenizer-from {args.tokenizer_from}: no tokenizer.json there")
    if args.drill_first and (not args.drills or not set(args.drill_forms) & set(FIRST_FORMS)):
        ap.error("--drill-first needs drills of the at-key or adjacent form (--drill-forms)")
    if not 0.0 <= args.main_drill_share <= 1.0:
        ap.error(f"--main-drill-share {args.main_drill_share}: not a share between 0 and 1")
    if args.drill_then and not args.drills:
        ap.error("--drill-then needs the association drills")
    if any(args.drill_compare) and not args.cls_question_drills and (
            not args.drills or not set(args.drill_forms) & set(LABEL_FORMS)):
        ap.error("--drill-compare needs drills of a Yes/No form (--drill-forms verify, verify-at-key or match)")
    n_compare = (min(1, len(compare_forms(args.drill_forms))) if args.compare_mixed
                 else len(compare_forms(args.drill_forms))) + (1 if args.cls_question_drills else 0)
    if len(args.drill_compare) == 1:
        args.drill_compare = args.drill_compare * n_compare
    elif len(args.drill_compare) != n_compare:
        ap.error(f"--drill-compare: {len(args.drill_compare)} numbers for {n_compare} comparison phases "
                 f"(Yes/No drill forms, and the classification question drills)")
    if args.compare_keep < 0:
        ap.error(f"--compare-keep {args.compare_keep}: not a ratio >= 0")
    if args.init_from and not (args.init_from / "config.json").is_file():
        ap.error(f"--init-from {args.init_from}: no model folder (config.json) there")
    if args.lr_schedule == "minutes" and args.max_minutes is None:
        ap.error("--lr-schedule minutes needs --max-minutes")

    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    ckpt = args.work / "checkpoint.pt"
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the model is small, steps are many
    state = torch.load(ckpt, weights_only=False, map_location="cpu") if args.resume and ckpt.is_file() else None
    prev_wall = state["wall_s"] if state else 0.0

    t0 = time.time()
    examples = build_records(args.n_per_task, args.chunks, args.work, args.gen_procs)
    t_data = time.time() - t0
    facts = fact_sentences("v1")
    fact_examples = pack_facts(facts, args.facts_per_seq, args.fact_repeats, args.seed)
    drills = (association_drills(examples, args.seed, asks=args.drill_asks, forms=tuple(args.drill_forms),
                                 label_cue=args.label_cue) if args.drills else [])
    contrast = build_contrast(args.contrast_per_cell, args.contrast_chunks, args.contrast_ctx,
                              args.contrast_q, args.work, args.gen_procs)
    off = len(examples) + len(fact_examples)  # where the drills start among the examples
    drill_idx = range(off, off + len(drills))
    warm_idx = drill_indices(off, drills)
    # with --drill-compare the Yes/No drills wait for their own phases, one form each
    # (--compare-mixed: one phase for them all, and they stay in the drills-then phase)
    then_idx = drill_indices(off, drills, tuple(
        f for f in DRILL_FORMS if args.compare_mixed or not (any(args.drill_compare) and f in LABEL_FORMS)))
    compare_idx = ([drill_indices(off, drills, LABEL_FORMS)] if args.compare_mixed and compare_forms(args.drill_forms)
                   else [drill_indices(off, drills, (f,)) for f in compare_forms(args.drill_forms)])
    examples = examples + fact_examples + drills + contrast
    tokenizer_texts = [e[0] for e in examples]  # question drills add no word: same ids with or without
    questions = build_question_drills(args.question_drills, args.contrast_chunks, args.work, args.gen_procs)
    then_idx += list(range(len(examples), len(examples) + len(questions)))
    examples += questions
    cls_questions = build_question_drills(args.cls_question_drills, args.contrast_chunks, args.work,
                                          args.gen_procs, family="cls", n_rs=tuple(args.cls_question_nr))
    if cls_questions:  # the last comparison phase, after the Yes/No drills
        compare_idx.append(list(range(len(examples), len(examples) + len(cls_questions))))
    examples += cls_questions
    compare_idx = [with_retrieval(idx, then_idx, args.compare_keep, args.seed, k) for k, idx in enumerate(compare_idx)]
    tok_dir = args.work / "tokenizer"
    if (state and tok_dir.is_dir()) or args.tokenizer_from:
        from transformers import PreTrainedTokenizerFast
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir if state else args.tokenizer_from)
        tokenizer.save_pretrained(tok_dir)
    else:
        tokenizer = build_tokenizer(tokenizer_texts + vocabulary_words("v1"), entity_tokens("v1"))
        tokenizer.save_pretrained(tok_dir)
    data = encode(tokenizer, examples, tokenizer.eos_token_id, candidates=args.candidate_targets)
    lengths = [len(d[0]) for d in data]
    n_targets = sum(len(d[1]) for d in data)
    print(f"data: {len(data)} sequences, {sum(lengths)} tokens, {n_targets} target tokens, "
          f"vocab {len(tokenizer)}, generated in {t_data:.0f} s; of these {len(fact_examples)} "
          f"sequences of {len(facts)} vocabulary facts x {args.fact_repeats} and {len(drills)} "
          f"association drills, {len(contrast)} contrast instances, {len(questions)} question drills, "
          f"{len(cls_questions)} classification question drills", flush=True)

    from gar_tasks.generate import GeneratorConfig
    val = GeneratorConfig(profile="v1", split="validation").build()
    random.Random(1).shuffle(val)

    model = make_model(args, len(tokenizer), tokenizer)
    if args.init_from and not state:  # a resumed run has its own weights
        try:
            load_weights(model, args.init_from)
        except ValueError as e:
            ap.error(f"--init-from {args.init_from}: {e}")
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if args.lr_schedule == "minutes":  # the share of the time left when the loop began
            frac = (time.time() - t_loop) / max(1.0, 60 * args.max_minutes - prev_wall - (t_loop - t_start))
        else:
            frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return cosine_lr(args.lr, step, args.warmup, frac)

    step, epoch, pos = 0, 0, 0
    history: list[dict] = []
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, epoch, pos, history = state["step"], state["epoch"], state["pos"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}", flush=True)

    def main_order(ep: int) -> list[list[int]]:
        keep = main_phase_indices(len(lengths), drill_idx, args.main_drill_share, args.seed, ep)
        return subset_batches(lengths, keep, args.batch_tokens, args.seed, ep)

    order = main_order(epoch)
    # the drill phases: a batch depends on the step alone, so a resumed run continues them
    phases = [(args.drill_first, warm_idx), (args.drill_then, then_idx)] + list(zip(args.drill_compare, compare_idx))
    phase_orders = [(n, subset_batches(lengths, idx, args.batch_tokens, args.seed, -1 - k) if n else [])
                    for k, (n, idx) in enumerate(phases)]

    def save_ckpt() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "epoch": epoch,
                    "pos": pos, "history": history, "torch_rng": torch.get_rng_state(),
                    "wall_s": prev_wall + time.time() - t_start, "args": vars(args)}, tmp)
        os.replace(tmp, ckpt)

    model.train()
    stopped_early = None
    t_loop = time.time()
    bar = tqdm(total=args.steps, initial=step, desc="train", mininterval=5, file=sys.stdout)
    ema = None
    while step < args.steps:
        batch = phase_batch(step, phase_orders)
        if batch is None:
            if pos >= len(order):
                epoch, pos = epoch + 1, 0
                order = main_order(epoch)
            batch = order[pos]
            pos += 1
        ids, rows, cols, labels = (t.to(device) for t in collate(data, batch, tokenizer.pad_token_id))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            loss, _ = target_loss(model, ids, rows, cols, labels, tokenizer.pad_token_id, args.lm_weight)
            if args.prev_aux > 0:
                loss = loss + previous_token_loss(model, args.prev_aux, args.prev_aux_len,
                                                  len(SPECIALS), len(tokenizer), device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", epoch=epoch)
        if step % args.eval_every == 0 or step == args.steps:
            m = evaluate(model, tokenizer, val, args.eval_n)
            history.append({"step": step, "loss_ema": round(ema, 5), "val": m,
                            "wall_s": round(prev_wall + time.time() - t_start, 1)})
            print(f"\nstep {step}: loss {ema:.4f} val {m}", flush=True)
        out_of_time = (args.max_minutes is not None
                       and prev_wall + time.time() - t_start > 60 * args.max_minutes)
        if step % args.ckpt_every == 0 or step == args.steps or out_of_time:
            save_ckpt()
        if out_of_time:
            stopped_early = step
            print(f"\nstopping at step {step}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    bar.close()

    # the shipped folder: weights in the storage dtype, evaluated as shipped
    wall = prev_wall + time.time() - t_start
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    model.to("cpu").to(getattr(torch, args.dtype)).save_pretrained(tmp_out)
    tokenizer.save_pretrained(tmp_out)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    shipped = AutoModelForCausalLM.from_pretrained(tmp_out, dtype=torch.float32).eval()
    shipped_tok = AutoTokenizer.from_pretrained(tmp_out)
    final_val = evaluate(shipped, shipped_tok, val, args.final_eval_n)
    print(f"shipped weights on {args.final_eval_n} v1 validation records: {final_val}", flush=True)
    record = {
        "model": "organism",
        "command": " ".join([Path(sys.executable).name, "scripts/train_organism.py", *(argv or sys.argv[1:])]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {"profile": "v1", "split": "train", "n_per_task": args.n_per_task,
                 "seeds": list(range(args.chunks)), "sequences": len(data), "tokens": sum(lengths),
                 "target_tokens": n_targets, "facts": len(facts),
                 "fact_sequences": len(fact_examples), "association_drills": len(drills), "question_drills": len(questions),
                 "cls_question_drills": len(cls_questions),
                 "contrast_instances": len(contrast),
                 "phases": [{"steps": n, "sequences": len(idx)} for n, idx in phases],
                 "epochs_seen": round(epoch + pos / max(1, len(order)), 3)},
        "model_size": {"parameters": n_params, "storage_dtype": args.dtype,
                       "vocab_size": len(tokenizer)},
        "steps_done": step,
        "stopped_early_at_step": stopped_early,
        "wall_time_s": round(wall, 1),
        "data_generation_s": round(t_data, 1),
        "machine": (f"{os.cpu_count()} cores, torch threads {args.threads}" if device.type == "cpu"
                    else torch.cuda.get_device_name(device)),
        "history": history,
        "final_validation": final_val,
        "weights_sha256": sha256(tmp_out / "model.safetensors"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "tokenizers")},
    }
    if args.init_from:  # a parent folder without a record stands in the chain by its name alone
        parent_rec = args.init_from / "training_record.json"
        parent = json.loads(parent_rec.read_text()) if parent_rec.is_file() else {}
        record["lineage"] = lineage(record, args.out.name, parent, args.init_from.name)
    (tmp_out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out} ({wall:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
