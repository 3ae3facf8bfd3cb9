"""Reading and writing GAR record files (JSON Lines or Parquet), atomically.

``write_records`` streams to a temporary file in the target's directory, fsyncs it and moves it
into place with ``os.replace``: a reader never sees a half-written file, and on any failure
(including Ctrl-C and SIGTERM, which the CLI turns into an exception) the temporary file is
removed and whatever was at ``path`` before is left untouched.
Parquet files carry the record ``Features`` (``records.features()``), so
``datasets.load_dataset("parquet", data_files=...)`` reads them back with the declared types.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import GARConfigError, GARDataError
from .records import GARRecord

FORMATS = ("jsonl", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}


# records per Parquet row group: memory while writing is bounded by one group, not the file
ROW_GROUP = 1000
PARQUET_BUFFER = 1 << 20  # bytes read at a time from a Parquet column chunk
# Parquet rows turned into Python objects at a time: decoding a whole row group at once scatters the
# few strings a consumer keeps per record (validate: ids, pair ids) over the heap pages of a thousand
# records, which then cannot be given back (peak memory grew ~0.45 KB per record; in 16-row slices
# it grows as with JSON Lines: scripts/bench_validate_memory.py, docs/benchmarks.md)
DECODE_ROWS = 16
# longest JSON line read (characters): a GAR record is a few KB; /dev/zero must not read forever
MAX_LINE = 8 * 1024 * 1024


def resolve_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``fmt`` if given (checked, and it must agree with a known suffix of ``path``), else the
    format named by ``path``'s suffix."""
    suffix = Path(path).suffix.lower()
    if fmt is not None:
        if fmt not in FORMATS:
            raise GARConfigError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
        if suffix in _SUFFIXES and _SUFFIXES[suffix] != fmt:
            raise GARConfigError(f"format {fmt} does not match the suffix of {os.fspath(path)!r} "
                                 f"({_SUFFIXES[suffix]}); name the file .{fmt}")
        return fmt
    if suffix not in _SUFFIXES:
        raise GARConfigError(f"cannot tell the format of {os.fspath(path)!r} from its suffix "
                             f"{suffix or '(none)'!r}; use .jsonl or .parquet, or give the format")
    return _SUFFIXES[suffix]


def _why(e: OSError) -> str:
    return e.strerror or (str(e).splitlines() or [""])[0] or e.__class__.__name__


