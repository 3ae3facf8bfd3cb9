"""The organism's model card: the README shipped beside the weights is the rendering of its
training record (so it cannot go stale), its lineage table has one row per run with the record's
values, and its front matter is a model-index the Hub reads back with the scores we state."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from gar_tasks.organism import card

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((card.FOLDER / card.RECORD).read_text())


@pytest.fixture(scope="module")
def readme() -> str:
    return (card.FOLDER / card.CARD).read_text()


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first markdown table after ``heading``, as stripped cells."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    block = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip("|").split("|")])
    return block[2:]


def test_shipped_readme_is_the_rendering_of_the_record(record, readme):
    assert readme == card.render_card(record), "stale: run python -m gar_tasks.organism.card"


def test_lineage_table_has_one_row_per_run_with_the_record_values(record, readme):
    runs = record["lineage"]
    rows = table_rows(readme, "## Lineage")
    assert len(rows) == len(runs) == 4
    for i, (row, run) in enumerate(zip(rows, runs)):
        name, parent, machine, minutes, steps, gen, cls, sha = row
        assert name == run["name"]
        assert parent == (runs[i - 1]["name"] if i else "(from scratch)")
        assert machine == run["machine"]
        assert float(minutes) == pytest.approx(run["wall_time_s"] / 60, abs=0.05)
        assert int(steps.replace(",", "")) == run["steps_done"]
        val = run["final_validation"]
        assert [float(x) for x in gen.replace("(", "").replace(")", "").split() if x != "/"] == [
            val["gen"], val["gen_nr0"], val["gen_nr1"], val["gen_nr2"]]
        assert float(cls.split()[0]) == val["cls"]
        assert run["weights_sha256"].startswith(sha.strip("`"))
        assert f"```bash\n{run['command']}\n```" in readme
    # the last run of the lineage is the shipped one
    assert runs[-1]["weights_sha256"] == record["weights_sha256"]
    assert record["lineage_note"] in readme


def test_rendering_follows_the_record(record):
    changed = copy.deepcopy(record)
    extra = dict(changed["lineage"][-1], name="e5d", machine="a test machine", wall_time_s=600.0)
    changed["lineage"].append(extra)
    rows = card.lineage_rows(changed)
    assert [r["run"] for r in rows] == ["v3", "s1", "e5b", "e5c", "e5d"]
    assert (rows[-1]["parent"], rows[-1]["machine"], rows[-1]["minutes"]) == ("e5c", "a test machine", "10.0")
    assert "| e5d | e5c | a test machine | 10.0 |" in card.render_card(changed)
    # a record without a lineage stands for itself
    alone = {k: v for k, v in record.items() if k != "lineage"}
    assert [r["parent"] for r in card.lineage_rows(alone)] == ["(from scratch)"]


def test_front_matter_is_a_model_index_with_our_scores(readme):
    from huggingface_hub import ModelCard

    data = ModelCard(readme).data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert "gar-eval/gar" in data.datasets and "interpretability" in data.tags
    got = {(r.dataset_config, r.metric_name): r.metric_value for r in data.eval_results}
    assert got[("v1", "gar_v1_gen acc")] == card.SCORES["gen"]["acc"]
    assert got[("v1", "gar_v1_cls_nr2 acc")] == card.SCORES["cls"]["nr"][2]
    assert got[("paper", "gar_cls acc")] == card.SCORES["paper_cls"]["acc"]
    assert len(got) == 16 and all(r.dataset_split == "test" for r in data.eval_results)


def test_main_rewrites_a_stale_card_and_check_reports_it(tmp_path: Path, record, capsys):
    (tmp_path / card.RECORD).write_text(json.dumps(record))
    (tmp_path / card.CARD).write_text("old\n")
    assert card.main(["--folder", str(tmp_path), "--check"]) == 1
    assert (tmp_path / card.CARD).read_text() == "old\n"
    assert card.main(["--folder", str(tmp_path)]) == 0
    assert card.main(["--folder", str(tmp_path), "--check"]) == 0
    assert (tmp_path / card.CARD).read_text() == card.render_card(record)


def test_missing_record_is_one_clear_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        card.main(["--folder", str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("gar: error: ")
    assert list(tmp_path.iterdir()) == []
