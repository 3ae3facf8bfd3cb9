"""lm-eval integration: every task we ship is indexed, YAML is up to date, scoring is right."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from lm_eval.api.model import LM

from gar_tasks.configs import CONFIGS
from gar_tasks.lm_eval_glue import TASK_README, chat_doc_to_text, render_task_readme, render_yaml_files, task_tree
from gar_tasks.lm_eval_hook import tasks_dir
from gar_tasks.load import load_records
from gar_tasks.records import GARRecord

ROOT = Path(__file__).resolve().parents[1]
GAR_DIR = ROOT / "yaml_tasks" / "gar"


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


@pytest.mark.integration
def test_yaml_files_are_generated_and_up_to_date():
    want = render_yaml_files()
    have = {p.name: p.read_text(encoding="utf-8") for p in GAR_DIR.glob("*.yaml")}
    assert set(have) == set(want), "run scripts/make_yaml_tasks.py"
    assert all(have[n] == want[n] for n in want), "run scripts/make_yaml_tasks.py"
    # the task card (lm-eval's task README) is generated from the same tree
    assert (GAR_DIR / TASK_README).read_text(encoding="utf-8") == render_task_readme(GAR_DIR), \
        "run scripts/make_yaml_tasks.py"


@pytest.mark.integration
def test_task_manager_indexes_every_task_group_and_tag_we_ship(task_manager):
    tree = task_tree()
    index = task_manager.task_index
    leaves = {leaf.name for leaf in tree.leaves}
    groups = {g.name for g in tree.groups}
    assert leaves <= set(task_manager.all_subtasks), sorted(leaves - set(task_manager.all_subtasks))[:5]
    assert groups <= set(task_manager.all_groups), sorted(groups - set(task_manager.all_groups))[:5]
    assert tree.tags <= set(task_manager.all_tags), sorted(tree.tags - set(task_manager.all_tags))[:5]
    # every YAML file on disk is something lm-eval indexed from our folder (none silently skipped)
    ours = {name for name, e in index.items() if e.yaml_path and Path(e.yaml_path).parent == GAR_DIR}
    docs = [yaml.safe_load(p.read_text()) for p in GAR_DIR.glob("*.yaml")]
    files = {d.get("group") or d["task"] for d in docs}
    assert files == ours
    assert {"gar", "gar_gen", "gar_cls", "gar_gen_nr0", "gar_cls_nr2", "gar_v1", "gar_gen_greedy"} <= ours
    # the chat / API route: the same family and n_r groups, and chat sub-questions
    assert {"gar_chat", "gar_chat_gen", "gar_chat_cls", "gar_chat_gen_nr0", "gar_chat_cls_nr2", "gar_v1_chat",
            "gar_v1_chat_cls_nr1", "gar_chat_sub", "gar_v1_chat_sub", "gar_chat_sub_hop0"} <= ours


@pytest.mark.integration
def test_dataset_names_are_the_registry_configs():
    names = {yaml.safe_load(p.read_text()).get("dataset_name") for p in GAR_DIR.glob("*.yaml")} - {None}
    assert names == set(CONFIGS)
    for leaf in task_tree().leaves:
        assert leaf.yaml_dict()["dataset_kwargs"]["gar_config"] == leaf.config


@pytest.mark.integration
def test_leaves_partition_each_config():
    """Every record of a config is in exactly one non-greedy leaf of that config."""
    from gar_tasks.lm_eval_glue import load_docs

    for config in CONFIGS:
        n = len(load_records(config))
        for route in ("loglikelihood", "chat"):
            leaves = [leaf for leaf in task_tree().leaves if leaf.config == config and "greedy" not in leaf.template
                      and ("chat" in leaf.template) == (route == "chat")]
            ids = [i for leaf in leaves for i in load_docs(leaf.config, leaf.family, leaf.n_r, leaf.pair)["test"]["id"]]
            assert len(ids) == len(set(ids)) == n, (config, route)


@pytest.mark.e2e
def test_plain_include_path_route_without_the_hook(tmp_path):
    code = textwrap.dedent("""
        import sys
        from lm_eval.tasks import TaskManager
        assert "gar" not in TaskManager().all_groups, "hook active although switched off"
        tm = TaskManager(include_path=sys.argv[1])
        assert {"gar", "gar_gen", "gar_cls", "gar_v1"} <= set(tm.all_groups)
        print("ok")
    """)
    path = subprocess.run([sys.executable, "-m", "gar_tasks.tasks_path"], capture_output=True, text=True,
                          check=True, cwd=tmp_path).stdout.strip()
    assert Path(path) == tasks_dir() == ROOT / "yaml_tasks"
    env = dict(os.environ, GAR_NO_LM_EVAL_HOOK="1")
    res = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.integration
def test_hook_is_cheap_and_idempotent():
    from gar_tasks import lm_eval_hook

    res = subprocess.run([sys.executable, "-c", "import sys; print('lm_eval' in sys.modules, "
                          "'gar_tasks.lm_eval_hook' in sys.modules, 'typing' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert res.stdout.split()[:2] == ["False", "True"]  # installed, lm_eval not imported
    lm_eval_hook.install()
    lm_eval_hook.install()
    assert sum(isinstance(f, lm_eval_hook._Finder) for f in sys.meta_path) <= 1


@pytest.mark.integration
def test_loading_gar_tasks_logs_no_custom_kwargs_notice(caplog):
    """lm-eval logs "Custom kwargs can be passed to `--metadata`" once per task with a custom_dataset:
    the hook drops it for GAR tasks (one per leaf otherwise) and for nothing else."""
    import logging

    from lm_eval.tasks import TaskManager, get_task_dict

    from gar_tasks.lm_eval_hook import CUSTOM_KWARGS_NOTICE, TASK_LOGGER

    with caplog.at_level(logging.WARNING, logger=TASK_LOGGER):
        tasks = get_task_dict(["gar_cls_nr0", "gar_v1_gen_nr2"], TaskManager())
        other = logging.getLogger(TASK_LOGGER)
        other.warning("squad: %s in console", CUSTOM_KWARGS_NOTICE)  # another task's notice passes
        other.warning("gar_cls_nr0: something else")  # and so does any other message of a GAR task
    def leaves(d) -> list[str]:
        return [n for k, v in d.items() for n in (leaves(v) if isinstance(v, dict) else [k])]

    assert len(leaves(tasks)) >= 10  # the leaves really loaded (each would have logged the notice)
    texts = [r.getMessage() for r in caplog.records if r.name == TASK_LOGGER]
    assert [t for t in texts if CUSTOM_KWARGS_NOTICE in t] == [f"squad: {CUSTOM_KWARGS_NOTICE} in console"]
    assert "gar_cls_nr0: something else" in texts


# ---------------------------------------------------------------------------------------------
# oracle: a model that always knows the answer scores 1.0 everywhere, one that never does 0.0

class OracleLM(LM):
    """Answers from the records themselves: catches target, choice and delimiter bugs."""

    def __init__(self, correct: bool, configs=tuple(CONFIGS)):
        super().__init__()
        self.correct = correct
        self.answer_of: dict[str, str] = {}
        self.chat_of: dict[str, GARRecord] = {}  # the chat route's user message -> record
        for config in configs:
            for split in CONFIGS[config].splits:
                for r in load_records(config, split=split):
                    assert self.answer_of.setdefault(r.prompt, r.answer) == r.answer, "ambiguous prompt"
                    self.chat_of.setdefault(chat_doc_to_text(r.to_dict()), r)

    def _chat_reply(self, r: GARRecord) -> str:
        """A chatty reply that only the filters reduce to the answer: case, punctuation, extra lines."""
        if r.family == "cls":
            label = r.answer if self.correct else next(c for c in r.choices if c != r.answer)
            return f" {label.upper()}, that follows from the premise.\nNo further comment." if label == "Yes" \
                else f"{label}. It does not follow; yes, I am sure."
        if self.correct:
            return f"Answer: {r.answer.upper()}.\nThe premise says so."
        return next((c for c in r.choices if c != r.answer), "nobody") + "\n" + r.answer

    def _right(self, context: str, continuation: str) -> bool:
        return continuation == " " + self.answer_of[context]

    def loglikelihood(self, requests):
        out = []
        for req in requests:
            ctx, cont = req.args
            right = self._right(ctx, cont) == self.correct
            out.append((0.0 if right else -5.0, right))
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        out = []
        for req in requests:
            if req.args[0] in self.chat_of:
                out.append(self._chat_reply(self.chat_of[req.args[0]]))
                continue
            answer = self.answer_of[req.args[0]]
            out.append(" " + answer + "\n" if self.correct else " certainly not " + answer)
        return out


@pytest.mark.integration
@pytest.mark.parametrize("correct", [True, False])
def test_oracle_scores_exactly_one_or_zero_on_every_leaf(correct, task_manager):
    from lm_eval import simple_evaluate

    tree = task_tree()
    tasks = [g.name for g in tree.groups if g.name in ("gar", "gar_v1", "gar_sub", "gar_v1_sub")] + [
        "gar_gen_greedy", "gar_v1_gen_greedy"]
    res = simple_evaluate(model=OracleLM(correct), tasks=tasks, task_manager=task_manager,
                          bootstrap_iters=0, log_samples=False)
    results = res["results"]
    want = 1.0 if correct else 0.0
    leaves = [leaf for leaf in tree.leaves if "chat" not in leaf.template]  # the chat route: the next test
    for leaf in leaves:
        metric = "exact_match,none" if leaf.name.endswith("greedy") else "acc,none"
        assert results[leaf.name][metric] == want, leaf.name
    for g in tree.groups:
        if g.metric == "acc":
            assert res["groups"][g.name]["acc,none"] == want, g.name
    for config in ("paper", "sub", "v1_sub"):
        assert sum(res["n-samples"][leaf.name]["effective"] for leaf in leaves
                   if leaf.config == config and "greedy" not in leaf.template) == len(load_records(config))
    members = {g.name: g.tasks for g in tree.groups}

    def under(name):  # every task below a group
        return {name} | {t for child in members.get(name, ()) for t in under(child)}

    benchmark = under("gar") | under("gar_v1")
    assert not {leaf.name for leaf in tree.leaves if leaf.config in ("sub", "v1_sub")} & benchmark


@pytest.mark.integration
@pytest.mark.parametrize("correct", [True, False])
def test_oracle_chat_model_scores_exactly_one_or_zero_through_the_filters(correct, task_manager):
    """Every chat leaf and group: replies in mixed case, with punctuation, prefixes and further lines."""
    from lm_eval import simple_evaluate

    tree = task_tree()
    chat = [leaf for leaf in tree.leaves if "chat" in leaf.template]
    assert {leaf.config for leaf in chat} == set(CONFIGS)
    res = simple_evaluate(model=OracleLM(correct), tasks=["gar_chat", "gar_v1_chat", "gar_chat_sub", "gar_v1_chat_sub"],
                          task_manager=task_manager, bootstrap_iters=0, log_samples=True)
    want = 1.0 if correct else 0.0
    for leaf in chat:
        assert res["results"][leaf.name]["exact_match,answer"] == want, leaf.name
    for g in tree.groups:
        if g.name.startswith(("gar_chat", "gar_v1_chat")):
            assert res["groups"][g.name]["exact_match,answer"] == want, g.name
    for config in CONFIGS:
        assert sum(res["n-samples"][leaf.name]["effective"] for leaf in chat if leaf.config == config) == \
            len(load_records(config))
    # what the filters extracted is in the samples: the lower-cased answer (right) or something else
    for name in ("gar_chat_gen_nr1_gender_city", "gar_v1_chat_cls_nr2_gender_usage", "gar_chat_sub_hop1"):
        for s in res["samples"][name]:
            (extracted,) = s["filtered_resps"]
            assert (extracted == s["doc"]["answer"].lower()) == correct, (name, s["resps"], extracted)


# ---------------------------------------------------------------------------------------------
# data source switch, the `gar eval` wrapper, and the installed artefacts

@pytest.mark.integration
def test_gar_source_switches_the_data_without_editing_yaml(tmp_path, monkeypatch):
    from gar_tasks import hub, load as load_mod
    from gar_tasks.lm_eval_glue import load_docs

    folder = tmp_path / "hub"
    hub.build_folder(folder, ["paper"])
    monkeypatch.setattr(load_mod, "_load_all", load_mod._load_all.__wrapped__)  # no cross-test cache
    calls = []
    real = load_mod._load_folder
    monkeypatch.setattr(load_mod, "_load_folder", lambda f, c: calls.append((f, c)) or real(f, c))
    offline = load_docs("paper", "cls", 1, "gender_city")["test"]
    assert calls == []
    via_metadata = load_docs("paper", "cls", 1, "gender_city", gar_source=str(folder), version=1.0)["test"]
    n = len(calls)
    assert n >= 1 and set(calls) == {(folder, "paper")}
    monkeypatch.setenv("GAR_SOURCE", str(folder))
    via_env = load_docs("paper", "cls", 1, "gender_city")["test"]
    assert len(calls) > n and set(calls) == {(folder, "paper")}
    assert list(offline["id"]) == list(via_metadata["id"]) == list(via_env["id"]) and len(offline) == 256
    assert list(offline["prompt"]) == list(via_env["prompt"])


@pytest.mark.integration
def test_gar_eval_adds_defaults_and_passes_everything_through(monkeypatch):
    from gar_tasks import cli

    monkeypatch.setattr("gar_tasks.models.embedded_model_path", lambda *a, **k: Path("/m/smol"))
    argv = cli.lm_eval_argv(["--limit", "3", "--batch_size=4"])
    assert argv[0] == "run" and argv[1:5] == ["--limit", "3", "--batch_size=4", "--tasks"]
    assert argv[argv.index("--tasks") + 1] == "gar" and argv[argv.index("--model") + 1] == "hf"
    assert argv[argv.index("--model_args") + 1] == "pretrained=/m/smol,dtype=float32"
    assert Path(argv[argv.index("--include_path") + 1]) == tasks_dir()
    mine = cli.lm_eval_argv(["--tasks=gar_cls", "--model", "dummy", "--model_args", "x=1", "--include_path", "/t"])
    assert mine == ["run", "--tasks=gar_cls", "--model", "dummy", "--model_args", "x=1", "--include_path", "/t"]


@pytest.mark.integration
def test_gar_eval_resolves_embedded_model_names_in_model_args(monkeypatch, tmp_path):
    """pretrained=organism names the packaged folder; a real path or Hub id passes unchanged."""
    from gar_tasks import cli

    monkeypatch.setattr("gar_tasks.models.embedded_model_path", lambda name="smollm2", **k: Path(f"/m/{name}"))
    argv = cli.lm_eval_argv(["--model_args", "pretrained=organism,dtype=float32"])
    assert argv[argv.index("--model_args") + 1] == "pretrained=/m/organism,dtype=float32"
    assert "--model_args=pretrained=/m/smollm2" in cli.lm_eval_argv(["--model_args=pretrained=smollm2"])
    kept = ["--model_args", "pretrained=HuggingFaceTB/SmolLM2-135M,dtype=bfloat16", "--tasks", "organism"]
    assert cli.lm_eval_argv(kept)[1:5] == kept
    monkeypatch.chdir(tmp_path)
    (tmp_path / "organism").mkdir()  # a local folder of that name wins, as lm-eval would load it
    assert cli.lm_eval_argv(["--model_args", "pretrained=organism"])[2] == "pretrained=organism"


@pytest.mark.integration
def test_gar_eval_runs_lm_eval_in_process(tmp_path, capsys):
    from gar_tasks.cli import main

    out = tmp_path / "res"
    rc = main(["eval", "--model", "dummy", "--model_args", "", "--tasks", "gar_cls_nr0_gender_city",
               "--limit", "2", "--output_path", str(out)])
    assert rc == 0
    assert "gar_cls_nr0_gender_city" in capsys.readouterr().out
    assert list(out.rglob("results_*.json"))


@pytest.mark.integration
def test_gar_eval_writes_no_hub_token_to_any_file(tmp_path, capsys, tiny_dir, monkeypatch):
    """A token in --model_args reaches the Hub client as HF_TOKEN for the run, never a file of
    lm-eval's (results and samples record model_args verbatim) nor the console."""
    from gar_tasks import cli

    secret = "hf_" + "Zq9" * 12
    monkeypatch.delenv("HF_TOKEN", raising=False)
    argv, token = cli.token_out_of_model_args(["run", "--model_args", f"pretrained=x,token={secret},dtype=float32",
                                               f"--model_args=token={secret}"])
    assert token == secret and argv == ["run", "--model_args", "pretrained=x,dtype=float32", "--model_args="]
    out = tmp_path / "res"
    rc = cli.main(["eval", "--model", "hf", "--model_args", f"pretrained={tiny_dir},token={secret},dtype=float32",
                   "--tasks", "gar_cls_nr0_gender_city", "--limit", "2", "--output_path", str(out), "--log_samples"])
    printed = capsys.readouterr()
    assert rc == 0
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.name.startswith("results_") for f in files) and any(f.name.startswith("samples_") for f in files)
    assert all(secret not in f.read_text() for f in files)
    assert secret not in printed.out + printed.err
    assert "HF_TOKEN" not in __import__("os").environ  # handed over for the run only


