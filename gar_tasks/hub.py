"""Build the Hugging Face Hub folder (dataset card + parquet per config/split) and push it.

The folder is what ``datasets.load_dataset(folder_or_repo, config)`` reads: a ``README.md`` whose
YAML header declares every config's ``data_files`` and ``dataset_info`` (features, split sizes),
and ``data/<config>/<split>-00000-of-00001.parquet`` files written with the record ``Features``.
Everything comes from the one registry in ``gar_tasks.configs``.
"""

from __future__ import annotations

import os
import re
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
    """Write the Hub folder to ``out``; return the files we wrote (card first, then parquet).

    ``out`` may be absent or empty (the folder is built aside and renamed into place), or a folder
    holding our card (one we built before, or a clone of the Hub repo): then only the card and
    ``data/<config>/`` of the configs built now are replaced, one atomic rename each, and our stale
    parquet files in those folders removed; other configs' data stays, and the card keeps declaring
    them (their sizes from the old card); everything else in it (``.git``, a licence, notes) is left
    as it is. Any other folder is refused: nothing of the user's is ever deleted.
    """
    out = shown = Path(out).expanduser()
    if out.is_symlink():  # build where the link points, and keep the link
        out = Path(os.path.realpath(out))
    names = list(configs or CONFIGS)
    for n in names:
        get_config(n)
    update = False
    try:
        if out.exists():
            if not out.is_dir():
                raise GARDataError(f"{out} exists and is not a folder; refusing to overwrite")
            update = any(out.iterdir())
            if update and not _is_our_folder(out):
                raise GARDataError(f"{out} is not empty and holds no dataset card written by gar; refusing to "
                                   f"overwrite: use a new or empty folder")
        parent = out.parent
        anc = parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            raise GARDataError(f"cannot create {out}: {anc} is a file, not a folder")
        parent.mkdir(parents=True, exist_ok=True)
    except GARDataError:
        raise
    except OSError as e:
        raise GARDataError(f"cannot write {os.fspath(e.filename or out)}: {_why(e)}") from None
    if not os.access(parent, os.W_OK):
        raise GARDataError(f"cannot write to {parent}: not a writable folder")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:40]}.", dir=parent))
    except OSError as e:
        raise GARDataError(f"cannot write to {parent}: {_why(e)}") from None
    try:
        rel: list[str] = []
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
                    _fsync(path)
                    rel.append(path.relative_to(tmp).as_posix())
                    sizes[name][split], nbytes[name][split] = len(ds), ds.data.nbytes
            if update:  # configs not built now keep their data and their place in the card
                for name, (s, b) in _kept_configs(out, names).items():
                    sizes[name], nbytes[name] = s, b
                sizes = {n: sizes[n] for n in CONFIGS if n in sizes}
            card = tmp / "README.md"
            card.write_text(card_text(sizes, nbytes, repo_id), encoding="utf-8")
            _fsync(card)
            _publish_modes(tmp)
            if update:
                _update_ours(tmp, out, rel, names)
            else:
                os.replace(tmp, out)  # out is absent or an empty folder
        except OSError as e:
            where = e.filename if e.filename and not str(e.filename).startswith(str(tmp)) else out
            raise GARDataError(f"cannot write {os.fspath(where)}: {_why(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our temporary folder only (gone after a rename)
    return [shown / "README.md"] + sorted(shown / r for r in rel)


def _why(e: OSError) -> str:
    return e.strerror or e.__class__.__name__


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_modes(tmp: Path) -> None:
    """``mkdtemp`` makes the folder 0700: give folders and files the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [tmp, *tmp.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


# the files a build writes: the card and data/<config>/<split>-NNNNN-of-NNNNN.parquet
_OUR_PARQUET = re.compile(r"^data/[\w.-]+/[\w.-]+-\d{5}-of-\d{5}\.parquet$")


def _our_files(folder: Path) -> list[str]:
    """Relative paths of the files in ``folder`` that a build wrote (not following links)."""
    ours = ["README.md"] if (folder / "README.md").is_file() else []
    data = folder / "data"
    if data.is_dir() and not data.is_symlink():
        for sub in data.iterdir():
            if sub.name in CONFIGS and sub.is_dir() and not sub.is_symlink():
                ours += [f"data/{sub.name}/{f.name}" for f in sub.iterdir()
                         if f.is_file() and not f.is_symlink() and _OUR_PARQUET.match(f"data/{sub.name}/{f.name}")]
    return ours


def _update_ours(tmp: Path, out: Path, rel: list[str], names: Sequence[str]) -> None:
    """Move the new build's files into ``out`` over ours; remove our stale parquet files of the
    configs built now (``names``; and the data folders they leave empty); touch nothing else, other
    configs' data included. The card goes last."""
    stale = [r for r in _our_files(out) if r != "README.md" and r not in rel and r.split("/")[1] in names]
    for r in rel:
        (out / r).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / r, out / r)
    for r in stale:
        (out / r).unlink()
        try:
            (out / r).parent.rmdir()  # only if now empty
        except OSError:
            pass
    os.replace(tmp / "README.md", out / "README.md")


