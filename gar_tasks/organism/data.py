"""The organism's training data: GAR records of the v1 ``train`` split, contrast instances and
question drills (rows that share a context and differ in the question), vocabulary facts, the
word-level tokenizer, and the encoding into (token ids, target positions).

Every builder is seeded by its arguments alone (generator seeds, ``random.Random`` keyed by a
string), so the same arguments give the same examples on every machine; the expensive ones are
cached as JSON in the run's work folder.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

#: the tokenizer's special tokens, ids 0-3 in this order
SPECIALS = ["[UNK]", "[PAD]", "<s>", "</s>"]


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
    on an early organism: the same answer whatever the query). Rows that share a context and differ
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
    at 0.40-0.45 (docs/results.md). Examples: (text, ranges, 'question', 0, '').
    cls: the verification asked the same way ("... that Karen wants to go to Paris? Answer: No"),
    the bridge from the Yes/No drills, which verified while GAR's label read none of it; it
    carried over to n_r = 0 only, the n_r asked. Examples: (text, ranges,
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
