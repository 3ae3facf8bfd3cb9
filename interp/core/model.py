"""The nnsight side of a model: wrapping, freezing, and checking a remote (NDIF) request early.

Every entry point of :mod:`interp.patching` takes either an nnsight ``TransformersModel`` (what
a remote run needs: ``TransformersModel("org/name")`` builds a weightless local skeleton whose
traces run on NDIF) or an already loaded Hugging Face model plus its tokenizer, which is wrapped
here. ``remote`` is passed straight to ``trace``: ``False`` (local), ``True`` (NDIF), ``"local"``
(nnsight serialises and deserialises the request and runs it here: the remote code path,
offline) or a host URL. A real remote run needs a Hub model id, and an NDIF API key when the
server is the public service (:mod:`interp.core.remote`); both are checked before any work so a
long run cannot fail at its first batch. The key is never shown.
"""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path
from typing import Any, Iterator

from gar_tasks.errors import GARConfigError

from .remote import key_problem

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
Remote = bool | str


def is_nnsight(model: Any) -> bool:
    from nnsight.modeling.transformers import TransformersModel

    return isinstance(model, TransformersModel)


def as_nnsight(model: Any, tokenizer: Any = None) -> Any:
    """An nnsight ``TransformersModel`` for ``model`` (returned as is when it already is one).

    Wrapping an HF model needs its tokenizer (nnsight builds a pipeline around the model, even
    though patching feeds token ids). nnsight sets the tokenizer's padding side and pad token,
    so a copy is wrapped and the caller's tokenizer is left untouched.
    """
    if is_nnsight(model):
        return model
    from nnsight.modeling.transformers import TransformersModel

    if tokenizer is None:
        raise GARConfigError(f"a {type(model).__name__} must be wrapped with its tokenizer: pass tokenizer=... "
                             "or an nnsight TransformersModel")
    return TransformersModel(model, tokenizer=copy.deepcopy(tokenizer))


def is_hub_id(name: str) -> bool:
    """``ORG/NAME`` that is not an existing local path."""
    return bool(_HUB_ID.match(str(name))) and not Path(name).expanduser().exists()


def model_repo_id(model: Any) -> str | None:
    """The Hub id (or local path) a model was loaded from, for nnsight or HF models."""
    repo = getattr(model, "repo_id", None) if is_nnsight(model) else None
    if repo is None:
        inner = getattr(model, "_module", model)
        repo = getattr(inner, "name_or_path", None) or getattr(getattr(inner, "config", None), "_name_or_path", None)
    return repo or None


def check_remote(model: Any, remote: Remote) -> None:
    """Refuse a remote request that cannot work, before any work (never showing the key).

    ``True`` or a host URL need the model to come from a Hub id (NDIF runs its own copy of
    that checkpoint: local weights never travel) and, for the public service, an API key
    (``NDIF_API_KEY`` or ``nnsight.CONFIG.set_default_api_key``). ``False`` and ``"local"`` need
    neither.
    """
    if remote is False or remote is None or remote == "local":
        return
    if isinstance(remote, str) and not remote.startswith(("http://", "https://")):
        raise GARConfigError(f"remote must be False, True, 'local' or an NDIF host URL, got {remote!r}")
    if not isinstance(remote, (bool, str)):
        raise GARConfigError(f"remote must be False, True, 'local' or an NDIF host URL, got {type(remote).__name__}")
    repo = model_repo_id(model)
    if not repo or not is_hub_id(repo):
        raise GARConfigError(f"remote execution needs a model loaded by its Hub id (e.g. "
                             f"TransformersModel('ORG/NAME')); this one is local ({repo or 'no name'}): "
                             "use remote=False, or remote='local' to test the remote code path")
    problem = key_problem(remote)
    if problem:
        raise GARConfigError(problem)


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[Any]:
    """Parameters frozen and eval mode for the duration (restored after).

    Gradients are then taken only w.r.t. the head outputs (made to require grad inside the
    trace), so no parameter gradient is ever computed or stored.
    """
    module = getattr(model, "_module", model)
    flags = [(p, p.requires_grad) for p in module.parameters()]
    training = module.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        module.eval()
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(training)


def forward_kwargs(model: Any) -> dict[str, Any]:
    """Extra forward arguments: only the last position's logits when the model allows it."""
    import inspect

    module = getattr(model, "_module", model)
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic forward
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


__all__ = ["Remote", "as_nnsight", "check_remote", "forward_kwargs", "frozen", "is_hub_id", "is_nnsight",
           "model_repo_id"]
