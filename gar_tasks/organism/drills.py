"""The association drills: one drill per GAR training text and form, asking back the items of
the text's last context, and the table of drill forms (``FORMS``: what the drill's context is,
how an item is asked, what a text needs for the form).

A drill is the in-context association sub-skill (GAR's ``sub_assoc``) asked densely, since GAR's
answers are one position per row. Each form isolates one way GAR asks for an item; ``FORMS``
says what each one is for.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

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


@dataclass(frozen=True)
class Asking:
    """What a form's ``ask`` sees besides the item: the text's context items, the form's own
    random stream (Yes/No forms), the flipper (``flip``) and the words before a label."""

    context: list[str]
    rng: random.Random | None
    flip: Callable[[str], str | None] | None
    label_cue: str


@dataclass(frozen=True)
class DrillForm:
    """One drill form. ``context(demo, ctx)``: the drill's text before the questions (``demo``:
    the rows before the asked context; ``ctx``: that context as written, ``< a. b. c. >.``).
    ``ask(item, asking)``: (the words after ``So``, the target) for one asked item; the target is
    what the loss is on and is followed by a period. ``needs``: ``"split"`` (every item splits into
    two entities: 'Energetic Donna' does not) or ``"flip"`` (every item matches a task row's
    template); a text that lacks it gets no drill of this form. ``label``: the target is Yes/No."""

    context: Callable[[str, str], str]
    ask: Callable[[str, Asking], tuple[str, str]]
    needs: str = ""
    label: bool = False


def _as_written(demo: str, ctx: str) -> str:
    return ctx


def _adjacent_context(demo: str, ctx: str) -> str:
    return without_template_words(ctx)


def _after_demo(demo: str, ctx: str) -> str:
    return demo + ctx


def _ask_verb(item: str, a: Asking) -> tuple[str, str]:
    return "", _mid_sentence(item)


def _ask_at_key(item: str, a: Asking) -> tuple[str, str]:
    return "", without_template_words(_mid_sentence(item))


def _ask_backward(item: str, a: Asking) -> tuple[str, str]:
    first, second = item_entities(item)
    return "", f"{_mid_sentence(second)} {_mid_sentence(first)}"


def _ask_flip(item: str, a: Asking) -> tuple[str, str]:
    return "", _mid_sentence(a.flip(item))


def _question(statement: str, a: Asking) -> str:
    return statement + "? " + (a.label_cue + " " if a.label_cue else "")


def _ask_verify(item: str, a: Asking) -> tuple[str, str]:
    statement, label = verify_statement(a.rng, item, a.context)
    return _question(_mid_sentence(statement), a), label


def _ask_verify_at_key(item: str, a: Asking) -> tuple[str, str]:
    statement, label = verify_statement(a.rng, item, a.context)
    return _question(without_template_words(_mid_sentence(statement)), a), label


def _ask_match(item: str, a: Asking) -> tuple[str, str]:
    statement, label = match_question(a.rng, item, a.context)
    return _question(statement, a), label


#: The drill forms, in the order ``DRILL_FORMS`` lists them.
#:
#: - ``verb`` asks the item as written (``So Kimberly likes Tokyo.``);
#: - ``at-key`` asks it without template words (``So Kimberly Tokyo.``: the value is predicted
#:   at its key, the step where an induction head acts);
#: - ``adjacent`` drops them from the context too (``< Kimberly Tokyo. ...``), the form in which
#:   matching by content forms within a CPU budget, and from which it carries over to the other
#:   two (scripts/probe_retrieval.py: verb contexts alone stay at chance for 3000 steps, half
#:   adjacent reach 0.90 by step 1200; docs/results.md);
#: - ``backward`` asks the second entity, then the first (``So Tokyo Kimberly.``): GAR asks both
#:   ways (``swap_qa``, ``rev_item2str``), and retrieval learned one way scored 1.0 on the n_r = 0
#:   cells asked in written order and chance on those asked against it;
#: - ``two-row`` asks as ``verb`` but keeps the text's demonstration row first: GAR's own shape,
#:   where that row's items compete with the asked context's (``sub_assoc``);
#: - ``verify`` (two rows too) asks whether a statement holds, ``So Kimberly likes Paris? No.``,
#:   loss on Yes/No only (``verify_statement``): classification's core;
#: - ``flip`` asks the item in the other orientation of its task row (``item_flipper``: "Tokyo
#:   attracts Kimberly" asked as ``So Kimberly likes Tokyo.``): how GAR's ``sub_assoc`` and its
#:   questions ask a context written reversed (``rev_item2str``), or ask the thing side
#:   (``swap_qa``); backward drills without the template word did not carry over there;
#: - ``verify-at-key`` asks it without template words, ``So Kimberly Paris? No.``: the candidate
#:   follows the key, where the at-key form predicts the value, as GAR's classification questions
#:   put the candidate right after the position that predicts the answer ("... is the boy? Answer:");
#: - ``match`` asks whether two context entities are the same, ``So Tokyo Paris? No.``
#:   (``match_question``): the comparison alone, with the value to compare in the input.
FORMS: dict[str, DrillForm] = {
    "verb": DrillForm(_as_written, _ask_verb),
    "at-key": DrillForm(_as_written, _ask_at_key),
    "adjacent": DrillForm(_adjacent_context, _ask_at_key),
    "backward": DrillForm(_as_written, _ask_backward, needs="split"),
    "two-row": DrillForm(_after_demo, _ask_verb),
    "verify": DrillForm(_after_demo, _ask_verify, needs="split", label=True),
    "flip": DrillForm(_as_written, _ask_flip, needs="flip"),
    "verify-at-key": DrillForm(_after_demo, _ask_verify_at_key, needs="split", label=True),
    "match": DrillForm(_after_demo, _ask_match, needs="split", label=True),
}
DRILL_FORMS = tuple(FORMS)
#: forms whose target is a Yes/No label (loss on the label only)
LABEL_FORMS = tuple(f for f, form in FORMS.items() if form.label)
#: forms trained first (the drill-first phase): matching by content forms on them (probe_retrieval.py)
FIRST_FORMS = ("at-key", "adjacent")


def association_drills(examples: list[tuple], seed: int, n_items: int = 3, asks: int = 0,
                       forms: tuple[str, ...] = ("verb",), label_cue: str = "") -> list[tuple]:
    """One drill per GAR training text and form (in ``forms`` order): the text's last row's
    context ``< a. b. c. >.`` (as the form writes it) followed by every context item asked back
    in shuffled order (``So b. So a. So c.``), loss on the asked items (``FORMS``). Dense asking
    alone does not make retrieval form within a CPU budget: see ``previous_token_loss``.
    ``asks`` > 0: that many items drawn with replacement, so that no item is given away by
    elimination (measured: with each item asked once the model answered the last by
    elimination, 0.65 = 1/3, 1/2, 1 on average, and no better).

    ``label_cue``: words between the question mark and a Yes/No label (``"Answer:"``: ``So Tokyo
    Paris? Answer: No.``), so that the label sits where GAR's classification puts it: without
    it, verification formed on the drills (0.84) but GAR's label position read none of it.
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
        context = items
        has = {"split": all(len(item_entities(it)) == 2 for it in items),
               "flip": all(flip(it) for it in items) if flip else False}
        if asks > 0:
            items = [rng.choice(items) for _ in range(asks)]
        else:
            rng.shuffle(items)
        demo = body[:len(body) - len(row) + a]  # the rows before the asked context
        for name in forms:
            form = FORMS[name]
            if form.needs and not has[form.needs]:
                continue
            asking = Asking(context, label_rngs.get(name), flip, label_cue)
            drill = form.context(demo, ctx)
            ranges = []
            for it in items:
                before, target = form.ask(it, asking)
                drill += " So " + before
                ranges.append((len(drill), len(drill) + len(target)))
                drill += target + "."
            out.append((drill, ranges, "drill", -1, name))
    return out


def drill_indices(offset: int, drills: list[tuple], forms: tuple[str, ...] = FIRST_FORMS) -> list[int]:
    """Positions of the drills of ``forms`` among the training examples, when ``drills``
    (``association_drills``) start at ``offset``: what the drill-first phase trains on first
    (``FIRST_FORMS``), the drills-then phase next, and each comparison phase (one Yes/No form)."""
    return [offset + i for i, d in enumerate(drills) if d[4] in forms]


def compare_forms(forms: list[str]) -> list[str]:
    """The Yes/No forms among ``forms``, in their order: the comparison phases gives each a phase
    of its own in this order (the token comparison ``match`` before the verification that needs
    it, when listed so; trained mixed, only ``match`` formed)."""
    return [f for f in forms if f in LABEL_FORMS]
