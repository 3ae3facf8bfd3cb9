"""The one loader every consumer uses (lm-eval glue, interp, scripts).

``load(config, source)`` returns GAR records as a ``datasets.DatasetDict`` (or one split as a
``Dataset``) from one of three sources:

* ``"generate"`` (default): generated in-process from the registry; never touches the network;
* a local folder built by ``gar push --dry-run --out DIR`` (or a clone of the Hub repo);
* a Hub dataset id ``ORG/NAME``: the config's files are fetched with ``huggingface_hub`` (or
  taken from its cache when offline) and read exactly like a local folder.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .configs import CONFIGS, get_config
from .errors import GARConfigError, GARDataError
from .records import GARRecord, features

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

GENERATE = "generate"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def records_to_dataset(records: Iterable[GARRecord]) -> "Dataset":
    """Records -> ``datasets.Dataset`` with the record ``Features``."""
    from datasets import Dataset

    return Dataset.from_list([r.to_dict() for r in records], features=features())


def dataset_to_records(ds: "Dataset") -> list[GARRecord]:
    return [GARRecord.from_dict(row) for row in ds]


def source_kind(source: str) -> str:
    """'generate', 'folder' or 'hub' (a clear error for anything else)."""
    if source == GENERATE:
        return "generate"
    if Path(source).expanduser().is_dir():
        return "folder"
    if HUB_ID.match(source) and not Path(source).expanduser().exists():
        return "hub"
    raise GARConfigError(f"GAR data source {source!r} is neither 'generate', an existing folder, nor a Hub id ORG/NAME")


@lru_cache(maxsize=16)
def _load_all(config: str, source: str, revision: str | None) -> "DatasetDict":
    from datasets import DatasetDict

    cfg = get_config(config)
    kind = source_kind(source)
    if kind == "generate":
        return DatasetDict({split: records_to_dataset(build()) for split, build in cfg.splits.items()})
    folder = Path(source).expanduser()
    if kind == "hub":
        folder = _fetch_hub(source, revision, ["README.md", f"data/{config}/*"])
    return _load_folder(folder, config)


def _fetch_hub(source: str, revision: str | None, patterns: list[str]) -> Path:
    """``snapshot_download`` of a Hub dataset; any failure is one ``GARDataError`` naming the source."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, repo_type="dataset", revision=revision, allow_patterns=patterns))
    except Exception as e:  # the Hub client raises HTTP, connection, offline and validation errors
        raise GARDataError(f"GAR data source {source!r} (a Hub dataset id) failed: {_hub_reason(e, revision)}") from None


def _hub_reason(e: Exception, revision: str | None) -> str:
    from huggingface_hub import errors

    if isinstance(e, errors.RepositoryNotFoundError):
        return "no such dataset on the Hub, or it is private and no token gives access"
    if isinstance(e, errors.RevisionNotFoundError):
        return f"the dataset has no revision {revision!r}"
    if isinstance(e, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
        return "it is not in the local Hub cache and the Hub cannot be reached (offline)"
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return f"the Hub answered HTTP {status}" if status else "the Hub request failed"
    if isinstance(e, ConnectionError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "urllib3"):
        return "the Hub cannot be reached (network)"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return first[:200]


def check_source(source: str, revision: str | None = None) -> None:
    """Fail early, with one line naming ``source``, if it cannot serve GAR data (before a model
    is loaded): 'generate', a folder with a dataset card, or a Hub id whose card can be fetched
    (or is cached when offline)."""
    kind = source_kind(source)
    if kind == "folder" and not (Path(source).expanduser() / "README.md").is_file():
        raise GARDataError(f"GAR data source {source!r} has no README.md dataset card: not a GAR dataset folder")
    if kind == "hub":
        _fetch_hub(source, revision, ["README.md"])


def _load_folder(folder: Path, config: str) -> "DatasetDict":
    import datasets

    if not (folder / "README.md").is_file():
        raise GARDataError(f"{folder} has no README.md dataset card: not a GAR dataset folder")
    try:
        dd = datasets.load_dataset(str(folder), config)
    except ValueError as e:  # unknown config name in the card, missing files
        raise GARDataError(f"cannot load config {config!r} from {folder}: {e}") from None
    for split, ds in dd.items():
        if ds.features != features():
            raise GARDataError(f"{folder}: config {config!r} split {split!r} does not have the GAR record features")
    return dd


def load(config: str = "paper", source: str = GENERATE, split: str | None = None,
         revision: str | None = None) -> "Dataset | DatasetDict":
    """GAR records of ``config`` from ``source``; one split if ``split`` is given (cached per process)."""
    if config not in CONFIGS:
        get_config(config)  # raises the clear error
    dd = _load_all(config, source, revision)
    if split is None:
        return dd
    if split not in dd:
        raise GARConfigError(f"config {config!r} has no split {split!r}; splits: {', '.join(dd)}")
    return dd[split]


def load_records(config: str = "paper", source: str = GENERATE, split: str = "test",
                 revision: str | None = None) -> list[GARRecord]:
    """The same as ``load`` but as ``GARRecord`` objects (for interp code)."""
    return dataset_to_records(load(config, source, split, revision))
