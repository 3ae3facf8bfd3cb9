"""Build the Hugging Face Hub folder (dataset card + parquet per config/split) and push it.

The folder is what ``datasets.load_dataset(folder_or_repo, config)`` reads: a ``README.md`` whose
YAML header declares every config's ``data_files`` and ``dataset_info`` (features, split sizes),
and ``data/<config>/<split>-00000-of-00001.parquet`` files written with the record ``Features``.
Everything comes from the one registry in ``gar_tasks.configs``.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .configs import CONFIGS, get_config
from .errors import GARConfigError, GARDataError
from .load import records_to_dataset

DEFAULT_REPO = "gar-eval/gar"
_MARKER = "<!-- built by gar-eval: gar_tasks.hub -->"


def generator_version() -> str:
    try:
        return metadata.version("gar-eval")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def size_category(n: int) -> str:
    """The Hub's size bucket for ``n`` rows."""
    for hi, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                     (1_000_000, "100K<n<1M")):
        if n < hi:
            return name
    return "1M<n<10M"


def card_text(split_sizes: dict[str, dict[str, int]], split_bytes: dict[str, dict[str, int]],
              repo_id: str = DEFAULT_REPO) -> str:
    """The dataset card: YAML header (configs, dataset_info, metadata) + the body template."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    from .records import features

    total = sum(n for sizes in split_sizes.values() for n in sizes.values())
    data = DatasetCardData(
        language=["en"], license="unknown", pretty_name="GAR: Generalized Associative Recall",
        size_categories=[size_category(total)], task_categories=["text-generation", "text-classification"],
        tags=["reasoning", "compositional-reasoning", "associative-recall", "interpretability", "synthetic"])
    MetadataConfigs({
        name: {"data_files": [{"split": s, "path": f"data/{name}/{s}-*.parquet"} for s in sizes],
               **({"default": True} if get_config(name).default else {})}
        for name, sizes in split_sizes.items()}).to_dataset_card_data(data)
    infos = {}
    for name, sizes in split_sizes.items():
        splits = SplitDict()
        for s, n in sizes.items():
            splits.add(SplitInfo(name=s, num_examples=n, num_bytes=split_bytes[name][s]))
        infos[name] = DatasetInfo(features=features(), splits=splits, config_name=name,
                                  description=get_config(name).description)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    table = "\n".join(["| config | splits (rows) | what |", "|---|---|---|"] + [
        f"| `{name}` | {', '.join(f'{s} ({n})' for s, n in sizes.items())} | {get_config(name).description} |"
        for name, sizes in split_sizes.items()])
    body = resources.files("gar_tasks").joinpath("data", "card.md").read_text(encoding="utf-8")
    body = string.Template(body).substitute(generator_version=generator_version(), config_table=table,
                                            repo_id=repo_id)
    return f"---\n{data.to_yaml()}\n---\n{_MARKER}\n\n{body}"


def build_folder(out: str | Path, configs: Sequence[str] | None = None, repo_id: str = DEFAULT_REPO,
                 progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write the Hub folder to ``out`` atomically (temp folder, then rename); return its files.

    ``out`` must be absent, empty, or a folder this function built before (it is replaced).
    """
    out = Path(out).expanduser()
    names = list(configs or CONFIGS)
    for n in names:
        get_config(n)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_our_folder(out))):
        raise GARDataError(f"{out} exists and is not an empty folder or a GAR dataset folder; refusing to overwrite")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GARDataError(f"cannot create {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise GARDataError(f"cannot write to {parent}: not a writable folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        sizes: dict[str, dict[str, int]] = {}
        nbytes: dict[str, dict[str, int]] = {}
        for name in names:
            sizes[name], nbytes[name] = {}, {}
            for split, build in get_config(name).splits.items():
                if progress:
                    progress(f"{name}/{split}")
                ds = records_to_dataset(build())
                path = tmp / "data" / name / f"{split}-00000-of-00001.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                _to_parquet(ds, path)
                sizes[name][split], nbytes[name][split] = len(ds), ds.data.nbytes
        (tmp / "README.md").write_text(card_text(sizes, nbytes, repo_id), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(p for p in out.rglob("*") if p.is_file())


def _to_parquet(ds, path: Path) -> None:
    """``Dataset.to_parquet`` without its progress bar (restoring the caller's setting)."""
    from datasets.utils import logging as dlog

    was = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        ds.to_parquet(str(path))
    finally:
        if was:
            dlog.enable_progress_bar()


def _is_our_folder(folder: Path) -> bool:
    card = folder / "README.md"
    return card.is_file() and _MARKER in card.read_text(encoding="utf-8", errors="replace")


@dataclass(frozen=True)
class PushResult:
    folder: Path
    files: list[Path]
    commit_url: str | None  # None for a dry run


def hub_token() -> str | None:
    """``HF_TOKEN`` or the login cache (``huggingface_hub.get_token``); never printed."""
    from huggingface_hub import get_token

    return get_token()


def push(repo_id: str, *, private: bool = False, revision: str | None = None, dry_run: bool = False,
         out: str | Path | None = None, configs: Iterable[str] | None = None,
         progress: Callable[[str], None] | None = None) -> PushResult:
    """Build the folder and upload it as one commit (creating the repo if missing)."""
    from .load import HUB_ID

    if not HUB_ID.match(repo_id):
        raise GARConfigError(f"repo id {repo_id!r} is not of the form ORG/NAME")
    token = None
    if not dry_run:
        token = hub_token()
        if not token:
            raise GARConfigError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run)")
    tmpdir = None
    if out is None:
        tmpdir = tempfile.mkdtemp(prefix="gar-hub-")
        out = Path(tmpdir) / "gar"
    try:
        files = build_folder(out, list(configs) if configs else None, repo_id, progress)
        if dry_run:
            return PushResult(Path(out), files, None)
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
            info = api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="dataset",
                                     revision=revision, delete_patterns=["data/**"],
                                     commit_message=f"GAR datasets built by gar-eval {generator_version()}")
        except HfHubHTTPError as e:
            raise GARDataError(f"upload to {repo_id} failed: {str(e).splitlines()[0]}") from None
        return PushResult(Path(out), files, str(getattr(info, "commit_url", info)))
    finally:
        if tmpdir is not None and not dry_run:
            shutil.rmtree(tmpdir, ignore_errors=True)
