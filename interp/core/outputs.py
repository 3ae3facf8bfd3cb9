"""Everything the interp commands write: atomic files, npz, versions, timings, the manifest of a
run's files, and the one checkpointed batch loop with resume.

Every file is written to a hidden temporary sibling, flushed and ``fsync``-ed, given mode 0644
(like ``gar generate``'s outputs; ``mkstemp`` alone would leave 0600), and renamed into place, so
an interruption leaves only whole files.

A run owns its files from the first byte. :meth:`Manifest.own` locks the output folder (a second
writer gets a clear error), writes ``OUT/.gar_manifest.json`` (the command, its arguments, the
files it wrote) *before* any output, and while it is open :func:`atomic_write` adds each file's
name to the manifest (atomically: temporary + rename) *before* the file appears. An interruption at
any point (Ctrl-C, SIGTERM, kill -9, a full disk) therefore leaves every file of the run listed, so
a rerun or ``--restart`` recognises them all. A user's files are never touched: a rerun refuses to
replace a file that its command's manifest does not list, and :meth:`Checkpoint.discard` deletes
only checkpoint files the manifest lists (never guessed from their names).

:class:`Checkpoint` is the one resume mechanism: a folder holding ``args.json`` (what defines the
run; another run's checkpoint is refused), cached values (:meth:`Checkpoint.value`: JSON computed
once, e.g. the chosen pairs) and one npz per finished batch (:meth:`Checkpoint.batches`: a rerun
loads finished batches and computes only the rest).
"""

from __future__ import annotations

import contextvars
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

from .identity import comparable

FILE_MODE = 0o644
MANIFEST = ".gar_manifest.json"
MANIFEST_FORMAT = 1
VERSIONED = ("torch", "transformers", "nnsight", "accelerate", "numpy", "gar-eval")


