"""Bounds of the numeric command-line knobs, as data: one :class:`Bound` per option, used as the
option's argparse ``type`` so a value out of range is refused while the command line is parsed
(one ``gar: error:`` line, exit 2, before any file or model is touched), and shown in ``--help``.

Every integer or float option of every ``gar`` command carries one (a test walks the parsers);
the commands' own tables say why each bound is where it is.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bound:
    """The allowed range ``lo..hi`` of a numeric option (``lo`` excluded when ``lo_open``: ``>0..1``)."""

    lo: float
    hi: float
    kind: type = int
    lo_open: bool = False

    @property
    def range(self) -> str:
        """The range as ``--help`` shows it: ``0..1000``, or ``>0..1`` when ``lo`` is excluded."""
        if self.lo_open:
            return f">{_num(self.lo)}..{_num(self.hi)}"
        return f"{_num(self.lo)}..{_num(self.hi)}"

    def __call__(self, text: str) -> Any:
        """Parse and check one value (argparse calls this); the message names no flag (argparse adds it)."""
        kind = "an integer" if self.kind is int else "a number"
        try:
            v = self.kind(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {kind} in {self.range}, got {text!r}") from None
        if self.kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if self.lo < v <= self.hi or (v == self.lo and not self.lo_open):
            return v
        if self.kind is float:
            lo = f"above {_num(self.lo)} and at most" if self.lo_open else f"between {_num(self.lo)} and"
            raise argparse.ArgumentTypeError(f"must be {lo} {_num(self.hi)}, got {text}")
        side = f"at least {_num(self.lo)}" if v < self.lo else f"at most {_num(self.hi)}"
        raise argparse.ArgumentTypeError(f"must be {side} ({self.range}), got {text}")


@dataclass(frozen=True)
class BoundList:
    """A comma list of values each within ``bound`` (``--k 4,8``); parsing returns the text unchanged."""

    bound: Bound

    @property
    def range(self) -> str:
        return f"each {self.bound.range}"

    def __call__(self, text: str) -> str:
        for t in str(text).split(","):
            if t.strip():
                try:
                    self.bound(t.strip())
                except argparse.ArgumentTypeError:
                    raise argparse.ArgumentTypeError(f"must be a comma list of values {self.range}, got {text!r} "
                                                     f"({t.strip()!r})") from None
        return text


def _num(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) and abs(x) >= 10_000 else f"{x:g}"


def add_bounded(p: argparse.ArgumentParser, flag: str, bound: Bound | BoundList, help: str, *, shown_default: Any = None,
                **kw: Any) -> None:
    """``p.add_argument(flag, type=bound, ...)`` with the range and the default (``default``, else
    ``shown_default``: one applied later) appended to ``help``."""
    default = kw.get("default", shown_default)
    shown = default if isinstance(default, str) else None if default is None else _num(default)
    extra = bound.range if shown is None else f"{bound.range}, default {shown}"
    p.add_argument(flag, type=bound, help=f"{help} ({extra})", **kw)


def bound_options(p: argparse.ArgumentParser, bounds: "dict[str, Bound | BoundList]") -> None:
    """Give the options of ``p`` named in ``bounds`` (by ``dest``) their bound as argparse ``type``
    and their range (and default) in ``--help``: for a parser whose options are declared as a block."""
    for action in p._actions:
        bound = bounds.get(action.dest)
        if bound is None:
            continue
        action.type = bound
        d = action.default
        shown = "" if d is None else f", default {' '.join(map(_num, d)) if isinstance(d, list) else _num(d)}"
        action.help = f"{action.help} ({bound.range}{shown})" if action.help else f"{bound.range}{shown}"


# the generator's knobs (GeneratorConfig checks them for library callers): a row holds 2..8 context
# items and 0..4 demonstrations (the grid the profiles define); 10,000 instances per task is
# ~5.8 M v1 records, several GB of JSON Lines, far more than any evaluation draws
GENERATOR_RANGES = {"cxt_len": (2, 8), "n_demos": (0, 4), "n_per_task": (1, 10_000)}
GENERATE = {k: Bound(lo, hi) for k, (lo, hi) in GENERATOR_RANGES.items()}
# seeds: numpy's and torch's generators are seeded from 32-bit words; a wider seed buys no stream a
# user could tell apart, and a 400-digit one is a typo
SEED = Bound(0, 2**32 - 1)
# torch threads: more than the cores of any machine we know of is oversubscription, never faster
THREADS = Bound(0, 1024)

__all__ = ["Bound", "BoundList", "GENERATE", "GENERATOR_RANGES", "SEED", "THREADS", "add_bounded", "bound_options"]
