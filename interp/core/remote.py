"""The NDIF side of a remote run: which server, whether it needs a key, the model skeleton, the
server's health and versions, and its errors as one line.

The server is nnsight's own setting: ``NDIF_HOST`` (default the public ``https://api.ndif.us``) and
``NDIF_API_KEY``, or nnsight's config file. The public service needs a key; a self-hosted server
(``scripts/ndif_local.sh``, or ndif on one's own GPUs) usually runs without authentication, so no
key is asked for there: the server itself refuses a request it does not accept.

A remote model is a weightless skeleton built from the Hub id's config and tokenizer (from the
local cache when offline). Its request names the model by a key (class, repo id, revision, task)
that must equal the key the server deployed, so the task is fixed (``text-generation``, what every
GAR analysis runs) and the repo id is used as spelled when the Hub cannot be asked (offline, or a
private id only the self-hosted server knows).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator
from urllib.parse import urlparse

from gar_tasks.errors import GARError

PUBLIC_DOMAIN = "ndif.us"
TASK = "text-generation"
PING_TIMEOUT_S = 5.0
# packages whose versions must agree between client and server for equal results
DRIFT_PACKAGES = ("nnsight", "torch", "transformers")


class GARRemoteError(GARError):
    """The NDIF server is unreachable, or refused or failed a request (its message, one line)."""


def host(remote: Any = True) -> str:
    """The NDIF host of a request: a URL given as ``remote``, else nnsight's ``CONFIG.API.HOST``."""
    if isinstance(remote, str) and remote.startswith(("http://", "https://")):
        return remote.rstrip("/")
    from nnsight import CONFIG

    return str(CONFIG.API.HOST).rstrip("/")


def api_key() -> str | None:
    """``NDIF_API_KEY`` or nnsight's configured key (never shown)."""
    from nnsight import CONFIG

    return os.environ.get("NDIF_API_KEY") or getattr(CONFIG.API, "APIKEY", None) or None


def needs_key(url: str) -> bool:
    """Whether ``url`` is the public NDIF service (which refuses requests without a key)."""
    name = (urlparse(url).hostname or "").lower()
    return name == PUBLIC_DOMAIN or name.endswith("." + PUBLIC_DOMAIN)


def key_problem(remote: Any = True) -> str | None:
    """Why a remote request would be refused for want of a key (None: fine)."""
    url = host(remote)
    if needs_key(url) and not api_key():
        return (f"the NDIF service at {url} needs an API key: set NDIF_API_KEY (or NDIF_HOST to point at "
                "a self-hosted server)")
    return None


def pin_repo_id(repo_id: str) -> None:
    """Give nnsight the canonical spelling of ``repo_id`` for its request key without an unbounded
    Hub call: the Hub's answer when it can be asked within seconds, else the id as spelled."""
    from nnsight.modeling import huggingface as nn_hf

    cache = getattr(nn_hf, "_ID_CACHE", None)
    if not isinstance(cache, dict) or repo_id in cache:
        return
    from huggingface_hub import constants

    canonical = repo_id
    if not constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import HfApi

            canonical = HfApi().model_info(repo_id, timeout=PING_TIMEOUT_S).id
        except Exception:  # noqa: BLE001 - unreachable Hub or an id only a self-hosted server knows
            canonical = repo_id
    cache[repo_id] = canonical


def skeleton(repo_id: str) -> Any:
    """The weightless nnsight ``TransformersModel`` of a Hub id whose traces run on NDIF."""
    from nnsight.modeling.transformers import TransformersModel

    pin_repo_id(repo_id)
    return TransformersModel(repo_id, task=TASK)


def model_key(repo_id: str) -> str:
    """The key a server must deploy ``repo_id`` under for this client's requests."""
    return skeleton(repo_id).to_model_key()


def _get(url: str, timeout: float) -> Any:
    import httpx

    response = httpx.get(url, timeout=httpx.Timeout(timeout, read=max(timeout, 30.0)))
    response.raise_for_status()
    return response.json()


def preflight(remote: Any = True, warn: Any = None) -> dict[str, Any]:
    """Check, in seconds, that the server answers and compare its versions with ours (before any
    work). Unreachable: :class:`GARRemoteError`. Version drift: one line to ``warn`` (default
    stderr). Returns ``{"host", "server_versions", "drift"}`` for the run's record."""
    from importlib.metadata import PackageNotFoundError, version

    problem = key_problem(remote)
    if problem:
        raise GARRemoteError(problem)
    url = host(remote)
    try:
        _get(f"{url}/ping", PING_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - any transport failure is "unreachable"
        raise GARRemoteError(f"the NDIF server at {url} does not answer ({one_line(e)}); is it running? "
                             "(NDIF_HOST selects the server)") from None
    server: dict[str, str] = {}
    with contextlib.suppress(Exception):
        server = {k: v for k, v in (_get(f"{url}/env", 30.0).get("packages") or {}).items() if k in DRIFT_PACKAGES}
    drift = []
    for name in DRIFT_PACKAGES:
        try:
            mine = version(name)
        except PackageNotFoundError:
            continue
        theirs = server.get(name)
        if theirs is not None and theirs.split("+")[0] != mine.split("+")[0]:
            drift.append(f"{name} {mine} here, {theirs} on the server")
    if drift:
        (warn or (lambda m: print(m, file=sys.stderr)))(
            f"warning: version drift with {url}: {'; '.join(drift)} (results may differ from a local run)")
    return {"host": url, "server_versions": server, "drift": drift}


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its first non-empty line, else its type)."""
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


@contextlib.contextmanager
def server_errors(remote: Any) -> Iterator[None]:
    """Around remote requests: the server's failure (or a dropped connection) as one
    :class:`GARRemoteError` line naming the server's own message; nnsight's live status line
    (written to stdout) off, unless ``NNSIGHT_DEBUG`` asks for it, so a command's stdout stays its own."""
    if remote in (False, None, "local"):
        yield
        return
    from nnsight import CONFIG

    shown = CONFIG.APP.REMOTE_LOGGING
    CONFIG.APP.REMOTE_LOGGING = bool(CONFIG.APP.DEBUG)
    try:
        yield
    except GARError:
        raise
    except Exception as e:
        what = transport_failure(e)
        if what is None:  # not the server's: a bug of ours stays a bug, with its traceback
            raise
        raise GARRemoteError(f"the NDIF server at {host(remote)} {what}: {last_line(e)}") from None
    finally:
        CONFIG.APP.REMOTE_LOGGING = shown


def transport_failure(e: BaseException) -> str | None:
    """How a request went wrong when ``e`` is the server's failure or the connection's, else None."""
    import httpx
    from nnsight.intervention.backends.remote import RemoteError

    if isinstance(e, RemoteError):
        return "failed the request"
    try:
        from websocket import WebSocketException
    except ImportError:  # pragma: no cover - nnsight depends on websocket-client
        WebSocketException = ()  # noqa: N806
    if isinstance(e, (httpx.HTTPError, OSError, WebSocketException)):
        return "could not be reached"
    return None


def last_line(e: BaseException) -> str:
    """The last non-empty line of an exception's message (a server traceback ends with its cause)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


__all__ = ["DRIFT_PACKAGES", "GARRemoteError", "PUBLIC_DOMAIN", "TASK", "api_key", "host", "key_problem", "last_line",
           "model_key", "needs_key", "one_line", "pin_repo_id", "preflight", "server_errors", "skeleton",
           "transport_failure"]
