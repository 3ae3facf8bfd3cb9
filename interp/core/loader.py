"""The one model loader of the interp commands and of the ``gar-hf-intervened`` lm-eval model.

A model is named by (checked in this order) an embedded model of :data:`gar_tasks.models.EMBEDDED_MODELS`
(``smollm2``, ... : converted once to a cached folder, offline), a local Hugging Face model folder, or a
Hub id (``ORG/NAME``: from the local cache, or run on NDIF with ``remote``; nothing is downloaded
otherwise). The architecture is checked from the config (:func:`interp.core.sites.head_sites`) before any
weight loads, so an unsupported model fails in a second, not after minutes.

``dtype``: ``float32`` | ``bfloat16`` | ``float16``. ``device``:

* ``cpu`` (default): as plain transformers loads it;
* ``cuda`` / ``cuda:N``: the whole model on that GPU (``device_map={"": device}``, loaded there
  directly);
* ``auto``: accelerate's ``device_map="auto"`` over every visible GPU (a model larger than one GPU is
  split by layers; CPU offload for what does not fit), and plain CPU when no GPU is visible.

Inputs go to :func:`input_device` (the embedding's device: with a split model, the first GPU);
accelerate's hooks move activations between devices; results are brought back with ``.cpu()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from gar_tasks.errors import GARConfigError

from .model import as_nnsight, is_hub_id
from .remote import key_problem, preflight, skeleton
from .sites import HeadSites, head_sites

DTYPES = ("float32", "bfloat16", "float16")
DEVICE_HELP = "cpu | cuda | cuda:N | auto"
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one of :data:`DTYPES`, else a clear error."""
    if dtype not in DTYPES:
        raise GARConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def check_device(device: str) -> str:
    """``device`` if it is ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (and a named GPU is visible)."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise GARConfigError(f"device must be {DEVICE_HELP}, got {device!r}")
    if device.startswith("cuda"):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            raise GARConfigError(f"device {device!r}: {n} CUDA GPU(s) visible"
                                 + ("" if n else " (use device cpu, or auto to use GPUs when there are any)"))
    return device


def embedded_names() -> tuple[str, ...]:
    from gar_tasks.models import EMBEDDED_MODELS

    return tuple(EMBEDDED_MODELS)


def check_model_args(model: str, remote: bool = False) -> None:
    """Refuse a model name that cannot work, before anything is loaded or written."""
    embedded = model in embedded_names()
    if remote:
        if embedded or not is_hub_id(model):
            raise GARConfigError(f"--remote needs a Hub model id (ORG/NAME): NDIF runs its own copy of the "
                                 f"checkpoint and local weights never travel; {model!r} is local")
        problem = key_problem(True)
        if problem:
            raise GARConfigError(problem)
    elif not embedded and not Path(model).expanduser().is_dir() and not is_hub_id(model):
        raise GARConfigError(f"--model {model!r} is neither a local model folder, an embedded model "
                             f"({', '.join(embedded_names())}), nor a Hub id")


@dataclass(frozen=True)
class Resolved:
    """Where a model name's files are: ``path`` (folder or Hub id), whether only local files may be
    used, and the description recorded in outputs."""

    name: str
    path: str
    local_only: bool
    desc: str


def resolve_model(model: str, remote: bool = False, download: bool = False) -> Resolved:
    """The folder (embedded model: converted once) or Hub id behind a model name (checked first).

    A Hub id is read from the local cache only, unless ``remote`` or ``download`` (the lm-eval model
    type, where fetching the checkpoint is lm-eval's usual behaviour)."""
    check_model_args(model, remote)
    if model in embedded_names():
        from gar_tasks.models import embedded_model_path

        path = embedded_model_path(model)
        return Resolved(model, str(path), True, f"{model} ({path})")
    return Resolved(model, str(model), not (remote or download), str(model))


def load_config(model: str | Resolved, remote: bool = False) -> Any:
    """The transformers config of a model name, its architecture checked (:func:`head_sites`)."""
    from transformers import AutoConfig

    r = model if isinstance(model, Resolved) else resolve_model(model, remote)
    try:
        cfg = AutoConfig.from_pretrained(r.path, local_files_only=r.local_only)
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot load the config of model {r.name!r} (offline, and not a cached Hub id "
                             f"or a model folder?): {str(e).splitlines()[0]}") from None
    head_sites(cfg)  # unsupported architecture: error before the weights load
    return cfg


def model_sites(model: str, remote: bool = False) -> HeadSites:
    """The :class:`~interp.core.sites.HeadSites` of a model name, from its config alone (no weights)."""
    return head_sites(load_config(model, remote))


def config_dtype(model: str | Resolved, remote: bool = False) -> str:
    """The dtype a model's config declares, if it is one of :data:`DTYPES`, else ``float32``."""
    cfg = load_config(model, remote)
    declared = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    name = str(declared).replace("torch.", "") if declared is not None else ""
    return name if name in DTYPES else "float32"


def model_fingerprint(model: str | Resolved, remote: bool = False) -> str:
    """What a model *is*, for checkpoints, reused heads, caches and overlaps (a name can point at other
    weights tomorrow, and a copy is the same model): the content hash of its config, weight and
    tokenizer files (:func:`interp.core.identity.folder_identity`, cached per file; ``sha256:...``) in
    its folder (an embedded model's converted folder, a local folder, or a cached Hub id's snapshot);
    for a remote model, its Hub id and revision (:func:`interp.core.identity.remote_identity`,
    ``ndif:ID@REV``)."""
    from .identity import folder_identity, remote_identity

    r = model if isinstance(model, Resolved) else resolve_model(model, remote)
    if remote:
        return remote_identity(r.path)
    folder = Path(r.path).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(r.path, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the cache in the expected layout: the id is all we know
            return remote_identity(r.path)
    return folder_identity(folder)


def device_map(device: str) -> Any:
    """The ``device_map`` argument of ``from_pretrained`` for a device name (None: plain CPU load)."""
    import torch

    check_device(device)
    if device == "cpu":
        return None
    if device == "auto":
        return "auto" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else None
    return {"": device}


@dataclass
class LoadedModel:
    """A loaded model: ``model`` (nnsight-wrapped when asked), the plain HF ``hf`` module (None for a
    remote skeleton), its tokenizer, head sites, and the description recorded in outputs."""

    model: Any
    hf: Any
    tokenizer: Any
    sites: HeadSites
    desc: str
    dtype: str
    device: str
    resolved: Resolved | None = None
    server: dict[str, Any] | None = None  # remote: the server's host, versions and drift (preflight)

    @cached_property
    def fingerprint(self) -> str:
        """:func:`model_fingerprint`, computed when a command records it (hashing a large model's files
        takes a while the first time, and lm-eval runs never need it)."""
        if self.resolved is None:
            return ""
        return model_fingerprint(self.resolved, remote=self.device == "remote")


def load_model(model: str, dtype: str = "float32", device: str = "cpu", *, remote: bool = False,
               nnsight: bool = True, attn_implementation: str | None = None, download: bool = False) -> LoadedModel:
    """Load a model by name (see the module docstring); eval mode.

    ``nnsight``: wrap it in an nnsight ``TransformersModel`` (``remote`` implies it: a weightless
    skeleton whose traces run on NDIF). ``attn_implementation``: e.g. ``"eager"`` when attention
    weights are read. ``download``: see :func:`resolve_model`. The tokenizer is a fast one.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_dtype(dtype)
    check_device(device)
    r = resolve_model(model, remote, download)
    load_config(r)
    folder = Path(r.path).expanduser()
    if not remote and folder.is_dir() and any(folder.glob("*.safetensors")):  # (.bin weights: not checked)
        from gar_tasks.models import folder_problem

        problem = folder_problem(folder, marker=False)  # the safetensors headers and sizes only: cheap
        if problem:
            raise GARConfigError(f"model folder {r.path} is incomplete: {problem}")
    try:
        tok = AutoTokenizer.from_pretrained(r.path, use_fast=True, local_files_only=r.local_only)
        if remote:
            server = preflight(True)
            nn_model = skeleton(r.path)
            return LoadedModel(nn_model, None, tok, head_sites(nn_model), r.desc, dtype, "remote", r, server)
        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "local_files_only": r.local_only}
        dm = device_map(device)
        if dm is not None:
            kwargs["device_map"] = dm
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        hf = AutoModelForCausalLM.from_pretrained(r.path, **kwargs).eval()
    except (OSError, ValueError) as e:
        raise GARConfigError(f"cannot load model {r.name!r}: {str(e).splitlines()[0]}") from None
    wrapped = as_nnsight(hf, tok) if nnsight else hf
    return LoadedModel(wrapped, hf, tok, head_sites(hf), r.desc, dtype, device, r)


def request_device(model: Any, remote: Any = False) -> Any:
    """Where a trace's inputs go: the model's input device when it runs here (``remote`` False or
    ``"local"``), None (left as they are) for NDIF, whose skeleton has no device of its own."""
    return input_device(model) if remote in (False, None, "local") else None


def input_device(model: Any) -> Any:
    """The device inputs go to: the input embedding's (the first GPU of a split model)."""
    inner = getattr(model, "_module", model)
    try:
        return inner.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(inner.parameters()).device


__all__ = ["DEVICE_HELP", "DTYPES", "LoadedModel", "Resolved", "check_device", "check_dtype", "check_model_args",
           "config_dtype", "device_map", "embedded_names", "input_device", "load_config", "load_model", "model_fingerprint",
           "model_sites", "request_device",
           "resolve_model"]
