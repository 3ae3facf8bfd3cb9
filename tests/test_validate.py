"""gar_tasks.validate: the published file, generated records, corruptions, malformed files."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gar_tasks.errors import GARDataError
from gar_tasks.generate import GeneratorConfig
from gar_tasks.validate import validate_file, validate_published, validate_records
from shared_data import shared_path

pytestmark = pytest.mark.unit

# Measured on GAR_data.jsonl; DATASET_STATS sections 4 and 8 give the same numbers except where
# noted: plural_is 350 there (its pattern missed owners such as "Dr. Anthony Fauci's"), splotless
# 17 there (case-sensitive; 'Splotless John.' counts here), bare_noun 1000 and lowercase_item 32
# there (different patterns).
PUBLISHED_WARNINGS = {
    "double_listed_person": 434,
    "human:answer_not_derivable": 8,
    "human:answer_not_derivable[double_listed_person]": 6,
    "human:answer_not_derivable[similar]": 2,
    "human:label_disagrees": 8,
    "human:label_disagrees[double_listed_person]": 4,
    "human:label_disagrees[similar]": 4,
    "multiple_valid_answers": 20,
    "similar:answer_in_context": 12,
    "similar:query_in_context": 8,
    "quirk:bare_noun": 1080,
    "quirk:boys_is_not": 48,
    "quirk:lowercase_answer": 256,
    "quirk:lowercase_item": 60,
    "quirk:plural_is": 359,
    "quirk:rosie_franklin": 86,
    "quirk:splotless": 30,
    "quirk:swiming": 218,
    "quirk:that_In_other_words": 128,
    "quirk:tshirt_no_article": 23,
}
# what the v1 profile fixes (vocabulary, grammar, irreflexive similar, double-listed persons)
V1_FIXED = ("quirk:plural_is", "quirk:swiming", "quirk:splotless", "quirk:boys_is_not",
            "quirk:that_In_other_words", "quirk:tshirt_no_article", "quirk:rosie_franklin",
            "quirk:lowercase_item", "double_listed_person", "similar:answer_in_context",
            "similar:query_in_context", "human:answer_not_derivable", "human:label_disagrees")


@pytest.fixture(scope="module")
def published_path():
    return shared_path("reference/GAR_data.jsonl")


@pytest.fixture(scope="module")
def published_report(published_path):
    return validate_file(published_path)


@pytest.fixture(scope="module")
def records():
    return {p: GeneratorConfig(profile=p).build() for p in ("paper", "v1")}


@pytest.fixture(scope="module")
def reports(records):
    return {p: validate_records(recs) for p, recs in records.items()}


@pytest.fixture(scope="module")
def sample(records):
    """Two cells of the paper records: a gen cell (8 records) and a cls cell (8 pairs)."""
    recs = records["paper"]
    gen = [r for r in recs if "/r0.01.---.gen/" in r.id]
    cls = [r for r in recs if "/r0.01.---.cls/" in r.id]
    assert len(gen) == 8 and len(cls) == 16
    assert validate_records(gen + cls).ok
    return gen, cls


def _errors(rep, check):
    return [e for e in rep.errors if f"[{check}]" in e]


# ---------------------------------------------------------------------------------------------
# clean data

def test_published_file_validates(published_report):
    rep = published_report
    assert rep.format == "published" and rep.n_records == 4608
    assert rep.ok, rep.to_text()
    assert dict(rep.warnings) == PUBLISHED_WARNINGS
    assert all(rep.examples[k] for k in PUBLISHED_WARNINGS)
    assert "human:label_disagrees" in rep.to_text()


@pytest.mark.parametrize("profile", ["paper", "v1"])
def test_generated_records_validate(reports, records, profile):
    rep = reports[profile]
    assert rep.n_records == len(records[profile]) == 4608
    assert rep.ok, rep.to_text()


def test_paper_records_warn_like_the_published_file(reports, published_report):
    # the same content read from the records and from the published text gives the same audit
    assert reports["paper"].warnings == published_report.warnings


def test_v1_has_none_of_the_fixed_quirks(reports):
    for cat in V1_FIXED:
        assert reports["paper"].warnings[cat] > 0, cat  # the check can fire on this data
        assert reports["v1"].warnings[cat] == 0, (cat, reports["v1"].examples.get(cat))


def test_v1_with_knobs_validates():
    recs = GeneratorConfig(profile="v1", cxt_len=5, n_demos=2, n_per_task=2, split="validation").build()
    rep = validate_records(recs)
    assert rep.ok, rep.to_text()


# ---------------------------------------------------------------------------------------------
# corrupted records

def _shift_span(rec, role, by=1):
    spans = [dict(s) for s in rec.spans]
    (s, e), *rest = spans[-1][role]
    spans[-1][role] = ((s + by, e + by), *rest)
    return replace(rec, spans=tuple(spans))


def _flip_label(rec):
    """Flip the test row's label everywhere it is stored (text, answer, label, rows)."""
    new = "No" if rec.label == "Yes" else "Yes"
    text = rec.prompt + " " + new + "\n"
    row_spans = [dict(s) for s in rec.spans]
    (s, _), = row_spans[-1]["row"]
    row_spans[-1]["row"] = ((s, len(text) - 1),)
    rows = rec.rows[:-1] + (replace(rec.rows[-1], label=new),)
    return replace(rec, label=new, answer=new, text=text, spans=tuple(row_spans), rows=rows)


