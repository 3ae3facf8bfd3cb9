"""The options several interp commands share, declared once (flag, type, metavar, help).

Each command module adds the ones it needs with its own defaults; what a flag means is the same
everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Callable, Iterator

from ..core.loader import DTYPES
from ..core.select import SELECTOR_HELP

SELECTORS = "all | gar | cls | gen | nr1 | cls_nr1 | PAIR (gender_city) | an lm-eval leaf/group name " \
            "(gar_cls, gar_cls_nr1_gender_city); comma list = union"
DEFAULT_CLS_TASKS = "gender_city,gender_kind,gender_usage"


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
    p.add_argument("--n", type=int, default=n_default, metavar="N", help=f"{n_help} (default {n_default})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help=f"{seed_help} (default 0)")


def add_batch_size(p: argparse.ArgumentParser, default: int, what: str) -> None:
    p.add_argument("--batch-size", type=int, default=default, metavar="B", help=f"{what} per forward (default {default})")


def add_restart(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true", help="discard a checkpoint in --out and start again")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch threads (default 0: torch's default, all cores; on a CPU shared with other "
                        "jobs 1 can be many times faster)")


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


__all__ = ["DEFAULT_CLS_TASKS", "SELECTORS", "SELECTOR_HELP", "add_batch_size", "add_device", "add_dtype",
           "add_model", "add_model_options", "add_out", "add_quiet", "add_remote", "add_run_options", "add_restart", "add_selection", "add_threads",
           "stderr_log", "torch_threads"]
