"""`gar report`: the numbers of report.json against a hand computation, the files, the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gar_tasks.cli import main
from gar_tasks.configs import CONFIGS
from gar_tasks.errors import GARDataError
from gar_tasks.report import OUTPUTS, make_report

pytestmark = pytest.mark.unit

TS_OLD, TS = "2024-12-31T23-59-59.000001", "2025-01-02T03-04-05.678901"
TS2, TS3 = "2025-02-01T00-00-00.000001", "2025-03-01T00-00-00.000001"
P = "paper/test/"
# parents (all of task row 0, pair gender_city) -> (n_r, parent correct, {sub kind: correct})
A, B = P + "r0.01.---.gen/000", P + "r0.01.---.gen/001"  # equal, child: sub_assoc + sub_hop1
C, D = P + "r0.11.---.gen/000", P + "r0.11.---.gen/001"  # child, child: all three
E = P + "r0.00.---.gen/000"  # equal, equal: no sub samples scored
F = P + "r0.10.---.gen/000"  # child, equal: sub_hop0 missing
PLAN = {
    A: (1, False, {"sub_assoc": True, "sub_hop1": True}),  # subs right, composite wrong: counts for the gap
    B: (1, True, {"sub_assoc": True, "sub_hop1": True}),
    C: (2, True, {"sub_assoc": True, "sub_hop0": True, "sub_hop1": True}),
    D: (2, False, {"sub_assoc": True, "sub_hop0": False, "sub_hop1": True}),  # a sub wrong: joined only
    E: (0, True, {}),
    F: (1, False, {"sub_assoc": True}),  # incomplete: not joined
}
CLS = {P + "r0.00.---.cls/000": True, P + "r0.00.---.cls/001": False}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    recs = CONFIGS["paper"].splits["test"]() + CONFIGS["sub"].splits["test"]()
    return {r.id: r.to_dict() for r in recs}


def _line(doc: dict, metric: str, value) -> str:
    return json.dumps({"doc_id": 0, "doc": doc, "target": " " + doc["answer"], "resps": [], "filtered_resps": [],
                       "filter": "none", "metrics": [metric], "doc_hash": "x", metric: value})


def _write(folder: Path, task: str, ts: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"samples_{task}_{ts}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def results(tmp_path, docs) -> Path:
    run = tmp_path / "results" / "tiny-model"
    by_task: dict[str, list[str]] = {}
    for pid, (n_r, ok, subs) in PLAN.items():
        by_task.setdefault(f"gar_gen_nr{n_r}_gender_city", []).append(_line(docs[pid], "acc", int(ok)))
        for kind, sub_ok in subs.items():
            by_task.setdefault(f"gar_{kind}", []).append(_line(docs[f"{pid}/{kind}"], "acc", int(sub_ok)))
    by_task["gar_cls_nr0_gender_city"] = [_line(docs[i], "acc", int(ok)) for i, ok in CLS.items()]
    by_task["gar_gen_greedy"] = [_line(docs[E], "exact_match", 0.0)]
    by_task["other_task"] = [json.dumps({"doc_id": 0, "doc": {"question": "2+2"}, "acc": 1})]  # not GAR: skipped
    for task, lines in by_task.items():
        _write(run, task, TS, lines)
    # an earlier run scored A right: the later file replaces it
    _write(run, "gar_gen_nr1_gender_city", TS_OLD, [_line(docs[A], "acc", 1)])
    (run / f"results_{TS}.json").write_text(json.dumps({"results": {}, "model_name": "tiny-model"}))
    return tmp_path / "results"


def _acc(correct: int, n: int) -> dict:
    return {"correct": correct, "n": n, "acc": correct / n}


def _cell(family: str, n_r: int, correct: int, n: int) -> dict:
    return {"family": family, "n_r": n_r, "pair": "gender_city", **_acc(correct, n)}


def test_every_number_matches_a_hand_computation(results, tmp_path):
    report, md, written = make_report(results, tmp_path / "rep")
    assert [p.name for p in written] == list(OUTPUTS)
    assert json.loads((tmp_path / "rep" / "report.json").read_text()) == report
    assert report["model"] == "tiny-model" and report["samples"] == 6 + 11 + 2 + 1  # parents, subs, cls, greedy
    acc = report["metrics"]["acc"]
    assert acc["cells"] == [
        _cell("gen", 0, 1, 1),  # E
        _cell("gen", 1, 1, 3),  # A wrong (the later run), B right, F wrong
        _cell("gen", 2, 1, 2),  # C right, D wrong
        _cell("cls", 0, 1, 2),
        _cell("sub_assoc", 1, 3, 3),  # A B F
        _cell("sub_assoc", 2, 2, 2),  # C D
        _cell("sub_hop0", 2, 1, 2),  # C right, D wrong
        _cell("sub_hop1", 1, 2, 2),  # A B
        _cell("sub_hop1", 2, 2, 2),  # C D
    ]
    assert acc["by_family"] == {"gen": _acc(3, 6), "cls": _acc(1, 2), "sub_assoc": _acc(5, 5),
                                "sub_hop0": _acc(1, 2), "sub_hop1": _acc(4, 4)}
    assert acc["by_family_n_r"] == {
        "gen": {"0": _acc(1, 1), "1": _acc(1, 3), "2": _acc(1, 2)}, "cls": {"0": _acc(1, 2)},
        "sub_assoc": {"1": _acc(3, 3), "2": _acc(2, 2)}, "sub_hop0": {"2": _acc(1, 2)},
        "sub_hop1": {"1": _acc(2, 2), "2": _acc(2, 2)}}
    # joined: A B C D (E has no subs, F lacks sub_hop0); all subs right: A B C; of which wrong: A
    assert acc["gap"] == {
        "overall": {"wrong": 1, "all_subs_right": 3, "gap": 1 / 3, "joined": 4}, "parents": 6,
        "by_n_r": {"1": {"wrong": 1, "all_subs_right": 2, "gap": 1 / 2, "joined": 2},
                   "2": {"wrong": 0, "all_subs_right": 1, "gap": 0.0, "joined": 2}}}
    em = report["metrics"]["exact_match"]  # the greedy task: its own section, no sub-questions to join
    assert em["cells"] == [{"family": "gen", "n_r": 0, "pair": "gender_city", "correct": 0, "n": 1, "acc": 0.0}]
    assert em["gap"] == {"overall": {"wrong": 0, "all_subs_right": 0, "gap": None, "joined": 0},
                         "parents": 1, "by_n_r": {}}
    assert acc["by_form"] == {f: {"---": t} for f, t in acc["by_family"].items()}  # PLAN: plain forms only
    assert "| all | 1 | 3 | 0.333 | 4 |" in md and "| gen | 1 | gender_city | 1 | 3 | 0.333 |" in md


def test_cli_writes_the_three_files(results, tmp_path, capsys):
    out = tmp_path / "new" / "rep"
    assert main(["report", str(results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert (out / "report.md").read_text(encoding="utf-8") == printed
    assert (out / "acc_vs_nr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["metrics"]["acc"]["gap"]["overall"]["gap"] == 1 / 3
    # default --out: the results folder itself
    assert main(["report", str(results)]) == 0
    assert all((results / name).is_file() for name in OUTPUTS)


def _fails(capsys, args, match):
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gar: error: ") and match in err and err.count("\n") == 1, err


def test_errors_are_one_line_and_write_nothing(results, tmp_path, capsys, docs):
    out = tmp_path / "rep"
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, [str(empty), "--out", str(out)], "no lm-eval samples files")
    _fails(capsys, [str(tmp_path / "absent"), "--out", str(out)], "no such folder")
    only_other = tmp_path / "other" / "m"
    _write(only_other, "hellaswag", TS, [json.dumps({"doc": {"q": 1}, "acc": 1})])
    _fails(capsys, [str(only_other), "--out", str(out)], "no GAR samples")
    _write(results / "tiny-model", "gar_sub_assoc", "2026-01-01T00-00-00.000001", ['{"doc": '])
    _fails(capsys, [str(results), "--out", str(out)], "not valid JSON")
    (results / "tiny-model" / "samples_gar_sub_assoc_2026-01-01T00-00-00.000001.jsonl").unlink()
    # a samples file without its results file, in a folder holding two models' runs: whose is it?
    _results(results / "tiny-model", TS2, "other-model", "pretrained=other-model")
    _write(results / "tiny-model", "gar_sub_assoc", TS3, [_line(docs[A + "/sub_assoc"], "acc", 1)])
    _fails(capsys, [str(results), "--out", str(out)], "cannot tell which model wrote it")
    _fails(capsys, [str(results), str(empty)], "give --out DIR")
    assert not out.exists()
    with pytest.raises(GARDataError):
        make_report(results / "tiny-model" / f"results_{TS}.json")


# ---------------------------------------------------------------------------------------------
# several models: the comparison; never mixing two models; the classification pair score

def _results(folder: Path, ts: str, name: str, args: str, params: int | None = None) -> None:
    cfg = {"model": "hf", "model_args": args, **({"model_num_parameters": params} if params else {})}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"results_{ts}.json").write_text(json.dumps({"results": {}, "model_name": name, "config": cfg}))


def _cls_line(doc: dict, ll_yes: float, ll_no: float) -> str:
    """A multiple_choice sample as lm-eval logs it: per choice [log-likelihood, is_greedy] as strings."""
    pred = "Yes" if ll_yes > ll_no else "No"
    d = json.loads(_line(doc, "acc", float(pred == doc["answer"])))
    d["resps"] = [[[str(ll_yes), "False"]], [[str(ll_no), "False"]]]
    d["filtered_resps"] = [[str(ll_yes), "False"], [str(ll_no), "False"]]
    return json.dumps(d)


C0 = P + "r0.00.---.cls/"
# twins (Yes id, No id) -> (logL Yes, logL No) of each: win (true +2 > false -1), loss (+1 < +1.5), tie
TWINS = {("000", "001"): ((-1, -3), (-2, -1)), ("002", "003"): ((-1, -2), (-0.5, -2)),
         ("004", "005"): ((-1, -1.5), (-2, -2.5))}


def _cls_twins(docs) -> list[str]:
    lines = [_cls_line(docs[C0 + i], *ll) for ids, lls in TWINS.items() for i, ll in zip(ids, lls)]
    return lines + [_cls_line(docs[C0 + "006"], -1, -2)]  # its twin 007 was not scored: unpaired


def test_accuracy_by_question_form(tmp_path, docs):
    """The three letters of the record id (swap_qa, negate, rev_item2str), read from the doc's own
    fields; a doc that does not carry them counts in the totals only."""
    run = tmp_path / "m"
    plan = [(P + "r0.00.S-R.gen/000", 1), (P + "r0.00.S-R.gen/001", 0), (P + "r0.00.-N-.gen/000", 0),
            (P + "r0.00.---.gen/000", 1), (P + "r0.00.---.gen/001", 1)]
    lines = [_line(docs[i], "acc", ok) for i, ok in plan]
    bare = {k: v for k, v in docs[P + "r0.00.SNR.gen/000"].items() if k != "swap_qa"}
    assert docs[P + "r0.00.S-R.gen/000"]["swap_qa"] is True and docs[P + "r0.00.-N-.gen/000"]["negate"] is True
    _write(run, "gar_gen_nr0_gender_city", TS, lines + [_line(bare, "acc", 1)])
    report, md, _ = make_report(tmp_path, tmp_path / "rep")
    sec = report["metrics"]["acc"]
    assert sec["by_family"]["gen"] == _acc(4, 6)
    assert sec["by_form"] == {"gen": {"---": _acc(2, 2), "-N-": _acc(0, 1), "S-R": _acc(1, 2)}}
    assert list(sec["by_form"]["gen"]) == ["---", "-N-", "S-R"]  # the grid's order
    assert "| family | --- | -N- | S-R |" in md and "| gen | 1.000 (2/2) | 0.000 (0/1) | 0.500 (1/2) |" in md


def test_pair_score_on_hand_built_samples(tmp_path, docs):
    run = tmp_path / "m"
    _write(run, "gar_cls_nr0_gender_city", TS, _cls_twins(docs))
    _results(run, TS, "m", "pretrained=m")
    report, md, _ = make_report(tmp_path, tmp_path / "rep")
    sec = report["metrics"]["acc"]
    # acc: 000 Yes right, 001 No right, 002 Yes right, 003 says Yes (wrong), 004 Yes right, 005 Yes wrong, 006 right
    assert sec["by_family"]["cls"] == _acc(5, 7)
    # pairs: one win, one loss, one tie (1/2): (1 + 0.5) / 3; 006 has no twin
    want = {"pairs": 3, "true_higher": 1, "ties": 1, "score": 0.5}
    assert sec["pair_score"] == {"overall": want, "unpaired": 1, "by_n_r": {"0": want}}
    assert "| cls | 5 | 7 | 0.714 | 0.500 (3) |" in md and "| all | 3 | 1 | 1 | 0.500 |" in md


def test_pair_score_separates_bias_from_discrimination(tmp_path, docs):
    """Always Yes (acc 0.5), but more so for the true statement: the pair score is 1."""
    lines = []
    for y, n in (("002", "003"), ("004", "005")):
        lines += [_cls_line(docs[C0 + y], -1, -4), _cls_line(docs[C0 + n], -1, -2)]
    _write(tmp_path / "m", "gar_cls_nr0_gender_city", TS, lines)
    sec = make_report(tmp_path, tmp_path / "rep")[0]["metrics"]["acc"]
    assert sec["by_family"]["cls"] == _acc(2, 4)
    assert sec["pair_score"]["overall"] == {"pairs": 2, "true_higher": 2, "ties": 0, "score": 1.0}


def _plan_lines(docs, plan, subs=True) -> dict[str, list[str]]:
    by_task: dict[str, list[str]] = {}
    for pid, (n_r, ok, sub) in plan.items():
        by_task.setdefault(f"gar_gen_nr{n_r}_gender_city", []).append(_line(docs[pid], "acc", int(ok)))
        for kind, sub_ok in (sub.items() if subs else ()):
            by_task.setdefault(f"gar_{kind}", []).append(_line(docs[f"{pid}/{kind}"], "acc", int(sub_ok)))
    return by_task


def test_comparison_of_two_recorded_runs(tmp_path, docs, capsys):
    a, b = tmp_path / "runs_a" / "org__model-a", tmp_path / "runs_b" / "org__model-b"
    for task, lines in _plan_lines(docs, PLAN).items():
        _write(a, task, TS, lines)
    _write(a, "gar_cls_nr0_gender_city", TS, _cls_twins(docs))
    _results(a, TS, "org/model-a", "pretrained=org/model-a,dtype=float32", params=1000)
    plan_b = {A: (1, True, {}), B: (1, True, {}), C: (2, False, {})}  # no sub-question runs
    for task, lines in _plan_lines(docs, plan_b).items():
        _write(b, task, TS2, lines)
    _write(b, "gar_cls_nr0_gender_city", TS2, [_line(docs[C0 + "000"], "acc", 1)])
    _results(b, TS2, "org/model-b", "pretrained=org/model-b", params=5000)
    out = tmp_path / "cmp"
    assert main(["report", str(tmp_path / "runs_b"), str(tmp_path / "runs_a"), "--out", str(out)]) == 0
    md = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["acc_vs_nr.png", "gap_vs_size.png", "report.json", "report.md"]
    for png in ("acc_vs_nr.png", "gap_vs_size.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((out / "report.json").read_text())
    ma, mb = rep["models"]  # in size order whatever the order of the folders
    assert (ma["label"], ma["params"], mb["label"], mb["params"]) == ("model-a", 1000, "model-b", 5000)
    # model a: the PLAN by hand (as in the one-model test, without the earlier run) + the twins
    assert ma["metrics"]["acc"]["by_family_n_r"]["gen"] == {"0": _acc(1, 1), "1": _acc(1, 3), "2": _acc(1, 2)}
    assert ma["metrics"]["acc"]["by_family"]["cls"] == _acc(5, 7)
    assert ma["metrics"]["acc"]["gap"]["overall"] == {"wrong": 1, "all_subs_right": 3, "gap": 1 / 3, "joined": 4}
    assert ma["metrics"]["acc"]["pair_score"]["overall"]["score"] == 0.5
    # model b: A B right (n_r 1), C wrong (n_r 2), no sub-questions: no gap
    assert mb["metrics"]["acc"]["by_family_n_r"]["gen"] == {"1": _acc(2, 2), "2": _acc(0, 1)}
    assert mb["metrics"]["acc"]["gap"]["overall"] == {"wrong": 0, "all_subs_right": 0, "gap": None, "joined": 0}
    assert mb["metrics"]["acc"]["pair_score"] is None
    assert "| model-a | acc | gen | 1.000 (1/1) | 0.333 (1/3) | 0.500 (1/2) | 0.500 (3/6) |" in md
    assert "| model-b | acc | gen | - | 1.000 (2/2) | 0.000 (0/1) | 0.667 (2/3) |" in md
    assert "| model-a | 1000 | acc | 1 | 3 | 0.333 | 4 of 6 |" in md
    assert "| model-b | 5000 | acc | - | - | - | 0 of 3 |" in md
    assert "| model-a | acc | 0.714 (5/7) | 0.500 | 3 |" in md and "| model-b | acc | 1.000 (1/1) | - | - |" in md


def test_one_folder_holding_two_models_is_reported_per_model(tmp_path, docs):
    """Two runs of the same model name with different dtypes written into one folder: never mixed."""
    run = tmp_path / "res" / "m"
    _write(run, "gar_gen_nr1_gender_city", TS, [_line(docs[A], "acc", 1), _line(docs[B], "acc", 1)])
    _results(run, TS, "org/m", "pretrained=org/m,dtype=bfloat16")
    _write(run, "gar_gen_nr1_gender_city", TS2, [_line(docs[A], "acc", 0), _line(docs[B], "acc", 0)])
    _results(run, TS2, "org/m", "pretrained=org/m,dtype=float32")
    rep, md, _ = make_report(tmp_path / "res", tmp_path / "rep")
    got = {m["label"]: m["metrics"]["acc"]["by_family"]["gen"] for m in rep["models"]}
    assert got == {"m (bfloat16)": _acc(2, 2), "m (float32)": _acc(0, 2)}
    assert "| m (bfloat16) | acc | gen | 1.000 (2/2) | 1.000 (2/2) |" in md
    # the same model through another lm-eval model type (a chat server): a third model, named by its type
    (run / f"results_{TS2}.json").unlink()
    _results(run, TS2, "org/m", "model=org/m,base_url=http://127.0.0.1:1/v1/chat/completions")
    d = json.loads((run / f"results_{TS2}.json").read_text())
    d["config"]["model"] = "local-chat-completions"
    (run / f"results_{TS2}.json").write_text(json.dumps(d))
    rep, _, _ = make_report(tmp_path / "res", tmp_path / "rep")
    assert [m["label"] for m in rep["models"]] == ["m (hf, bfloat16)", "m (local-chat-completions)"]
    assert [m["backend"] for m in rep["models"]] == ["hf", "local-chat-completions"]
