"""The options of one training run, as a command line: ``gar organism train`` parses them, and a
recipe's phases (``recipe.json``) and every training record's ``command`` are written in them, so a
recorded run is replayed by parsing its own words. ``check_options`` refuses what cannot run,
before any data is generated; ``BOUNDS`` is every numeric option's range.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import GARConfigError
from ..knobs import SEED, Bound, bound_options
from .drills import DRILL_FORMS, FIRST_FORMS, LABEL_FORMS, compare_forms

#: option -> its range (gar_tasks.knobs: the argparse type, shown in --help, also checked by
#: check_options for library callers). Shapes up to a 7B-class width; steps and tokens far past
#: any CPU budget; lr 0 trains nothing and max-minutes 0 stops at once, so both exclude 0
BOUNDS: dict[str, Bound] = {
    "n_per_task": Bound(1, 10_000), "chunks": Bound(1, 1_000), "gen_procs": Bound(1, 256),
    "d_model": Bound(8, 8192), "layers": Bound(1, 128), "heads": Bound(1, 256), "kv_heads": Bound(1, 256),
    "mlp": Bound(1, 65_536), "steps": Bound(1, 10_000_000), "batch_tokens": Bound(16, 10_000_000),
    "lr": Bound(0, 1, float, lo_open=True), "warmup": Bound(0, 10_000_000), "weight_decay": Bound(0, 1, float),
    "threads": Bound(1, 1024), "ckpt_every": Bound(1, 10_000_000), "eval_every": Bound(1, 10_000_000),
    "eval_n": Bound(1, 100_000), "lm_weight": Bound(0, 100, float), "max_minutes": Bound(0, 100_000, float, lo_open=True),
    "final_eval_n": Bound(1, 100_000), "fact_repeats": Bound(0, 100_000), "facts_per_seq": Bound(1, 1_000),
    "drill_first": Bound(0, 10_000_000), "drill_then": Bound(0, 10_000_000), "drill_compare": Bound(0, 10_000_000),
    "compare_keep": Bound(0, 100, float), "cls_question_drills": Bound(0, 100_000), "drill_asks": Bound(0, 1_000),
    "contrast_per_cell": Bound(0, 100_000), "prev_aux": Bound(0, 100_000), "prev_aux_len": Bound(1, 510),
    "contrast_chunks": Bound(1, 1_000), "question_drills": Bound(0, 100_000), "main_drill_share": Bound(0, 1, float),
    "contrast_ctx": Bound(1, 100), "contrast_q": Bound(1, 100), "seed": SEED,
}
#: options the recipe replay sets for each phase itself
MANAGED = ("work", "out", "init_from", "resume")


def add_train_arguments(ap: argparse.ArgumentParser) -> None:
    """The training options (``--steps``, ``--lr``, the shape, the data and the phases)."""
    ap.add_argument("--out", type=Path, metavar="DIR",
                    help="the model folder to write (replaced only when it holds an organism record)")
    ap.add_argument("--work", type=Path, default=Path(".organism_work"),
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
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                    help="storage dtype of the shipped weights")
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
    bound_options(ap, BOUNDS)

class _RaisingParser(argparse.ArgumentParser):
    """A parser whose usage errors are GARConfigError (a recipe phase is parsed in-process)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise GARConfigError(message)


def train_parser() -> argparse.ArgumentParser:
    """The training options alone, parsing a recipe phase or a recorded command."""
    ap = _RaisingParser(prog="gar organism train", add_help=False)
    add_train_arguments(ap)
    return ap


def train_dests() -> list[str]:
    """The names of the training options, in the order the parser declares them."""
    return [a.dest for a in train_parser()._actions]


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` (a recipe phase, a recorded command's arguments) as checked training options."""
    args = train_parser().parse_args(argv)
    check_options(args)
    return args


def to_argv(args: argparse.Namespace) -> list[str]:
    """The options of ``args`` that differ from their defaults, as a command line that parses
    back to ``args`` (what a training record names as its command)."""
    out: list[str] = []
    for a in train_parser()._actions:
        value = getattr(args, a.dest)
        if value == a.default:
            continue
        flag = a.option_strings[0]
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            out.append(flag)
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def _bound_errors(args: argparse.Namespace) -> list[str]:
    errors = []
    for dest, bound in BOUNDS.items():
        value: Any = getattr(args, dest)
        for v in (value if isinstance(value, list) else [value]):
            if v is None:
                continue
            try:
                bound(str(v))
            except argparse.ArgumentTypeError as e:
                errors.append(f"--{dest.replace('_', '-')} {e}")
    return errors


def check_options(args: argparse.Namespace) -> None:
    """Refuse (GARConfigError, one line) options that cannot make a run: a value out of its
    ``BOUNDS``, a shape the model cannot take, phases without their drills, a folder that is not
    what it is given as. Only reads: nothing is generated, created or deleted."""
    errors = _bound_errors(args)
    if errors:
        raise GARConfigError(errors[0])
    if args.d_model % args.heads:
        raise GARConfigError(f"--d-model {args.d_model} is not a multiple of --heads {args.heads}")
    if (args.d_model // args.heads) % 2:
        raise GARConfigError(f"--d-model {args.d_model} / --heads {args.heads} = {args.d_model // args.heads}: "
                             "rotary position embeddings need an even head size")
    if args.heads % args.kv_heads:
        raise GARConfigError(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    if args.tokenizer_from and not (args.tokenizer_from / "tokenizer.json").is_file():
        raise GARConfigError(f"--tokenizer-from {args.tokenizer_from}: no tokenizer.json there")
    if args.drill_first and (not args.drills or not set(args.drill_forms) & set(FIRST_FORMS)):
        raise GARConfigError("--drill-first needs drills of the at-key or adjacent form (--drill-forms)")
    if args.drill_then and not args.drills:
        raise GARConfigError("--drill-then needs the association drills")
    if any(args.drill_compare) and not args.cls_question_drills and (
            not args.drills or not set(args.drill_forms) & set(LABEL_FORMS)):
        raise GARConfigError("--drill-compare needs drills of a Yes/No form (--drill-forms verify, "
                             "verify-at-key or match)")
    n_compare = (min(1, len(compare_forms(args.drill_forms))) if args.compare_mixed
                 else len(compare_forms(args.drill_forms))) + (1 if args.cls_question_drills else 0)
    if len(args.drill_compare) == 1:
        args.drill_compare = args.drill_compare * n_compare
    elif len(args.drill_compare) != n_compare:
        raise GARConfigError(f"--drill-compare: {len(args.drill_compare)} numbers for {n_compare} comparison "
                             f"phases (Yes/No drill forms, and the classification question drills)")
    if args.init_from and not (args.init_from / "config.json").is_file():
        raise GARConfigError(f"--init-from {args.init_from}: no model folder (config.json) there")
    if args.lr_schedule == "minutes" and args.max_minutes is None:
        raise GARConfigError("--lr-schedule minutes needs --max-minutes")
    if args.work.exists() and not args.work.is_dir():
        raise GARConfigError(f"--work {args.work}: not a folder")
    if args.out is None:
        raise GARConfigError("--out is required: the model folder to write")