def check_writable(path: str | os.PathLike) -> Path:
    """Raise ``GARDataError`` unless a file can be created (or replaced) at ``path``; return the
    path to write (a symbolic link is followed, so the link keeps pointing at the new file)."""
    try:
        p = _follow(path)
        if p.is_dir():
            raise GARDataError(f"cannot write {os.fspath(path)!r}: it is a directory")
        parent = p.parent
        if not parent.exists():
            raise GARDataError(f"cannot write {os.fspath(path)!r}: directory {os.fspath(parent)!r} does not exist")
        if not parent.is_dir():
            raise GARDataError(f"cannot write {os.fspath(path)!r}: {os.fspath(parent)!r} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise GARDataError(f"cannot write {os.fspath(path)!r}: directory {os.fspath(parent)!r} is not writable")
    except OSError as e:  # ENAMETOOLONG, ELOOP, EACCES on a path component
        raise GARDataError(f"cannot write {os.fspath(path)!r}: {_why(e)}") from None
    return p


def _follow(path: str | os.PathLike) -> Path:
    """``path``, or where the symbolic link ``path`` points (a dangling link: its target path;
    a link loop raises ``OSError`` ELOOP)."""
    if not os.path.islink(path):
        return Path(path)
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        return Path(os.path.realpath(path))


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

    ``records`` may be a lazy iterator: both formats stream (Parquet in row groups of
    ``ROW_GROUP`` records), so memory does not grow with the number of records. The file is
    fsynced, given mode 0644 (under the usual umask; a replaced file keeps its mode) and renamed
    into place. After the cleanup an ``OSError`` is re-raised as a ``GARDataError`` naming ``path``;
    any other exception (including one raised while iterating ``records``) propagates unchanged.
    """
    fmt = resolve_format(path, fmt)
    p = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name[:40]}.", suffix=".tmp", dir=p.parent)
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
                with os.fdopen(fd, "wb") as f:
                    fd = -1
                    n = _write_parquet(records, f)
                    f.flush()
                    os.fsync(f.fileno())
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


def _write_parquet(records: Iterable[GARRecord], f) -> int:
    """Stream ``records`` into the open binary file ``f`` as Parquet, one row group per
    ``ROW_GROUP`` records, with the record ``Features`` in the schema metadata (what
    ``Dataset.to_parquet`` writes, so ``datasets`` reads the declared types back)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .records import features

    schema = features().arrow_schema
    n = 0
    with pq.ParquetWriter(f, schema) as writer:
        batch: list[dict] = []
        for r in records:
            batch.append(r.to_dict())
            if len(batch) == ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n += len(batch)
                batch = []
        if batch or n == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    return n


def read_records(path: str | os.PathLike, fmt: str | None = None) -> list[GARRecord]:
    """All records of a JSON Lines or Parquet file (format from the suffix unless given)."""
    fmt = resolve_format(path, fmt)
    return [_record(d, f"{os.fspath(path)}, {where}") for where, d in iter_dicts(path, fmt)]


def read_dicts(path: str | os.PathLike, fmt: str | None = None) -> list[tuple[str, Any]]:
    """(location such as 'line 3' or 'row 3', decoded object) per record of a JSON Lines or
    Parquet file; one reader for every consumer (records, the validator, published files)."""
    return list(iter_dicts(path, fmt))


def iter_dicts(path: str | os.PathLike, fmt: str | None = None) -> Iterator[tuple[str, Any]]:
    """``read_dicts`` one record at a time (memory independent of the file size). Any readable
    file works: a FIFO, ``/dev/stdin`` or a shell's ``<(zcat f.jsonl.gz)``; a line longer than
    ``MAX_LINE`` characters (``/dev/zero``) is an error, not an endless read."""
    p = Path(path)
    try:
        if p.is_dir():
            raise GARDataError(f"{p}: cannot read a directory")
        if not p.exists():
            raise GARDataError(f"{p}: no such file")
    except OSError as e:
        raise GARDataError(f"{p}: cannot read: {_why(e)}") from None
    if (fmt or ("parquet" if p.suffix.lower() == ".parquet" else "jsonl")) == "parquet":
        yield from _iter_parquet(p)
        return
    try:
        with p.open(encoding="utf-8", newline="\n") as f:
            n = 0
            while True:
                line = f.readline(MAX_LINE + 1)
                if not line:
                    break
                n += 1
                if len(line) > MAX_LINE:
                    raise GARDataError(f"{p}, line {n}: longer than {MAX_LINE:,} characters; not a GAR "
                                       f"JSON Lines file")
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GARDataError(f"{p}, line {n}: invalid JSON ({e.msg}, column {e.colno})") from None
                except RecursionError:
                    raise GARDataError(f"{p}, line {n}: JSON nested too deeply to be a GAR record") from None
                yield f"line {n}", d
    except UnicodeDecodeError as e:
        raise GARDataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise GARDataError(f"{p}: cannot read: {_why(e)}") from None


def _iter_parquet(p: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    def bad(e: Exception) -> GARDataError:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return GARDataError(f"{p}: cannot read parquet: {first}")

    try:  # column chunks through a small buffer, not pre-buffered whole (see below)
        pf = pq.ParquetFile(p, pre_buffer=False, buffer_size=PARQUET_BUFFER)
    except Exception as e:  # pyarrow raises many types for a bad file
        raise bad(e) from None
    i = 0
    try:
        # one reader per row group, released after it: Arrow holds one group at most, whatever the
        # file's size; rows are decoded DECODE_ROWS at a time (see there)
        for g in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=DECODE_ROWS, row_groups=[g]):
                for r in batch.to_pylist():
                    i += 1
                    yield f"row {i}", r
    except GARDataError:
        raise
    except Exception as e:
        raise bad(e) from None


def _record(d: object, where: str) -> GARRecord:
    if not isinstance(d, dict):
        raise GARDataError(f"{where}: expected a JSON object, got {type(d).__name__}")
    try:
        return GARRecord.from_dict(d)
    except KeyError as e:
        raise GARDataError(f"{where}: not a GAR record: missing field {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise GARDataError(f"{where}: not a GAR record: {e}") from None