def _with_gen_answer(rec, new):
    """Replace the gen test row's answer consistently (text, spans, choices, rows): only the
    relational loop can tell it is wrong."""
    final = rec.rows[-1]
    t = final.true_index
    text = rec.prompt + " " + new + "\n"
    row_spans = [dict(s) for s in rec.spans]
    (a, _), = row_spans[-1]["A"]
    (s, _), = row_spans[-1]["row"]
    row_spans[-1]["A"] = ((a, a + len(new)),)
    row_spans[-1]["row"] = ((s, len(text) - 1),)
    answers = final.answers[:t] + (new,) + final.answers[t + 1:]
    return replace(rec, answer=new, text=text, spans=tuple(row_spans),
                   choices=tuple(dict.fromkeys(answers)), rows=rec.rows[:-1] + (replace(final, answers=answers),))


@pytest.mark.parametrize("role", ["K", "V", "Q", "A", "END"])
def test_shifted_span_is_caught(sample, role):
    gen, cls = sample
    bad = _shift_span(gen[3], role)
    rep = validate_records(gen[:3] + [bad] + gen[4:] + cls)
    assert not rep.ok and rep.error_counts["span"] == 1, rep.errors
    assert set(rep.error_counts) == {"span"}
    msg, = _errors(rep, "span")
    assert msg.startswith(bad.id) and f"{role} span" in msg


def test_flipped_cls_label_is_caught(sample):
    gen, cls = sample
    bad = _flip_label(cls[0])
    rep = validate_records(gen + [bad] + cls[1:])
    assert rep.error_counts["semantics"] == 1, rep.errors
    assert any(e.startswith(bad.id) and "expected" in e for e in _errors(rep, "semantics"))
    # both twins now carry the same label: the pair and the task balance fail too
    assert any(bad.pair_id in e for e in _errors(rep, "pairs"))
    assert any("unbalanced" in e for e in _errors(rep, "pairs"))


def test_wrong_gen_answer_is_caught(sample):
    gen, cls = sample
    rec = gen[0]
    final = rec.rows[-1]
    wrong = next(a for a in final.answers if a != final.true_answer)
    bad = _with_gen_answer(rec, wrong)
    rep = validate_records([bad] + gen[1:] + cls)
    assert set(rep.error_counts) == {"semantics"}, rep.errors
    assert any(e.startswith(f"{bad.id} row 2") and "not reachable" in e for e in rep.errors)


