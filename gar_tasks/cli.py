"""The ``gar`` command line: ``gar generate``, ``gar validate``, ``gar push``.

Commands are thin wrappers over the library. Heavy modules (datasets, tqdm, the generator) are
imported inside the commands so that ``gar --help`` stays fast. Every ``GARError`` becomes one
line ``gar: error: <message>`` on stderr and exit code 2 (as argparse usage errors do); Ctrl-C
exits with 130 and leaves no partial output file.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from .errors import GARConfigError, GARDataError, GARError

PROG = "gar"
# GeneratorConfig field -> command-line flag (used to phrase the config's messages for the CLI)
_FLAGS = {"cxt_len": "--cxt-len", "n_demos": "--demos", "n_per_task": "--per-task", "seed": "--seed"}


def _error(msg: str) -> None:
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
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