@pytest.mark.e2e
def test_wheel_ships_tasks_data_and_the_startup_hook(tmp_path):
    """`pip install` (non-editable) gets the hook, the YAML tasks and the data; RECORD lists the
    hook, so `pip uninstall` removes it."""
    import zipfile

    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel, = tmp_path.glob("gar_eval-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "gar_eval_lm_eval.pth" in names
    assert {f"yaml_tasks/gar/{p.name}" for p in GAR_DIR.iterdir() if p.is_file() and p.suffix != ".pyc"} <= names
    assert "gar_tasks/data/vocab/person_adjs.json" in names and "gar_tasks/data/card.md" in names
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    assert "gar_eval_lm_eval.pth," in zipfile.ZipFile(wheel).read(record).decode()
    # the task card and its template, and the upstream-proposed plugin entry points in the metadata
    assert {"yaml_tasks/gar/README.md", "gar_tasks/data/task_readme.md"} <= names
    eps = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "[lm_eval.tasks]\ngar = yaml_tasks\n" in eps and "[lm_eval.models]" in eps


@pytest.mark.integration
def test_quick_samples_pick_exactly_the_sub_questions_of_the_picked_parents():
    """The demo's --samples: N docs per benchmark leaf (as --limit N) and all, and only, their
    sub-questions, so the report's gap joins every picked generation document."""
    from gar_tasks.lm_eval_glue import load_docs, quick_samples
    from gar_tasks.subq import sub_kinds

    picked = quick_samples(3)
    tree = task_tree()
    bench = [leaf for leaf in tree.leaves if leaf.config == "paper" and leaf.template in ("_template_gen",
                                                                                           "_template_cls")]
    assert {leaf.name for leaf in bench} | {"gar_sub_assoc", "gar_sub_hop0", "gar_sub_hop1"} == set(picked)
    parents = {}
    for leaf in bench:
        assert picked[leaf.name] == [0, 1, 2]
        if leaf.family == "gen":
            ds = load_docs("paper", "gen", leaf.n_r, leaf.pair)["test"].select(range(3))
            parents.update({r["id"]: (r["rel0"], r["rel1"]) for r in ds})
    got = {}
    for kind in ("sub_assoc", "sub_hop0", "sub_hop1"):
        ds = load_docs("sub", kind)["test"]
        got[kind] = {ds[i]["pair_id"] for i in picked[f"gar_{kind}"]}
    assert set().union(*got.values()) == set(parents)
    for pid, (rel0, rel1) in parents.items():
        assert {k for k in got if pid in got[k]} == set(sub_kinds(rel0, rel1)), pid
    chat = quick_samples(2, chat=True)
    assert "gar_chat_sub_assoc" in chat and all(name.startswith("gar_chat") for name in chat)


@pytest.mark.integration
def test_api_extra_is_lm_evals_own_and_installed():
    """`pip install "gar-eval[api]"` = lm-eval's `api` extra at our lm-eval version (what the chat and
    API models need); the dev extra (tests) carries it and a server, so all of it is importable here."""
    import re
    import tomllib
    from importlib.metadata import distribution, requires, version

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["api"] == [f"lm-eval[api]=={version('lm_eval')}"]
    assert "gar-eval[api]" in extras["dev"] and any(d.startswith("transformers[serving]") for d in extras["dev"])
    api = [r.split(";")[0].strip() for r in requires("lm_eval") if re.search(r"extra == .api.", r)]
    assert {"tenacity", "aiohttp", "requests"} <= {re.split(r"[<>=!~ \[]", r)[0].lower() for r in api}
    for req in api:
        distribution(re.split(r"[<>=!~ \[]", req)[0])  # raises if missing
    for name in ("fastapi", "uvicorn"):  # transformers serve
        distribution(name)


@pytest.mark.unit
def test_task_card_changelog_follows_metadata_version(tmp_path):
    """A version bump in a template without its changelog line fails the card (and so the stale test);
    the card lists every group, tag and grid leaf of the tree."""
    import shutil

    from gar_tasks.errors import GARConfigError
    from gar_tasks.lm_eval_glue import TASK_CHANGELOG, template_versions

    for p in GAR_DIR.glob("_template_*"):
        shutil.copy(p, tmp_path / p.name)
    card = render_task_readme(tmp_path)
    assert set(template_versions(tmp_path).values()) <= set(TASK_CHANGELOG)
    for heading in ("### Paper", "### Citation", "### Groups, Tags, and Tasks", "### Checklist", "### Changelog"):
        assert heading in card
    tree = task_tree()
    assert all(f"* `{g.name}`:" in card for g in tree.groups)
    assert all(f"* `{t}`:" in card for t in tree.tags)
    assert all(f"`{leaf.name}`" in card or leaf.n_r is not None for leaf in tree.leaves)
    assert "- [ ]" not in card and "* [ ]" not in card  # the checklist is filled
    gen = tmp_path / "_template_gen"
    gen.write_text(gen.read_text().replace("version: 1.0", "version: 9.1"))
    with pytest.raises(GARConfigError, match="9.1"):
        render_task_readme(tmp_path)


# ---------------------------------------------------------------------------------------------
# the lm_eval.tasks entry point and the startup hook: our folder is registered once

def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.mark.unit
def test_pyproject_declares_the_lm_eval_plugin_entry_points():
    from gar_tasks import lm_eval_hook

    eps = _pyproject()["project"]["entry-points"]
    tasks = eps[lm_eval_hook.TASKS_ENTRY_POINT_GROUP]
    assert list(tasks.values()) == [lm_eval_hook.TASKS_PACKAGE]
    # the value resolves to our folder the way the upstream proposal resolves it (package directory)
    import importlib.util

    spec = importlib.util.find_spec(lm_eval_hook.TASKS_PACKAGE)
    assert Path(list(spec.submodule_search_locations)[0]).resolve() == tasks_dir().resolve()
    assert eps["lm_eval.models"] == lm_eval_hook.MODELS


class _FakeTaskManager:
    def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
        self.include_path = include_path


def _fake_manager_module(reads_plugins: bool):
    import types

    module = types.ModuleType("fake_lm_eval_tasks_manager")
    module.TaskManager = type("TaskManager", (_FakeTaskManager,), {})
    if reads_plugins:
        module.TASKS_ENTRY_POINT_GROUP = "lm_eval.tasks"
    return module


@pytest.mark.unit
@pytest.mark.parametrize("reads, declared, adds", [(True, True, False), (True, False, True),
                                                     (False, True, True), (False, False, True)])
def test_hook_adds_our_folder_once_unless_lm_eval_reads_the_entry_point(monkeypatch, reads, declared, adds):
    import logging

    from gar_tasks import lm_eval_hook

    monkeypatch.setattr(lm_eval_hook, "task_plugin_declared", lambda: declared)
    module = _fake_manager_module(reads)
    lm_eval_hook.patch_task_manager(module)
    lm_eval_hook.patch_task_manager(module)  # idempotent
    ours = tasks_dir()
    for given in (None, [ours], "/elsewhere"):
        got = module.TaskManager(include_path=given).include_path
        if not adds:
            assert got == given  # lm-eval indexes the folder from the entry point: no second copy
        else:
            paths = [Path(p) for p in (got if isinstance(got, list) else [got])]
            assert [p.resolve() for p in paths].count(ours.resolve()) == 1
            assert paths[0] == ours or given == [ours]
    assert any(isinstance(f, lm_eval_hook._GarNoticeFilter)
               for f in logging.getLogger(lm_eval_hook.TASK_LOGGER).filters)  # the notice filter either way


@pytest.mark.unit
def test_task_plugin_declared_reads_the_entry_point_group(monkeypatch):
    import importlib.metadata as md

    from gar_tasks import lm_eval_hook

    ours = md.EntryPoint(name="gar", value="yaml_tasks", group="lm_eval.tasks")
    other = md.EntryPoint(name="x", value="other_pkg.tasks", group="lm_eval.tasks")
    groups: dict[str, list] = {"lm_eval.tasks": [other, ours]}
    monkeypatch.setattr(md, "entry_points", lambda group: groups.get(group, []))
    assert lm_eval_hook.task_plugin_declared()
    groups["lm_eval.tasks"] = [other]
    assert not lm_eval_hook.task_plugin_declared()


@pytest.mark.integration
def test_installed_lm_eval_gets_our_folder_from_the_hook_exactly_once():
    """lm-eval 0.4.13 reads no ``lm_eval.tasks`` group: the hook registers the folder, once, also
    when the user passes it again."""
    import lm_eval.tasks.manager as manager

    from gar_tasks import lm_eval_hook

    assert not lm_eval_hook.lm_eval_reads_task_plugins(manager)
    for given in (None, str(tasks_dir())):
        tm = manager.TaskManager(include_path=given)
        assert [Path(p).resolve() for p in tm.include_path].count(tasks_dir().resolve()) == 1
        paths = [e.yaml_path for e in tm.task_index.values() if e.yaml_path and Path(e.yaml_path).parent == GAR_DIR]
        assert len(paths) == len(set(paths)) == len(list(GAR_DIR.glob("*.yaml")))


@pytest.mark.integration
def test_loader_documents_do_not_depend_on_the_hash_seed(tmp_path):
    """``accelerate launch`` builds the dataset once per rank: every rank must see the same documents,
    whatever its ``PYTHONHASHSEED`` (set/dict order of strings would differ between ranks)."""
    code = textwrap.dedent("""
        import hashlib, json
        from gar_tasks.lm_eval_glue import load_docs
        h = hashlib.sha256()
        for args in [("paper", "cls", 1, "gender_city"), ("paper", "gen", 2, None), ("v1", "gen", 0, None),
                     ("v1", "cls", None, "occupation_usage"), ("sub", "sub_hop1", None, None)]:
            for split, ds in sorted(load_docs(*args).items()):
                h.update(split.encode())
                for doc in ds:
                    h.update(json.dumps(doc, sort_keys=True).encode())
        print(h.hexdigest())
    """)
    digests = []
    for seed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed, GAR_NO_LM_EVAL_HOOK="1", PYTHONPATH=str(ROOT))
        env.pop("GAR_SOURCE", None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        digests.append(res.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]