def _replace_atomically(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, mode 0644, rename).

    Inside an open :meth:`Manifest.own` whose folder holds ``path``, the name is added to that run's
    manifest first (so an interruption never leaves an unlisted file of ours), and a file there that
    the run does not own is refused rather than replaced."""
    path = Path(path)
    owner = _owner_of(path)
    if owner is not None:
        owner.claim(path)
    return _replace_atomically(path, data.encode() if isinstance(data, str) else data)


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


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def temporary_of(name: str) -> str | None:
    """The file name an :func:`atomic_write` temporary (``.NAME.XXXXXXXX.tmp``) was for, else None."""
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
        return name[1:].rsplit(".", 2)[0]
    return None


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


_ACTIVE: contextvars.ContextVar[tuple["Manifest", ...]] = contextvars.ContextVar("gar_active_manifests", default=())


def _owner_of(path: Path) -> "Manifest | None":
    """The open manifest whose folder holds ``path`` (None: not inside a run's folder)."""
    active = _ACTIVE.get()
    if not active:
        return None
    parent = path.absolute().parent.resolve()
    for m in reversed(active):
        root = m.out.resolve()
        if parent == root or root in parent.parents:
            return m
    return None


class Manifest:
    """The files a command wrote to an output folder, in ``OUT/.gar_manifest.json``:
    ``{"gar_manifest": 1, "command", "args", "files": [relative paths]}``. Only listed files may be
    replaced or deleted by a rerun of the same command (see the module docstring).

    ``files``: the names (glob patterns allowed) the command writes, checked before any work.
    ``legacy_key``: a key every main JSON of this command had before the manifest file; such a
    folder's main JSON lists its files under ``"written_by"`` (or, older still, its command's
    standard ``files`` count as ours), and the first run there moves that list into the manifest.
    """

    def __init__(self, out: str | Path, command: str, main: str, files: Sequence[str], legacy_key: str) -> None:
        self.out, self.command, self.main, self.legacy_key = Path(out), command, main, legacy_key
        self.files = list(dict.fromkeys([main, *files]))
        self.listed: list[str] | None = None  # while open (:meth:`own`): the manifest's files
        self.args: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.out / MANIFEST

    def record(self) -> dict[str, Any] | None:
        """The folder's manifest (None: there is none); refuses one that is not gar's or unreadable."""
        f = self.path
        if not f.exists():
            return None
        try:
            rec = json.loads(f.read_text())
            if not isinstance(rec, dict) or rec.get("gar_manifest") != MANIFEST_FORMAT or \
                    not isinstance(rec.get("command"), str) or not isinstance(rec.get("files"), list):
                raise ValueError("not a gar manifest")
        except (OSError, ValueError) as e:
            raise GARConfigError(f"--out {self.out} holds {MANIFEST}, which gar cannot read ({e}): choose a new or "
                                 "empty folder (nothing is overwritten that another program or you wrote)") from None
        return rec

    def owned(self) -> set[str]:
        """Names (relative paths; for outputs of an older version, name patterns) of the folder's files
        that a previous run of this command wrote."""
        if self.listed is not None:
            return set(self.listed)
        rec = self.record()
        if rec is not None:
            return {str(x) for x in rec["files"]} if rec["command"] == self.command else set()
        f = self.out / self.main
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            return set()
        if not isinstance(info, dict):
            return set()
        w = info.get("written_by")
        if isinstance(w, dict) and w.get("command") == self.command:  # the checkpoint was never listed there
            return {str(x) for x in w.get("files", [])} | {f for f in self.files if f.startswith("checkpoint/")}
        return set(self.files) if self.legacy_key in info and "written_by" not in info else set()

    def owns(self, name: str, owned: set[str] | None = None) -> bool:
        """Whether ``name`` (a path relative to the folder; an interrupted write's temporary
        included) is a file of this command's runs."""
        owned = self.owned() if owned is None else owned
        head, _, base = name.rpartition("/")
        target = temporary_of(base)
        if target is not None:
            name = f"{head}/{target}" if head else target
        return name in owned or any(fnmatch.fnmatch(name, o) for o in owned if "*" in o)

    def check(self, files: Sequence[str] | None = None) -> None:
        """Refuse (before any work) a folder that another gar command owns, or where a file we would
        write exists and is not ours."""
        if not self.out.is_dir():
            return
        rec = self.record()
        if rec is not None and rec["command"] != self.command:
            raise GARConfigError(f"--out {self.out} holds the outputs of a gar {rec['command']} run (its {MANIFEST}), "
                                 f"not of gar {self.command}: choose a new or empty folder")
        present: list[str] = []
        for n in (files if files is not None else self.files):
            present += sorted(p.relative_to(self.out).as_posix() for p in self.out.glob(n)) if "*" in n else \
                [n] if (self.out / n).exists() else []
        if not present:
            return
        owned = self.owned()
        foreign = sorted(n for n in present if not self.owns(n, owned))
        if foreign:
            more = ", ..." if len(foreign) > 3 else ""
            raise GARConfigError(f"--out {self.out} holds {', '.join(foreign[:3])}{more}, "
                                 f"not written by a previous gar {self.command} run: choose a new or empty folder "
                                 "(nothing is overwritten that another program or you wrote)")

    @contextmanager
    def own(self, args: dict[str, Any] | None = None, check: Callable[[], Any] | None = None) -> Iterator[Path]:
        """Lock the folder (:func:`locked_dir`), check it again under the lock (and call ``check``,
        a command's own checks), write the manifest (this command, ``args``, and the files of earlier
        runs still present) before anything else, and, until the block ends, list every file
        :func:`atomic_write` puts in the folder."""
        with locked_dir(self.out):
            self.check()
            if check is not None:
                check()
            owned = self.owned()
            keep = set()
            for n in owned:  # listed names whose file (or an interrupted write of it) is still there
                if "*" not in n and ((self.out / n).exists() or self._temporaries(n)):
                    keep.add(n)
            for pattern in (o for o in owned if "*" in o):  # an older version's name patterns
                keep |= {p.relative_to(self.out).as_posix() for p in self.out.glob(pattern) if p.is_file()}
            self.listed = sorted(keep)
            self.args = args
            self._save()
            token = _ACTIVE.set((*_ACTIVE.get(), self))
            try:
                yield self.out
            finally:
                _ACTIVE.reset(token)
                self.listed = None

    def _save(self) -> None:
        rec = {"gar_manifest": MANIFEST_FORMAT, "command": self.command, "args": self.args,
               "files": self.listed or []}
        _replace_atomically(self.path, json.dumps(rec, indent=1, default=str).encode())

    def claim(self, path: Path) -> None:
        """Before ``path`` is written: list it (a new name: the manifest is rewritten first); refuse a
        file there that is not ours."""
        assert self.listed is not None
        name = (Path(os.path.relpath(path.absolute().parent.resolve(), self.out.resolve())) / path.name).as_posix()
        if name == MANIFEST:
            raise GARConfigError(f"{path}: {MANIFEST} is gar's own record of the folder's files")
        if name in self.listed:
            return
        if path.exists() or path.is_symlink():
            raise GARConfigError(f"{path} exists and was not written by gar {self.command}: not replaced")
        self.listed.append(name)
        self._save()

    def _temporaries(self, name: str) -> list[Path]:
        f = self.out / name
        return list(f.parent.glob(f".{glob_escape(f.name)}.*.tmp")) if f.parent.is_dir() else []

    def forget(self, name: str) -> None:
        """After a listed file was deleted: drop it from the manifest."""
        if self.listed is not None and name in self.listed:
            self.listed.remove(name)
            self._save()

    def stamp(self, info: dict[str, Any], files: Sequence[str]) -> dict[str, Any]:
        """``info`` with the files this run wrote (the main JSON included), for the reader of the main
        JSON (ownership itself is in the manifest file)."""
        info["written_by"] = {"command": self.command, "files": sorted({self.main, *files})}
        return info


class Checkpoint:
    """Per-run resume state in ``OUT/checkpoint`` (see the module docstring).

    ``identity`` is the JSON-able description of the run a checkpoint must match (its
    ``model_fingerprint``, :func:`interp.core.loader.model_fingerprint`, is what the model *is*: the
    model's name or path is not compared when both sides record one). ``owner``: the run's
    :class:`Manifest`, which alone says which checkpoint files are ours. ``values``: the names (glob
    patterns) of the values :meth:`value` stores, checked with the outputs before any work.
    """

    def __init__(self, out: str | Path, identity: dict[str, Any], owner: Manifest, name: str = "checkpoint",
                 values: Sequence[str] = ()) -> None:
        self.name = name
        self.dir = Path(out) / name
        self.identity = identity
        self.owner = owner
        self.values = ("args.json", *values)
        self.counts: dict[str, int] = {}

    def check(self) -> bool:
        """True when a checkpoint of this run exists; refuses another run's (reads only)."""
        f = self.dir / "args.json"
        if not f.exists():
            return False
        try:
            old = json.loads(f.read_text())
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise GARConfigError(f"cannot read the checkpoint file {f} ({e}); pass --restart to discard the "
                                 "checkpoint") from None
        new = self.identity
        key = "model_fingerprint"
        if old.get(key) and new.get(key) and old[key] != new[key] and not comparable(old[key], new[key]):
            raise GARConfigError(f"{self.dir} holds a checkpoint of an older gar, which recorded the model by its "
                                 "files' sizes and times, not their content: pass --restart to discard it, or "
                                 "choose another --out")
        if old.get(key) and new.get(key):  # the model is what it is, wherever it lies
            old = {k: v for k, v in old.items() if k != "model"} | {"model_name": old.get("model")}
            new = {k: v for k, v in new.items() if k != "model"} | {"model_name": old["model_name"]}
        if old != new:
            if {k: v for k, v in old.items() if k != key} == {k: v for k, v in new.items() if k != key}:
                raise GARConfigError(f"{self.dir} holds a checkpoint of another model ({old.get('model_name')!r}, "
                                     f"content {old.get(key)}; this run's {self.identity.get('model')!r} is content "
                                     f"{new.get(key)}): resuming would mix two models' scores; pass --restart to "
                                     "discard it, or choose another --out")
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                             if old.get(k) != new.get(k))
            raise GARConfigError(f"{self.dir} holds a checkpoint of a run with other arguments ({diff}); "
                                 "pass --restart to discard it, or choose another --out")
        return True

    def discard(self) -> list[str]:
        """Delete the checkpoint files the run's manifest lists (never anything else: the folder stays
        when other files are in it); returns the names left."""
        if not self.dir.is_dir():
            return []
        owned = self.owner.owned()
        left = []
        for f in sorted(self.dir.iterdir()):
            rel = f"{self.name}/{f.name}"
            if f.is_file() and not f.is_symlink() and self.owner.owns(rel, owned):
                f.unlink()
                self.owner.forget(rel)
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
            if f.exists() and not self.owner.owns(f"{self.name}/{f.name}"):
                raise GARConfigError(f"{f} was not written by a previous gar {self.owner.command} run: not replaced; "
                                     "choose a new or empty folder")
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