def _kept_configs(out: Path, names: Sequence[str]) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """``{config: (rows per split, bytes per split)}`` from the card in ``out`` for the configs not
    built now whose parquet files are all still there (what the new card keeps declaring)."""
    import yaml

    try:
        text = (out / "README.md").read_text(encoding="utf-8")
        infos = yaml.safe_load(text.split("---\n")[1]).get("dataset_info") or []
    except (OSError, IndexError, AttributeError, yaml.YAMLError):
        return {}
    kept = {}
    for info in [infos] if isinstance(infos, dict) else infos:
        name = info.get("config_name") if isinstance(info, dict) else None
        if name not in CONFIGS or name in names:
            continue
        splits = info.get("splits") or []
        rows = {s["name"]: int(s["num_examples"]) for s in splits}
        if rows and all((out / "data" / name / f"{s}-00000-of-00001.parquet").is_file() for s in rows):
            kept[name] = (rows, {s["name"]: int(s.get("num_bytes", 0)) for s in splits})
    return kept


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
    """Build the folder and upload it as one commit (creating the repo if missing).

    The repository is created (which checks the token and the network) before the folder is
    built, so an offline machine or a bad token fails in seconds, not after the build. Only our
    files (the card and ``data/``) are uploaded, whatever else ``out`` holds.
    """
    from .load import HUB_ID

    if not HUB_ID.match(repo_id):
        raise GARConfigError(f"repo id {repo_id!r} is not of the form ORG/NAME")
    configs = list(configs) if configs else None
    for n in configs or ():
        get_config(n)
    api = None
    if not dry_run:
        token = hub_token()
        if not token:
            raise GARConfigError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run)")
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE:
            raise GARConfigError(f"cannot upload to {repo_id}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE)")
        api = HfApi(token=token)
        with _hub_errors(f"cannot reach the Hub to create {repo_id}"):
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    tmpdir = None
    if out is None:
        tmpdir = tempfile.mkdtemp(prefix="gar-hub-")
        out = Path(tmpdir) / "gar"
    keep = False
    try:
        files = build_folder(out, configs, repo_id, progress)
        if dry_run:
            keep = True
            return PushResult(Path(out), files, None)
        with _hub_errors(f"upload to {repo_id} failed"):
            info = api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="dataset",
                                     revision=revision,
                                     delete_patterns=[f"data/{n}/**" for n in (configs or CONFIGS)],
                                     allow_patterns=["README.md", "data/*/*.parquet"],
                                     commit_message=f"GAR datasets built by gar-eval {generator_version()}")
        return PushResult(Path(out), files, str(getattr(info, "commit_url", info)))
    finally:
        if tmpdir is not None and not keep:  # also on Ctrl-C / SIGTERM: no empty temp folder left
            shutil.rmtree(tmpdir, ignore_errors=True)


class _hub_errors:
    """Turn the Hub client's HTTP, connection and offline errors into one ``GARDataError`` line."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, GARDataError):
            return False
        from huggingface_hub.errors import HfHubHTTPError

        root = type(exc).__module__.split(".")[0]
        if isinstance(exc, (HfHubHTTPError, OSError)) or root in ("httpx", "httpx2", "requests", "urllib3"):
            raise GARDataError(f"{self.what}: {_hub_reason(exc)}") from None
        return False


def _hub_reason(exc: Exception) -> str:
    """A short reason: the first line of the message, without URLs, token or request ids."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return "Hugging Face Hub offline mode is on (HF_HUB_OFFLINE)"
    resp = getattr(exc, "response", None)
    status = getattr(resp, "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return f"not authorised (HTTP {status}): check the token and your rights on the repository"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", first)
    if _is_network(exc):
        return f"network unreachable ({first[:200]})"
    return first[:300]


def _is_network(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "urllib3")
