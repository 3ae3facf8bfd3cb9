"""Everything the interp commands write: atomic files, npz, versions, timings, and the one
checkpointed batch loop with resume.

Every file is written to a hidden temporary sibling, flushed and ``fsync``-ed, given mode 0644
(like ``gar generate``'s outputs; ``mkstemp`` alone would leave 0600), and renamed into place, so
an interruption leaves only whole files.

A user's files are never touched: :func:`locked_dir` holds a lock on the output folder for the run
(a second writer gets a clear error), :class:`Manifest` lets a command overwrite only files that a
previous run of the same command wrote (its main JSON lists them), and :meth:`Checkpoint.discard`
deletes only the checkpoint files it recognises.

:class:`Checkpoint` is the one resume mechanism: a folder holding ``args.json`` (what defines the
run; another run's checkpoint is refused), cached values (:meth:`Checkpoint.value`: JSON computed
once, e.g. the chosen pairs) and one npz per finished batch (:meth:`Checkpoint.batches`: a rerun
loads finished batches and computes only the rest).
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import re
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
        raise GARConfigError(f"output folder {p} exists and is not a folder")
    for parent in p.absolute().parents:  # the nearest existing ancestor must be a folder we can write in
        if parent.exists():
            if not parent.is_dir():
                raise GARConfigError(f"output folder {p}: {parent} is not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise GARConfigError(f"output folder {p}: {parent} is not writable")
            break
    return p


Progress = Callable[[str, int, int], Any]


BATCH_FILE = re.compile(r"^[a-z]+_[A-Za-z0-9]+_\d{5}\.npz$")


def _try_lock(fd: int, out: Path) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GARConfigError(f"another gar run is writing to {out}: wait for it to finish, or choose another "
                             "--out") from None


def check_unlocked(out: str | Path) -> None:
    """Refuse early (before a model loads) when another run holds ``out``'s lock; creates nothing."""
    import fcntl

    out = Path(out)
    if out.is_dir():
        fd = os.open(out, os.O_RDONLY)
        _try_lock(fd, out)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def locked_dir(out: str | Path) -> Iterator[Path]:
    """Create ``out`` and hold an exclusive lock on it for the duration (``flock`` on the folder
    itself: nothing is added to it, and the lock dies with the process). A second writer is refused."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    _try_lock(fd, out)
    try:
        yield out
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class Manifest:
    """The files a command writes to an output folder, listed in its main JSON (``main``) under
    ``"written_by": {"command": ..., "files": [...]}``; only those may be overwritten by a rerun.

    ``legacy_key``: a key every main JSON of this command had before manifests (outputs of an older
    version count as ours for the command's standard ``files``).
    """

    def __init__(self, out: str | Path, command: str, main: str, files: Sequence[str], legacy_key: str) -> None:
        self.out, self.command, self.main, self.legacy_key = Path(out), command, main, legacy_key
        self.files = list(dict.fromkeys([main, *files]))

    def owned(self) -> set[str]:
        """Names (or, for outputs of an older version, name patterns) of the folder's files that a
        previous run of this command wrote."""
        f = self.out / self.main
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            return set()
        if not isinstance(info, dict):
            return set()
        w = info.get("written_by")
        if isinstance(w, dict) and w.get("command") == self.command:
            return {str(x) for x in w.get("files", [])}
        return set(self.files) if self.legacy_key in info and "written_by" not in info else set()

    def check(self, files: Sequence[str] | None = None) -> None:
        """Refuse (before any work) when a file we would write exists and is not ours."""
        if not self.out.is_dir():
            return
        present: list[Path] = []
        for n in (files if files is not None else self.files):
            present += sorted(self.out.glob(n)) if "*" in n else [self.out / n] if (self.out / n).exists() else []
        if not present:
            return
        owned = self.owned()
        foreign = sorted(p.name for p in present if not any(fnmatch.fnmatch(p.name, o) for o in owned))
        if foreign:
            raise GARConfigError(f"--out {self.out} holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, "
                                 f"not written by a previous gar {self.command} run: choose a new or empty folder "
                                 "(nothing is overwritten that another program or you wrote)")

    def stamp(self, info: dict[str, Any], files: Sequence[str]) -> dict[str, Any]:
        """``info`` with the manifest of the files this run writes (the main JSON included)."""
        info["written_by"] = {"command": self.command, "files": sorted({self.main, *files})}
        return info


class Checkpoint:
    """Per-run resume state in ``OUT/checkpoint`` (see the module docstring).

    ``identity`` is the JSON-able description of the run a checkpoint must match. ``values``: the
    names (glob patterns) of the values :meth:`value` stores, so :meth:`discard` knows them.
    """

    def __init__(self, out: str | Path, identity: dict[str, Any], name: str = "checkpoint",
                 values: Sequence[str] = ()) -> None:
        self.dir = Path(out) / name
        self.identity = identity
        self.values = ("args.json", *values)
        self.counts: dict[str, int] = {}

    def check(self) -> bool:
        """True when a checkpoint of this run exists; refuses another run's (reads only)."""
        f = self.dir / "args.json"
        if not f.exists():
            return False
        try:
            old = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise GARConfigError(f"cannot read the checkpoint file {f} ({e}); pass --restart to discard the "
                                 "checkpoint") from None
        new = self.identity
        if old != new:
            if {k: v for k, v in old.items() if k != "model_fingerprint"} == \
                    {k: v for k, v in new.items() if k != "model_fingerprint"}:
                raise GARConfigError(f"{self.dir} holds a checkpoint of another model (same name, but its config "
                                     "or weight files changed): resuming would mix two models' scores; pass "
                                     "--restart to discard it, or choose another --out")
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                             if old.get(k) != new.get(k))
            raise GARConfigError(f"{self.dir} holds a checkpoint of a run with other arguments ({diff}); "
                                 "pass --restart to discard it, or choose another --out")
        return True

    def recognised(self, name: str) -> bool:
        """A file this checkpoint writes (or a temporary of one)."""
        if name.startswith(".") and name.endswith(".tmp"):
            name = name[1:].rsplit(".", 2)[0]
        return bool(BATCH_FILE.match(name)) or any(fnmatch.fnmatch(name, v) for v in self.values)

    def discard(self) -> list[str]:
        """Delete the checkpoint files we recognise (never anything else: the folder stays when other
        files are in it); returns the names left."""
        if not self.dir.is_dir():
            return []
        left = []
        for f in self.dir.iterdir():
            if f.is_file() and not f.is_symlink() and self.recognised(f.name):
                f.unlink()
            else:
                left.append(f.name)
        if not left:
            self.dir.rmdir()
        return sorted(left)

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
            try:
                return decode(json.loads(f.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise GARConfigError(f"cannot read the checkpoint file {f} ({e}); pass --restart to discard the "
                                     "checkpoint") from None
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
                try:
                    d = load_npz(f)
                except (OSError, ValueError, EOFError) as e:
                    raise GARConfigError(f"cannot read the checkpoint file {f} ({e}); pass --restart to discard "
                                         "the checkpoint") from None
            else:
                d = compute(i)
                save_npz(f, **d)
                self.counts[f"{kind}_batches"] += 1
            yield d
            del d
            if progress is not None:
                progress(stage or f"{kind} {tag}", i + 1, n_batches)


def is_cache_file(path: str | Path) -> bool:
    """An npz written by :func:`cached_arrays` (it holds a JSON ``meta``)."""
    try:
        z = load_npz(path)
        return isinstance(json.loads(str(z["meta"])), dict)
    except (OSError, ValueError, KeyError, EOFError):
        return False


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


__all__ = ["BATCH_FILE", "Checkpoint", "FILE_MODE", "Manifest", "Progress", "Timings", "atomic_write", "cached_arrays",
           "check_out_dir", "check_unlocked", "is_cache_file", "is_leftover", "load_npz", "locked_dir", "save_npz", "versions", "write_json"]
