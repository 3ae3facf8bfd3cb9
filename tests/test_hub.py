"""Hub folder (card + parquet), `gar push`, and the one loader over its three sources."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
import yaml

from gar_tasks import hub, load as load_mod
from gar_tasks.cli import main
from gar_tasks.configs import CONFIGS
from gar_tasks.errors import GARConfigError, GARDataError
from gar_tasks.load import dataset_to_records, load, load_records
from gar_tasks.records import features

pytestmark = pytest.mark.integration

SECRET = "hf_SECRET_token_that_must_never_appear_0123456789"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "gar"
    hub.build_folder(out)
    return out


def _card_yaml(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_every_config_loads_from_the_folder_as_generated(folder):
    for name, cfg in CONFIGS.items():
        dd = datasets.load_dataset(str(folder), name)
        assert set(dd) == set(cfg.splits)
        for split, build in cfg.splits.items():
            expected = build()
            assert dd[split].features == features()
            assert dd[split].num_rows == len(expected)
            assert dataset_to_records(dd[split]) == expected


def test_card_header_declares_configs_and_sizes(folder):
    meta = _card_yaml(folder)
    for key in ("license", "language", "task_categories", "size_categories", "pretty_name"):
        assert meta.get(key), key
    assert [c["config_name"] for c in meta["configs"]] == list(CONFIGS)
    assert [c for c in meta["configs"] if c.get("default")] == [meta["configs"][0]]
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert set(infos) == set(CONFIGS)
    for name, cfg in CONFIGS.items():
        sizes = {s["name"]: s["num_examples"] for s in infos[name]["splits"]}
        assert sizes == {split: len(build()) for split, build in cfg.splits.items()}
        files = {c["config_name"]: c["data_files"] for c in meta["configs"]}[name]
        for entry in files:
            assert list(folder.glob(entry["path"])), entry
    body = (folder / "README.md").read_text(encoding="utf-8")
    for must in ("n_r", "lm_eval", "nnsight", "@inproceedings", "swiming", "`END`", "`K'`"):
        assert must in body, must


def test_build_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(GARDataError, match="refusing to overwrite"):
        hub.build_folder(tmp_path, ["paper"])
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_push_without_token_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub, "hub_token", lambda: None)
    monkeypatch.setattr(hub, "build_folder", lambda *a, **k: pytest.fail("built before checking the token"))
    out = tmp_path / "out"
    assert main(["push", "--repo", "me/gar", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gar: error: no Hugging Face token") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_dry_run_lists_every_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["push", "--repo", "me/gar", "--dry-run", "--out", str(out), "--config", "paper"]) == 0
    printed = capsys.readouterr().out
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "data/paper/test-00000-of-00001.parquet"]
    for f in files:
        assert f in printed
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left


class _FakeApi:
    calls: list = []

    def __init__(self, token=None):
        _FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kw):
        _FakeApi.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        _FakeApi.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, **kw):
        _FakeApi.calls.append(("upload_folder", kw, sorted(
            p.relative_to(kw["folder_path"]).as_posix() for p in Path(kw["folder_path"]).rglob("*") if p.is_file())))
        return "https://huggingface.co/datasets/me/gar/commit/abc"


def test_push_is_one_commit_and_never_shows_the_token(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls = []
    out = tmp_path / "out"
    assert main(["push", "--repo", "me/gar", "--private", "--revision", "v0", "--out", str(out),
                 "--config", "paper"]) == 0
    kinds = [c[0] for c in _FakeApi.calls]
    assert kinds == ["init", "create_repo", "create_branch", "upload_folder"]
    assert _FakeApi.calls[0][1] == SECRET
    assert _FakeApi.calls[1][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    upload = _FakeApi.calls[3][1]
    assert upload["repo_id"] == "me/gar" and upload["repo_type"] == "dataset" and upload["revision"] == "v0"
    assert hub.generator_version() in upload["commit_message"]
    assert _FakeApi.calls[3][2] == ["README.md", "data/paper/test-00000-of-00001.parquet"]
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    for p in out.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes()


def test_bad_repo_id_is_a_clear_error(capsys):
    assert main(["push", "--repo", "not a repo", "--dry-run"]) == 2
    assert "not of the form ORG/NAME" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the one loader

def test_loader_gives_identical_records_from_all_three_sources(folder, monkeypatch):
    import huggingface_hub

    seen = {}

    def fake_snapshot(repo_id, **kw):
        seen.update(repo_id=repo_id, **kw)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    load_mod._load_all.cache_clear()
    for name, cfg in CONFIGS.items():
        for split in cfg.splits:
            generated = load_records(name, "generate", split)
            assert generated == load_records(name, str(folder), split)
            assert generated == load_records(name, "someorg/gar", split)
    assert seen["repo_id"] == "someorg/gar" and seen["repo_type"] == "dataset"
    assert f"data/{list(CONFIGS)[-1]}/*" in seen["allow_patterns"]
    load_mod._load_all.cache_clear()


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(GARConfigError, match="unknown dataset config 'nope'"):
        load("nope")
    with pytest.raises(GARConfigError, match="neither 'generate', an existing folder, nor a Hub id"):
        load("paper", "not/a/hub id")
    with pytest.raises(GARDataError, match="no README.md"):
        load("paper", str(tmp_path))
    with pytest.raises(GARConfigError, match="has no split 'train'"):
        load("paper", split="train")


def test_offline_default_never_touches_the_network():
    code = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise AssertionError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from gar_tasks.load import load
        ds = load("v1", split="validation")
        print(ds.num_rows)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "4608"
