"""Everything the interp commands write: atomic files, npz, versions, timings, and the one
checkpointed batch loop with resume.

Every file is written to a hidden temporary sibling, flushed and ``fsync``-ed, given mode 0644
(like ``gar generate``'s outputs; ``mkstemp`` alone would leave 0600), and renamed into place, so
an interruption leaves only whole files.

:class:`Checkpoint` is the one resume mechanism: a folder holding ``args.json`` (what defines the
run; another run's checkpoint is refused), cached values (:meth:`Checkpoint.value`: JSON computed
once, e.g. the chosen pairs) and one npz per finished batch (:meth:`Checkpoint.batches`: a rerun
loads finished batches and computes only the rest).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from gar_tasks.errors import GARConfigError

FILE_MODE = 0o644
VERSIONED = ("torch", "transformers", "nnsight", "accelerate", "numpy", "gar-eval")


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, mode 0644, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as JSON (numpy scalars as floats), atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, default=float))


def save_npz(path: str | Path, **arrays: Any) -> Path:
    """Arrays as an uncompressed ``.npz``, atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write(path, buf.getvalue())


def load_npz(path: str | Path) -> dict[str, Any]:
    """Every array of an ``.npz`` file, read into memory (the file is closed)."""
    import numpy as np

    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def is_leftover(name: str, outputs: Sequence[str]) -> bool:
    """A temporary file of an interrupted :func:`atomic_write` of one of ``outputs``."""
    return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{o}.") for o in outputs)


def versions() -> dict[str, str]:
    """Python and library versions, recorded in every output."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


class Timings(dict):
    """Seconds per stage: ``with timings("load"): ...`` adds the stage's wall time."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - t

    def total(self) -> float:
        self["total"] = time.perf_counter() - self.t0
        return self["total"]


def check_out_dir(out: str | Path) -> Path:
    """``out`` as a Path; refuses an existing non-folder (before any work)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise GARConfigError(f"--out {p} exists and is not a folder")
    return p


Progress = Callable[[str, int, int], Any]


class Checkpoint:
    """Per-run resume state in ``OUT/checkpoint`` (see the module docstring).

    ``identity`` is the JSON-able description of the run a checkpoint must match.
    """

    def __init__(self, out: str | Path, identity: dict[str, Any], name: str = "checkpoint") -> None:
        self.dir = Path(out) / name
        self.identity = identity
        self.counts: dict[str, int] = {}

    def check(self) -> bool:
        """True when a checkpoint of this run exists; refuses another run's (reads only)."""
        f = self.dir / "args.json"
        if not f.exists():
            return False
        old = json.loads(f.read_text())
        new = self.identity
        if old != new:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                             if old.get(k) != new.get(k))
            raise GARConfigError(f"{self.dir} holds a checkpoint of a run with other arguments ({diff}); "
                                 "pass --restart to discard it, or choose another --out")
        return True

    def discard(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def open(self, restart: bool = False) -> bool:
        """Create (or, ``restart``, recreate) the folder; True when resuming a matching one."""
        if restart:
            self.discard()
        if self.check():
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "args.json", self.identity)
        return False

    def path(self, name: str) -> Path:
        return self.dir / name

    def value(self, name: str, make: Callable[[], Any], encode: Callable[[Any], Any] = lambda v: v,
              decode: Callable[[Any], Any] = lambda v: v) -> Any:
        """A JSON value computed once per run (``name``), loaded on resume."""
        f = self.path(name)
        if f.exists():
            return decode(json.loads(f.read_text()))
        v = make()
        atomic_write(f, json.dumps(encode(v)))
        return v

    def batches(self, kind: str, tag: str, n_batches: int, compute: Callable[[int], dict[str, Any]],
                progress: Progress | None = None, stage: str | None = None) -> Iterator[dict[str, Any]]:
        """The one checkpointed batch loop: yields batch ``i``'s arrays for ``i`` in ``range(n_batches)``,
        loaded from ``{kind}_{tag}_{i:05d}.npz`` when finished before, else ``compute(i)`` and saved.

        ``counts`` gets ``{kind}_batches`` (computed) and ``{kind}_batches_loaded``.
        """
        self.counts.setdefault(f"{kind}_batches", 0)
        self.counts.setdefault(f"{kind}_batches_loaded", 0)
        for i in range(n_batches):
            f = self.path(f"{kind}_{tag}_{i:05d}.npz")
            if f.exists():
                self.counts[f"{kind}_batches_loaded"] += 1
                d = load_npz(f)
            else:
                d = compute(i)
                save_npz(f, **d)
                self.counts[f"{kind}_batches"] += 1
            yield d
            del d
            if progress is not None:
                progress(stage or f"{kind} {tag}", i + 1, n_batches)


def cached_arrays(path: str | Path, meta: dict[str, Any], make: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Arrays cached at ``path`` together with the ``meta`` they were made from: loaded when the
    stored meta equals ``meta``, else made by ``make()`` and saved. Returns ``(arrays, loaded)``."""
    import numpy as np

    path = Path(path)
    if path.is_file():
        try:
            z = load_npz(path)
            if json.loads(str(z.pop("meta"))) == meta:
                return z, True
        except (OSError, ValueError, KeyError):
            pass
    arrays = make()
    save_npz(path, meta=np.array(json.dumps(meta)), **arrays)
    return arrays, False


__all__ = ["Checkpoint", "FILE_MODE", "Progress", "Timings", "atomic_write", "cached_arrays", "check_out_dir",
           "is_leftover", "load_npz", "save_npz", "versions", "write_json"]