def test_duplicated_id_is_caught(sample):
    gen, cls = sample
    rep = validate_records(gen + [gen[2]] + cls)
    assert set(rep.error_counts) == {"id"} and rep.error_counts["id"] == 1
    assert rep.errors == [f"{gen[2].id}: [id] duplicate id"]


def test_unbalanced_task_is_caught(sample):
    gen, cls = sample
    no_twin = next(r for r in cls if r.label == "No")
    rep = validate_records(gen + [r for r in cls if r is not no_twin])
    assert set(rep.error_counts) == {"pairs"}, rep.errors
    assert any(no_twin.pair_id in e and "1 records" in e for e in rep.errors)
    assert any(no_twin.task_id in e and "8 Yes / 7 No" in e for e in rep.errors)


def test_task_id_mismatch_is_caught(sample):
    gen, _ = sample
    bad = replace(gen[0], negate=True)
    rep = validate_records([bad] + gen[1:])
    assert any(e.startswith(bad.id) and "negate=True" in e for e in _errors(rep, "id"))


def test_errors_are_capped_but_counted(sample):
    gen, cls = sample
    bad = [_shift_span(r, "Q") for r in (gen + cls) * 4]
    bad = [replace(r, id=f"{r.id}#{i}") for i, r in enumerate(bad)]
    rep = validate_records(bad)
    assert rep.error_counts["span"] == len(bad) > 50 and len(rep.errors) == 50


# ---------------------------------------------------------------------------------------------
# published format: corrupted lines

def _published_lines(published_path, n=48):
    with published_path.open(encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


def test_published_corruptions_are_caught(published_path):
    lines = _published_lines(published_path)  # first cells: 8 gen, 16 cls, 8 gen (reversed), 16 cls
    assert validate_published(lines).ok
    cls_i = next(i for i, d in enumerate(lines) if d["task_id"].startswith("g2c[") and d["texts"].endswith("Yes\n"))
    gen_i = 0
    bad = [dict(d) for d in lines]
    bad[cls_i]["texts"] = bad[cls_i]["texts"][:-4] + "No\n"
    # a wrong gen answer that is still a country name: 'Incheon' -> 'Madrid' (another value)
    assert bad[gen_i]["texts"].endswith(" Incheon\n")
    bad[gen_i]["texts"] = bad[gen_i]["texts"][:-len("Incheon\n")] + "Madrid\n"
    bad[5]["texts"] = bad[5]["texts"].replace("likes", "liked", 1)
    bad[6]["texts"] = bad[6]["texts"][:-1]
    rep = validate_published(bad)
    assert any(e.startswith(f"line {cls_i + 1} row 2: [semantics]") for e in rep.errors), rep.errors
    assert any(e.startswith(f"line {gen_i + 1} row 2: [semantics]") for e in rep.errors), rep.errors
    assert any(e.startswith("line 6: [parse]") for e in rep.errors), rep.errors
    assert any(e.startswith("line 7: [parse]") and "newline" in e for e in rep.errors), rep.errors
    assert rep.error_counts["pairs"] >= 1


# ---------------------------------------------------------------------------------------------
# files

def _write_jsonl(path, dicts):
    path.write_text("".join(json.dumps(d) + "\n" for d in dicts), encoding="utf-8")


def test_record_files_round_trip(tmp_path, sample):
    gen, cls = sample
    recs = gen + cls
    _write_jsonl(tmp_path / "r.jsonl", [r.to_dict() for r in recs])
    rep = validate_file(tmp_path / "r.jsonl")
    assert rep.ok and rep.format == "records" and rep.n_records == len(recs)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([r.to_dict() for r in recs]), tmp_path / "r.parquet")
    rep = validate_file(tmp_path / "r.parquet")
    assert rep.ok and rep.n_records == len(recs), rep.errors
    # a corrupted record in a file is reported by its id
    _write_jsonl(tmp_path / "bad.jsonl", [r.to_dict() for r in recs[:1]] + [_shift_span(recs[1], "V").to_dict()])
    rep = validate_file(tmp_path / "bad.jsonl")
    assert [e.split(":")[0] for e in rep.errors] == [recs[1].id]


