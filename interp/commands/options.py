"""The options several interp commands share, declared once (flag, type, metavar, help).

Each command module adds the ones it needs with its own defaults; what a flag means is the same
everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Callable, Iterator

from gar_tasks.knobs import SEED, THREADS, Bound, BoundList, add_bounded

from ..core.loader import DTYPES
from ..core.select import SELECTOR_HELP

SELECTORS = "all | gar | cls | gen | nr1 | cls_nr1 | PAIR (gender_city) | an lm-eval leaf/group name " \
            "(gar_cls, gar_cls_nr1_gender_city); comma list = union"
DEFAULT_CLS_TASKS = "gender_city,gender_kind,gender_usage"


# Every numeric knob of the interp commands and its bound, checked while the command line is parsed
# (before a model loads or a file is written) and shown in --help. Why each bound is where it is:
KNOBS: dict[str, Bound | BoundList] = {
    # items / pairs drawn from the selection: no config holds more records than this, and a draw
    # never takes more than the selection holds
    "n": Bound(1, 100_000),
    # rows per forward pass: 4096 GAR rows of the smallest model already fill an 80 GB GPU's activations
    # (attribution keeps gradients), and a bigger batch is no faster
    "batch_size": Bound(1, 4096),
    "threads": THREADS,
    "seed": SEED,
    # EAP-IG steps over the input embeddings: the literature uses 5..50; past 100 the Riemann sum
    # moves less than float noise, each step is a forward and backward pass
    "ig_steps": Bound(1, 100),
    # random circuits / random-head controls: their mean and spread are the baseline; 1000 draws
    # resolve a one-sided p-value of 0.001, each draw costs exact patching passes
    "random": Bound(0, 1000),
    "random_draws": Bound(0, 1000),
    "random_draws_intervene": Bound(1, 1000),  # intervene reports against at least one control
    # exact single-edge patching of the top K and K random edges (one exact pass each): 2000 edges
    # give a tight Spearman; the run also never patches more edges than the graph has
    "spot": Bound(0, 1000),
    # a circuit's size as an edge count (--size N): more than the role-level graph of any supported
    # model has edges (the circuit never takes more than the graph holds)
    "size_edges": Bound(1, 10_000_000),
    # faithfulness-curve sizes and circuit-overlap's core share are percentages / fractions
    "curve": Bound(0.0, 100.0, float, lo_open=True),
    "core_fraction": Bound(0.0, 1.0, float, lo_open=True),
    "min_consistency": Bound(0.0, 1.0, float),
    # heads kept per set: more than the heads of any supported model (Llama-3-70B: 80 x 64 = 5120)
    "top": Bound(1, 10_000),
    "k": BoundList(Bound(1, 10_000)),  # gar probe: discovered heads per probe, the same limit
    # gar patch: exact re-patching of the top K attributed sites, one forward per site
    "verify_top": Bound(1, 1000),
    # head scale factors: a head scaled by 1000 already saturates every next layer; more is a typo
    "factor": Bound(-1000.0, 1000.0, float),
    # gar probe: SNLI probe runs (mean and spread over seeds) and items read per file
    "runs": Bound(1, 100),
    "limit": Bound(10, 1_000_000),
}


def add_knob(p: argparse.ArgumentParser, flag: str, help: str, knob: str | None = None, **kw: Any) -> None:
    """Add a numeric option whose bound is ``KNOBS[knob]`` (default: the flag's name)."""
    add_bounded(p, flag, KNOBS[knob or flag.lstrip("-").replace("-", "_")], help, **kw)


def add_model(p: argparse.ArgumentParser, required: bool = True, remote: bool = False) -> None:
    hub = "a Hub id (with --remote: run on NDIF; else from the local cache)" if remote else "a cached Hub id"
    p.add_argument("--model", required=required, metavar="MODEL",
                   help=f"an embedded model (smollm2, see `gar models`), a local HF model folder, or {hub}")


def add_dtype(p: argparse.ArgumentParser, default: str = "float32") -> None:
    p.add_argument("--dtype", default=default, choices=DTYPES, help=f"model dtype (default {default})")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="cpu (default) | cuda | cuda:N | auto (accelerate's device_map='auto' over every visible "
                        "GPU: one model split across several; plain CPU when there is none)")


def add_remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote", action="store_true", help="run on NDIF (Hub id model, NDIF_API_KEY)")


def add_out(p: argparse.ArgumentParser, required: bool = True, help: str = "output folder") -> None:
    p.add_argument("--out", required=required, metavar="DIR", help=help)


def add_selection(p: argparse.ArgumentParser, tasks_default: str | None, n_default: int, n_help: str,
                  seed_help: str, tasks_help: str = "which GAR tasks") -> None:
    """``--tasks``, ``--config``, ``--n``, ``--seed``: the one record selection of every GAR command."""
    if tasks_default is None:
        p.add_argument("--tasks", required=True, metavar="SELECTOR", help=f"{tasks_help}: {SELECTORS}")
    else:
        p.add_argument("--tasks", default=tasks_default, metavar="SELECTOR",
                       help=f"{tasks_help} (same selectors as gar patch; default {tasks_default})")
    p.add_argument("--config", default="paper", choices=("paper", "v1"), help="dataset config (default paper)")
    add_knob(p, "--n", n_help, default=n_default, metavar="N")
    add_knob(p, "--seed", seed_help, default=0, metavar="S")


def add_batch_size(p: argparse.ArgumentParser, default: int, what: str) -> None:
    add_knob(p, "--batch-size", f"{what} per forward", default=default, metavar="B")


def add_restart(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true", help="discard a checkpoint in --out and start again")


def add_threads(p: argparse.ArgumentParser) -> None:
    add_knob(p, "--threads", "torch threads (0: torch's default, all cores; on a CPU shared with other "
                             "jobs 1 can be many times faster)", default=0, metavar="N")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def add_model_options(p: argparse.ArgumentParser, *, required: bool = True, remote: bool = False,
                      dtype: str = "float32") -> None:
    """``--model``, ``--dtype``, ``--device`` (and ``--remote``): what every interp command loads."""
    add_model(p, required=required, remote=remote)
    add_dtype(p, dtype)
    add_device(p)
    if remote:
        add_remote(p)


def add_run_options(p: argparse.ArgumentParser, batch_size: int, what: str) -> None:
    """``--batch-size``, ``--threads``, ``-q``: how every interp command runs."""
    add_batch_size(p, batch_size, what)
    add_threads(p)
    add_quiet(p)


def stderr_log(args: argparse.Namespace) -> Callable[[str], Any]:
    """Progress/log lines on stderr unless ``-q``."""
    return (lambda msg: None) if getattr(args, "quiet", False) else (lambda msg: print(msg, file=sys.stderr))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on ``n`` threads for the duration (0: leave torch's default)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["DEFAULT_CLS_TASKS", "KNOBS", "SELECTORS", "SELECTOR_HELP", "add_batch_size", "add_device", "add_dtype",
           "add_knob", "add_model", "add_model_options", "add_out", "add_quiet", "add_remote", "add_run_options", "add_restart", "add_selection", "add_threads",
           "stderr_log", "torch_threads"]
