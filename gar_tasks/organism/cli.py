"""``gar organism train`` and ``gar organism eval``: parse, call the library, print.

``gar organism train OPTIONS --out DIR`` trains one run (``training.train``);
``gar organism train --recipe shipped --out DIR`` replays a recipe's phases (``recipe.replay``);
``gar organism eval SOURCE`` prints the drill accuracy of a model or work folder as JSON
(``drill_eval.drill_report``). Errors are ``GARConfigError`` lines, as for every ``gar`` command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import GARConfigError
from ..knobs import Bound, add_bounded

#: what a replay takes besides the recipe; every other training option comes from the recipe
REPLAY_OPTIONS = ("out", "work", "device")


def register(sub: Any) -> None:
    """Add ``organism`` (with ``train`` and ``eval``) to the ``gar`` subcommands ``sub``."""
    from .drills import DRILL_FORMS
    from .options import add_train_arguments

    o = sub.add_parser("organism", help="train the model organism (one run, or a recipe's phases) or "
                                        "measure its drills",
                       description="The model organism's recipe: train a run, replay a recipe, "
                                   "evaluate drills.")
    osub = o.add_subparsers(dest="organism_command", metavar="ACTION", required=True)
    t = osub.add_parser("train", help="train one run, or replay a recipe's phases (--recipe)",
                        description="Train the organism: a small Llama trained from scratch on the v1 "
                                    "train split, vocabulary facts and association drills; writes a model "
                                    "folder with its training record. With --recipe, every phase of the "
                                    "recipe in turn (each from the previous one's weights) into --out/<phase>.")
    t.add_argument("--recipe", metavar="NAME|FILE",
                   help="replay a recipe: shipped (the shipped organism's lineage) or a recipe JSON file; "
                        "only --out, --work and --device go with it")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)
    e = osub.add_parser("eval", help="drill accuracy per form of a model folder or training work folder (JSON)",
                        description="Score the association drills on validation contexts, per form, "
                                    "counting only the retrieved value tokens; print one JSON line.")
    e.add_argument("source", type=Path, help="model folder or training work folder")
    # drills and records scored: the validation split holds ~50,000 records, more is a typo
    add_bounded(e, "--n", Bound(1, 100_000), "drills per form", default=150)
    add_bounded(e, "--contexts", Bound(1, 100_000), "validation records drawn from", default=400)
    e.add_argument("--forms", nargs="+", default=list(DRILL_FORMS), choices=DRILL_FORMS, help="drill forms to score")
    e.add_argument("--label-cue", default="", help="the --label-cue the model was trained with")
    add_bounded(e, "--gar-cls", Bound(0, 100_000),
                "also report, on this many GAR cls records, where the label signal is", default=0)
    e.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    from .options import check_options, to_argv, train_dests
    from .training import train

    opts = argparse.Namespace(**{k: getattr(args, k) for k in train_dests()})
    if args.recipe:
        return _replay(args.recipe, opts)
    check_options(opts)
    train(opts, " ".join(["gar organism train", *to_argv(opts)]))
    return 0


def _replay(name: str, opts: argparse.Namespace) -> int:
    from .options import train_parser
    from .recipe import load_recipe, replay
    from .training import train

    ap = train_parser()
    extra = [k for k in vars(opts) if k not in REPLAY_OPTIONS and getattr(opts, k) != ap.get_default(k)]
    if extra:
        raise GARConfigError(f"--recipe takes its training options from the recipe; "
                             f"--{extra[0].replace('_', '-')} goes only without it")
    if opts.out is None:
        raise GARConfigError("--out is required: the folder the phases are written into")
    manifest = replay(load_recipe(name), opts.out, opts.work, train,
                      device=opts.device if opts.device != ap.get_default("device") else None)
    for p in manifest["phases"]:
        print(f"{p['name']}: {p.get('device')} ({p.get('machine')}), {p.get('steps_done')} steps, "
              f"sha256 {p.get('weights_sha256')}")
    print(f"wrote {opts.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .drill_eval import drill_report

    for name in ("n", "contexts"):
        if getattr(args, name) < 1:
            raise GARConfigError(f"--{name} {getattr(args, name)}: not a positive count")
    if args.gar_cls < 0:
        raise GARConfigError(f"--gar-cls {args.gar_cls}: not a count >= 0")
    print(json.dumps(drill_report(args.source, args.n, args.contexts, tuple(args.forms), args.label_cue,
                                  args.gar_cls)))
    return 0