def cached_arrays(path: str | Path, meta: dict[str, Any], make: Callable[[], dict[str, Any]],
                  ignore: Sequence[str] = ()) -> tuple[dict[str, Any], bool]:
    """Arrays cached at ``path`` together with the ``meta`` they were made from: loaded when the
    stored meta equals ``meta`` (the keys in ``ignore``, descriptions such as a model's path, aside),
    else made by ``make()`` and saved. Returns ``(arrays, loaded)``."""
    import numpy as np

    path = Path(path)

    def key(m: Any) -> Any:
        return {k: v for k, v in m.items() if k not in ignore} if isinstance(m, dict) else m

    if path.is_file():
        try:
            z = load_npz(path)
            if key(json.loads(str(z.pop("meta")))) == key(meta):
                return z, True
        except (OSError, ValueError, KeyError, EOFError):
            pass
    arrays = make()
    save_npz(path, meta=np.array(json.dumps(meta)), **arrays)
    return arrays, False


__all__ = ["Checkpoint", "FILE_MODE", "MANIFEST", "Manifest", "Progress", "Timings", "atomic_write", "cached_arrays",
           "check_out_dir", "check_unlocked", "glob_escape", "is_cache_file", "is_leftover", "load_npz", "locked_dir",
           "save_npz", "temporary_of", "versions", "write_json"]
