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
from gar_tasks.lm_eval_glue import render_yaml_files, task_tree
from gar_tasks.lm_eval_hook import tasks_dir
from gar_tasks.load import load_records

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
        leaves = [leaf for leaf in task_tree().leaves if leaf.config == config and "greedy" not in leaf.template]
        ids = [i for leaf in leaves for i in load_docs(leaf.config, leaf.family, leaf.n_r, leaf.pair)["test"]["id"]]
        assert len(ids) == len(set(ids)) == n


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


# ---------------------------------------------------------------------------------------------
# oracle: a model that always knows the answer scores 1.0 everywhere, one that never does 0.0

class OracleLM(LM):
    """Answers from the records themselves: catches target, choice and delimiter bugs."""

    def __init__(self, correct: bool, configs=tuple(CONFIGS)):
        super().__init__()
        self.correct = correct
        self.answer_of: dict[str, str] = {}
        for config in configs:
            for split in CONFIGS[config].splits:
                for r in load_records(config, split=split):
                    assert self.answer_of.setdefault(r.prompt, r.answer) == r.answer, "ambiguous prompt"

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
    for leaf in tree.leaves:
        metric = "exact_match,none" if leaf.name.endswith("greedy") else "acc,none"
        assert results[leaf.name][metric] == want, leaf.name
    for g in tree.groups:
        assert res["groups"][g.name]["acc,none"] == want, g.name
    for config in ("paper", "sub", "v1_sub"):
        assert sum(res["n-samples"][leaf.name]["effective"] for leaf in tree.leaves
                   if leaf.config == config and "greedy" not in leaf.template) == len(load_records(config))
    members = {g.name: g.tasks for g in tree.groups}

    def under(name):  # every task below a group
        return {name} | {t for child in members.get(name, ()) for t in under(child)}

    benchmark = under("gar") | under("gar_v1")
    assert not {leaf.name for leaf in tree.leaves if leaf.config in ("sub", "v1_sub")} & benchmark


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
def test_gar_eval_runs_lm_eval_in_process(tmp_path, capsys):
    from gar_tasks.cli import main

    out = tmp_path / "res"
    rc = main(["eval", "--model", "dummy", "--model_args", "", "--tasks", "gar_cls_nr0_gender_city",
               "--limit", "2", "--output_path", str(out)])
    assert rc == 0
    assert "gar_cls_nr0_gender_city" in capsys.readouterr().out
    assert list(out.rglob("results_*.json"))


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