def test_malformed_files_raise(tmp_path, sample):
    gen, _ = sample
    dicts = [r.to_dict() for r in gen[:4]]
    p = tmp_path / "badjson.jsonl"
    p.write_text(json.dumps(dicts[0]) + "\n" + json.dumps(dicts[1]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(GARDataError, match=r"badjson\.jsonl, line 3: invalid JSON"):
        validate_file(p)
    del dicts[1]["spans"]
    _write_jsonl(p := tmp_path / "missing.jsonl", dicts)
    with pytest.raises(GARDataError, match=r"missing\.jsonl, line 2: missing key\(s\) spans"):
        validate_file(p)
    _write_jsonl(p := tmp_path / "pub.jsonl", [{"task_id": gen[0].task_id, "texts": gen[0].text},
                                               {"task_id": gen[1].task_id}])
    with pytest.raises(GARDataError, match=r"pub\.jsonl, line 2: missing key\(s\) texts"):
        validate_file(p)
    (p := tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(GARDataError, match="no records"):
        validate_file(p)
    with pytest.raises(GARDataError, match="no such file"):
        validate_file(tmp_path / "absent.jsonl")
    (p := tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(GARDataError, match=r"junk\.parquet: cannot read parquet"):
        validate_file(p)


def test_shared_path_requires_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("GAR_SHARED_DIR", str(tmp_path))
    monkeypatch.delenv("GAR_REQUIRE_SHARED", raising=False)
    with pytest.raises(pytest.skip.Exception):
        shared_path("absent.jsonl")
    monkeypatch.setenv("GAR_REQUIRE_SHARED", "1")
    with pytest.raises(pytest.fail.Exception):
        shared_path("absent.jsonl")
    (tmp_path / "here.txt").write_text("x")
    assert shared_path("here.txt") == tmp_path / "here.txt"


def test_report_to_dict_is_json(sample):
    gen, cls = sample
    rep = validate_records(gen + [_shift_span(cls[0], "K")] + cls[1:])
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["ok"] is False and d["n_records"] == 24 and d["error_counts"] == {"span": 1}
    assert d["errors"] == rep.errors


def test_parquet_is_read_one_row_group_at_a_time_with_the_jsonl_result(tmp_path, monkeypatch):
    """A reader per row group, decoded a few rows at a time (peak memory grows as with JSON Lines:
    scripts/bench_validate_memory.py): every group is read on its own, in order, and the report
    equals the JSON Lines one."""
    import pyarrow.parquet as pq

    from gar_tasks import io

    recs = GeneratorConfig(profile="v1", n_per_task=1).build()[:60]
    recs[5] = replace(recs[5], answer="wrong")  # a finding to compare too
    monkeypatch.setattr(io, "ROW_GROUP", 7)
    monkeypatch.setattr(io, "DECODE_ROWS", 3)
    io.write_records(recs, tmp_path / "r.parquet")
    io.write_records(recs, tmp_path / "r.jsonl")
    groups = pq.ParquetFile(tmp_path / "r.parquet").num_row_groups
    assert groups == 9
    calls = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **k):
        calls.append(k.get("row_groups"))
        for b in real(self, *a, **k):
            assert b.num_rows <= 3  # decoded a few rows at a time, not a group at once
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    par = validate_file(tmp_path / "r.parquet").to_dict()
    assert calls == [[g] for g in range(groups)]
    js = validate_file(tmp_path / "r.jsonl").to_dict()
    par.pop("source", None), js.pop("source", None)
    assert par == js and not js["ok"]
