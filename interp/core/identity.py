"""What a model *is*: a content hash of its config, weight and tokenizer files.

A name or path can point at other weights tomorrow, and a byte-identical copy (``cp -r``, a
re-download, a checkout) is the same model wherever it lies, so checkpoints, reused heads, the
probe's feature cache and circuit overlaps compare this hash, never paths, sizes or times.

Hashing a large model takes seconds to minutes, so each file's sha256 is computed once and cached
in ``~/.cache/gar/hashes.json`` (``$GAR_HASH_CACHE`` names another file), keyed by the file's real
path and its (size, mtime, inode, ctime): a file rewritten in place gets a new ctime even when its
size and mtime are put back (``touch -r``), and a copy (``cp -p``, ``rsync -a``) is a new inode, so
any change of content is re-hashed. The cache is an optimisation only: unreadable, it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gar_tasks.errors import GARConfigError

HASH_CACHE_ENV = "GAR_HASH_CACHE"
DEFAULT_HASH_CACHE = Path("~/.cache/gar/hashes.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
                   "chat_template.jinja", "chat_template.json")
DIGITS = 16

_MEMO: dict[str, tuple[list[int], str]] = {}


def forget_memo() -> None:
    """Forget this process's memo of file hashes (the cache file is then the only shortcut)."""
    _MEMO.clear()


def hash_cache_path() -> Path:
    """Where the per-file hashes are cached (see the module docstring)."""
    return Path(os.environ.get(HASH_CACHE_ENV) or DEFAULT_HASH_CACHE).expanduser()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _load_cache(f: Path) -> dict[str, Any]:
    try:
        d = json.loads(f.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(f: Path, new: dict[str, tuple[list[int], str]]) -> None:
    """Merge ``new`` into the cache file (entries of files that are gone are dropped); never fails
    the run (the cache only saves time)."""
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        d = _load_cache(f)
        d.update({k: {"key": key, "sha256": sha} for k, (key, sha) in new.items()})
        d = {k: v for k, v in d.items() if os.path.exists(k)}
        fd, tmp = tempfile.mkstemp(dir=f.parent, prefix=f".{f.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(d, out)
        os.replace(tmp, f)
    except OSError:
        pass


def file_sha256(path: str | Path, cache: dict[str, Any] | None = None,
                new: dict[str, tuple[list[int], str]] | None = None) -> str:
    """sha256 of a file's bytes; taken from ``cache`` (the file's entry, when its stat key still
    matches) or computed (and put in ``new``)."""
    real = Path(os.path.realpath(path))
    key = _stat_key(real)
    name = str(real)
    memo = _MEMO.get(name)
    if memo is not None and memo[0] == key:
        return memo[1]
    entry = (cache or {}).get(name)
    if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("sha256"), str):
        sha = entry["sha256"]
    else:
        h = hashlib.sha256()
        with real.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        sha = h.hexdigest()
        if new is not None:
            new[name] = (key, sha)
    _MEMO[name] = (key, sha)
    return sha


def model_files(folder: str | Path) -> list[Path]:
    """The files that make a model folder's model: ``config.json``, the weights (and their shard
    index) and the tokenizer's files, at the folder's top level (what transformers loads)."""
    folder = Path(folder)
    out = []
    for f in sorted(folder.iterdir()):
        n = f.name
        if n.startswith(".") or not f.is_file():
            continue
        if n == "config.json" or n in TOKENIZER_FILES or f.suffix in WEIGHT_SUFFIXES or n.endswith(".index.json"):
            out.append(f)
    return out


def folder_identity(folder: str | Path) -> str:
    """The content hash of a model folder (:func:`model_files`: names and bytes): ``sha256:`` and
    16 hex digits."""
    folder = Path(folder)
    cache_file = hash_cache_path()
    files = model_files(folder)
    cache = None
    new: dict[str, tuple[list[int], str]] = {}
    h = hashlib.sha256()
    for f in files:
        name = str(Path(os.path.realpath(f)))
        memo = _MEMO.get(name)
        if cache is None and (memo is None or memo[0] != _stat_key(Path(name))):
            cache = _load_cache(cache_file)  # read only when the process's memo cannot answer
        h.update(f"{f.name}\0{file_sha256(f, cache, new)}\n".encode())
    if not any(f.name == "config.json" for f in files):
        h.update(b"no config")
    if new:
        _save_cache(cache_file, new)
    return f"sha256:{h.hexdigest()[:DIGITS]}"


def remote_identity(repo_id: str, revision: str | None = None) -> str:
    """A remote (NDIF) model has no local weights: its identity is the repo id and revision its
    request names (the server runs the model deployed under exactly that key): ``ndif:ID@REV``."""
    return f"ndif:{repo_id}@{revision or 'main'}"


def comparable(a: Any, b: Any) -> bool:
    """Whether two recorded identities can be compared: both made by this scheme (an older gar
    recorded a bare 16-digit hash of file sizes and times, which says nothing about content)."""
    return all(isinstance(x, str) and x.startswith(("sha256:", "ndif:")) for x in (a, b))


def same_model(what_a: str, model_a: Any, id_a: Any, what_b: str, model_b: Any, id_b: Any, why: str) -> None:
    """Refuse, in one line naming both models, two recorded identities that differ (identities an
    older gar recorded, or none, are not compared)."""
    if comparable(id_a, id_b) and id_a != id_b:
        raise GARConfigError(f"{what_a} used model {model_a!r} ({id_a}), {what_b} model {model_b!r} ({id_b}): {why}")


__all__ = ["DEFAULT_HASH_CACHE", "HASH_CACHE_ENV", "TOKENIZER_FILES", "WEIGHT_SUFFIXES", "comparable", "file_sha256",
           "folder_identity", "forget_memo", "hash_cache_path", "model_files", "remote_identity", "same_model"]
