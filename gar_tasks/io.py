"""Reading and writing GAR record files (JSON Lines or Parquet), atomically.

``write_records`` writes to a temporary file in the target's directory and moves it into place
with ``os.replace``: a reader never sees a half-written file, and on any failure (including
Ctrl-C) the temporary file is removed and whatever was at ``path`` before is left untouched.
Parquet files carry the record ``Features`` (``records.features()``), so
``datasets.load_dataset("parquet", data_files=...)`` reads them back with the declared types.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import GARConfigError, GARDataError
from .records import GARRecord

FORMATS = ("jsonl", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}


def resolve_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``fmt`` if given (checked), else the format named by ``path``'s suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise GARConfigError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise GARConfigError(f"cannot tell the format of {os.fspath(path)!r} from its suffix "
                             f"{suffix or '(none)'!r}; use .jsonl or .parquet, or give the format")
    return _SUFFIXES[suffix]


def _why(e: OSError) -> str:
    return e.strerror or e.__class__.__name__


def check_writable(path: str | os.PathLike) -> Path:
    """Raise ``GARDataError`` unless a file can be created (or replaced) at ``path``."""
    p = Path(path)
    if p.is_dir():
        raise GARDataError(f"cannot write {os.fspath(path)!r}: it is a directory")
    parent = p.parent
    if not parent.exists():
        raise GARDataError(f"cannot write {os.fspath(path)!r}: directory {os.fspath(parent)!r} does not exist")
    if not parent.is_dir():
        raise GARDataError(f"cannot write {os.fspath(path)!r}: {os.fspath(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GARDataError(f"cannot write {os.fspath(path)!r}: directory {os.fspath(parent)!r} is not writable")
    return p


def _final_mode(path: Path) -> int:
    """The mode the written file gets: the replaced file's, else the usual 0o666 & ~umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_records(records: Iterable[GARRecord], path: str | os.PathLike, fmt: str | None = None) -> int:
    """Write ``records`` to ``path`` atomically; return how many were written.

    ``records`` may be a lazy iterator (JSON Lines are streamed; Parquet is collected first).
    After the cleanup an ``OSError`` is re-raised as a ``GARDataError`` naming ``path``; any other
    exception (including one raised while iterating ``records``) propagates unchanged.
    """
    fmt = resolve_format(path, fmt)
    p = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise GARDataError(f"cannot write {os.fspath(path)!r}: {_why(e)}") from None
    n = 0
    try:
        try:
            if fmt == "jsonl":
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                    fd = -1
                    for r in records:
                        f.write(json.dumps(r.to_dict(), ensure_ascii=False))
                        f.write("\n")
                        n += 1
                    f.flush()
                    os.fsync(f.fileno())
            else:
                os.close(fd)
                fd = -1
                rows = [r.to_dict() for r in records]
                n = len(rows)
                _write_parquet(rows, tmp)
            os.chmod(tmp, _final_mode(p))
            os.replace(tmp, p)
        except OSError as e:
            raise GARDataError(f"cannot write {os.fspath(path)!r}: {_why(e)}") from None
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return n


def _write_parquet(rows: list[dict], tmp: str) -> None:
    from datasets import Dataset
    from datasets.utils import logging as ds_logging

    from .records import features

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # a one-batch bar of its own is noise
    try:
        Dataset.from_list(rows, features=features()).to_parquet(tmp)
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: str | os.PathLike, fmt: str | None = None) -> list[GARRecord]:
    """All records of a JSON Lines or Parquet file (format from the suffix unless given)."""
    fmt = resolve_format(path, fmt)
    return [_record(d, f"{os.fspath(path)}, {where}") for where, d in read_dicts(path, fmt)]


def read_dicts(path: str | os.PathLike, fmt: str | None = None) -> list[tuple[str, Any]]:
    """(location such as 'line 3' or 'row 3', decoded object) per record of a JSON Lines or
    Parquet file; one reader for every consumer (records, the validator, published files)."""
    p = Path(path)
    if p.is_dir():
        raise GARDataError(f"{p}: cannot read a directory")
    if not p.is_file():
        raise GARDataError(f"{p}: no such file")
    if (fmt or ("parquet" if p.suffix.lower() == ".parquet" else "jsonl")) == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as e:  # pyarrow raises many types for a bad file
            raise GARDataError(f"{p}: cannot read parquet: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        return [(f"row {i}", r) for i, r in enumerate(rows, 1)]
    out = []
    try:
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise GARDataError(f"{p}, line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise GARDataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise GARDataError(f"{p}: cannot read: {_why(e)}") from None
    return out


def _record(d: object, where: str) -> GARRecord:
    if not isinstance(d, dict):
        raise GARDataError(f"{where}: expected a JSON object, got {type(d).__name__}")
    try:
        return GARRecord.from_dict(d)
    except KeyError as e:
        raise GARDataError(f"{where}: not a GAR record: missing field {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise GARDataError(f"{where}: not a GAR record: {e}") from None
