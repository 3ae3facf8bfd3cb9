"""``gar probe`` (interp.probe_run): the batched features against plain per-sequence hooks, the
seed-features mode on the released CSVs, the model mode on SmolLM2, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interp_golden import mlp_folder
from shared_data import shared_path
from tiny_models import one_thread, tiny_model, tokenizer

from gar_tasks.cli import main
from gar_tasks.errors import GARConfigError
from interp.probe import batched_head_features, head_features, snli_span, got_span, unit_directions
from interp.probe_run import choose_heads, load_items, parse_datasets, parse_k, read_heads_dir

TEXTS = ["A man plays a guitar on stage. So a person makes music.", "The cat sleeps. So the dog runs fast.",
         "Hi. So yes.", "Two kids kick a red ball in a big green park. So children play outside."]


# --- the features -----------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_features_match_plain_hooks(arch):
    """Left-padded batches (with padding: the texts differ in length) give, per sequence, the
    projection of its own unpadded last-token head output and the seed's unbatched attention feature."""
    import torch

    model, tok = tiny_model(arch), tokenizer()
    items = [snli_span(tok, t) for t in TEXTS]
    ids, spans = [i for i, _ in items], [s for _, s in items]
    assert len({len(i) for i in ids}) == len(ids)
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(2, 4, 8, generator=g)
    directions[1, 2] = 0  # a zero direction gives a zero feature
    feats = batched_head_features(model, ids, spans, directions, batch_size=3)
    assert feats["attn"].shape == feats["proj"].shape == (4, 2, 4)

    site = "model.layers.{}.self_attn.o_proj" if arch == "llama" else "transformer.h.{}.attn.c_proj"
    captured = {}
    handles = [model.get_submodule(site.format(layer)).register_forward_hook(
        lambda mod, args, out, layer=layer: captured.__setitem__(layer, args[0][0, -1].clone()))
        for layer in range(2)]
    try:
        for i, seq in enumerate(ids):
            with torch.no_grad():
                model(torch.tensor([seq]))
            for layer in range(2):
                for head in range(4):
                    d = directions[layer, head]
                    unit = d / d.norm() if d.norm() > 0 else d
                    want = float(captured[layer][head * 8:(head + 1) * 8] @ unit)
                    assert feats["proj"][i, layer, head] == pytest.approx(want, abs=1e-5), (i, layer, head)
    finally:
        for h in handles:
            h.remove()
    assert feats["proj"][:, 1, 2].tolist() == [0.0] * 4
    ref = head_features(model, ids, spans).view(4, 2, 4).numpy()
    assert abs(ref - feats["attn"]).max() < 1e-5
    # nothing depends on the batch composition
    one = batched_head_features(model, ids, spans, directions, batch_size=1)
    assert abs(one["proj"] - feats["proj"]).max() < 1e-5 and abs(one["attn"] - feats["attn"]).max() < 1e-5


@pytest.mark.unit
def test_batched_features_refuse_bad_input():
    import torch

    model, tok = tiny_model("llama"), tokenizer()
    ids, span = snli_span(tok, TEXTS[0])
    with pytest.raises(GARConfigError, match="shape"):
        batched_head_features(model, [ids], [span], torch.zeros(2, 4, 7))
    with pytest.raises(GARConfigError, match="outside"):
        batched_head_features(model, [ids], [(0, len(ids) + 1)])


@pytest.mark.unit
def test_unit_directions():
    import torch

    d = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])
    assert unit_directions(d).flatten().tolist() == pytest.approx([0.6, 0.8, 0.0, 0.0])


# --- arguments and inputs ---------------------------------------------------------------------

@pytest.mark.unit
def test_choose_heads_balances_true_and_false():
    t, f = [(1, 1), (2, 2), (3, 3)], [(4, 4), (5, 5), (6, 6)]
    assert choose_heads(t, f, 4) == [(1, 1), (2, 2), (4, 4), (5, 5)]
    assert choose_heads(t, f, 3) == [(1, 1), (2, 2), (4, 4)]
    assert choose_heads(t[:1], f, 4) == [(1, 1), (4, 4), (5, 5), (6, 6)]
    assert choose_heads(t, [], 4) == t
    assert choose_heads(t, [(1, 1), (4, 4)], 2) == [(1, 1), (4, 4)]  # a head on both lists counts once


@pytest.mark.unit
def test_parse_datasets_and_k():
    assert parse_datasets("all") == ["snli", "cities", "companies", "counterfact", "sp_en_trans"]
    assert parse_datasets("companies_true_false,snli,snli") == ["companies", "snli"]
    with pytest.raises(GARConfigError, match="unknown dataset"):
        parse_datasets("mnli")
    assert parse_k("8,4,4") == [4, 8]
    for bad in ("0", "x", ""):
        with pytest.raises(GARConfigError):
            parse_k(bad)


@pytest.mark.unit
def test_got_items_drop_the_label_word(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps(["Please answer with Yes or No. Is it true that Paris is in France? Answer: Yes",
                             "Please answer with Yes or No. Is it true that Paris is in Peru? Answer: No"]))
    texts, labels = load_items(f, "got")
    assert labels == [1, 0] and all(t.endswith("? Answer:") for t in texts)
    tok = tokenizer()
    ids, (start, end) = got_span(tok, texts[1])
    assert tok.decode(ids[start:end]).strip() == "it true that Paris is in Peru?"
    f.write_text(json.dumps(["Is it true that x? Answer: Maybe"]))
    with pytest.raises(GARConfigError, match="Answer: Yes\\|No"):
        load_items(f, "got")


def _heads_dir(path: Path, true_heads, false_heads, shape=(30, 9, 64), seed: int = 0) -> Path:
    import numpy as np

    path.mkdir(parents=True, exist_ok=True)
    (path / "heads.json").write_text(json.dumps({"true_heads": true_heads, "false_heads": false_heads}))
    direction = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    np.savez(path / "directions.npz", direction=direction)
    return path


@pytest.mark.unit
def test_read_heads_dir(tmp_path):
    d = _heads_dir(tmp_path / "h", [[3, 1], [2, 0]], [[5, 5]], shape=(6, 4, 2))
    t, f, direction = read_heads_dir(d)
    assert t == [(3, 1), (2, 0)] and f == [(5, 5)] and direction.shape == (6, 4, 2)
    assert read_heads_dir(d / "heads.json")[:2] == (t, f)
    from interp.heads import load_heads

    lt, lf, dirs = load_heads(d)  # the reader of gar heads agrees
    assert (lt, lf) == (t, f) and (dirs["direction"] == direction).all()
    (d / "heads.json").write_text(json.dumps({"true_heads": [], "false_heads": []}))
    with pytest.raises(GARConfigError, match="no heads"):
        read_heads_dir(d)
    (d / "heads.json").unlink()
    with pytest.raises(GARConfigError, match="no heads.json"):
        read_heads_dir(d)


# --- the seed's released features -------------------------------------------------------------

@pytest.mark.integration
def test_cli_seed_features_reproduce_the_seed(tmp_path, capsys):
    mlp = shared_path("reference/mlp")
    out = tmp_path / "seed"
    with one_thread():
        rc = main(["probe", "--seed-features", "--mlp-dir", str(mlp), "--datasets", "snli,sp_en_trans",
                   "--runs", "2", "--out", str(out), "-q"])
    assert rc == 0
    info = json.loads((out / "probe.json").read_text())
    snli = info["datasets"]["snli"]
    assert len(snli["4"]["accuracies"]) == 2 and snli["4"]["seed_reported"] == 0.870
    assert abs(snli["4"]["mean"] - 0.870) <= 0.02 and abs(snli["8"]["mean"] - 0.878) <= 0.02
    sp = info["datasets"]["sp_en_trans"]
    assert len(sp["4"]["accuracies"]) == 5 and abs(sp["4"]["mean"] - 0.975) <= 0.03
    md = (out / "probe.md").read_text()
    assert "| snli | 4 |" in md and "| sp_en_trans | 8 |" in md
    assert md in capsys.readouterr().out


# --- the model mode on SmolLM2 ----------------------------------------------------------------

def _mlp_dir(path: Path, n: int = 10) -> Path:
    """A miniature copy of the seed's zero-shot layout (SNLI splits + one GoT file)."""
    return mlp_folder(path, n)


ARGS = ["--datasets", "snli,sp_en_trans", "--k", "2", "--random-draws", "2", "--runs", "2", "--limit", "10",
        "--batch-size", "4", "-q"]


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    mlp = _mlp_dir(root / "mlp")
    heads = _heads_dir(root / "heads", [[14, 2], [20, 3]], [[15, 0], [9, 8]])
    out = root / "out"
    argv = ["probe", "--model", "smollm2", "--heads", str(heads), "--mlp-dir", str(mlp), "--out", str(out), *ARGS]
    with one_thread():
        rc = main(argv)
    return {"rc": rc, "out": out, "argv": argv, "root": root, "mlp": mlp}


@pytest.mark.e2e
def test_cli_smollm2_writes_both_arms(smol_run):
    assert smol_run["rc"] == 0
    out = smol_run["out"]
    info = json.loads((out / "probe.json").read_text())
    assert info["mode"] == "model" and info["n_layers"] == 30 and info["n_heads"] == 9
    for name, n_items in (("snli", {"train": 10, "validation": 10, "test": 10}), ("sp_en_trans", {"all": 10})):
        res = info["datasets"][name]
        assert res["n_items"] == n_items
        k2 = res["k"]["2"]
        assert k2["heads"] == [[14, 2], [15, 0]] and k2["true"] == [[14, 2]] and k2["false"] == [[15, 0]]
        for kind in ("attn", "proj", "both"):
            arms = k2["features"][kind]
            disc, rand = arms["discovered"], arms["random"]
            assert len(disc["accuracies"]) == (2 if name == "snli" else 5)
            assert 0.0 <= disc["mean"] <= 1.0
            assert len(rand["draws"]) == 2
            for draw in rand["draws"]:
                assert len(draw["heads"]) == 2
                assert not {tuple(h) for h in draw["heads"]} & {(14, 2), (20, 3), (15, 0), (9, 8)}
            assert rand["mean"] == pytest.approx(sum(d["mean"] for d in rand["draws"]) / 2)
            ref = res["all_heads"][kind]  # the every-head reference arm
            assert len(ref["accuracies"]) == len(disc["accuracies"]) and 0.0 <= ref["mean"] <= 1.0
    md = (out / "probe.md").read_text()
    assert "| snli | 10/10/10 |" in md and "| sp_en_trans | 10 |" in md and "| proj |" in md
    assert "Reference: every head (270 per feature)" in md
    import numpy as np

    with np.load(out / "features_sp_en_trans.npz") as z:
        assert z["attn"].shape == z["proj"].shape == (10, 30, 9)
        assert z["labels"].tolist() == [1, 0, 1, 0] * 2 + [1, 0]
        assert np.isfinite(z["proj"]).all() and (np.abs(z["attn"]) <= 1).all()


@pytest.mark.e2e
def test_cli_smollm2_reuses_and_invalidates_the_cache(smol_run):
    import numpy as np

    out = smol_run["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("features_*.npz")}
    assert len(before) == 4
    with one_thread():
        assert main(smol_run["argv"]) == 0
    info = json.loads((out / "probe.json").read_text())
    assert set(info["cache"].values()) == {"loaded"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("features_*.npz")} == before
    # another direction: the projection must be extracted again
    with np.load(out / "features_sp_en_trans.npz") as z:
        old_proj, old_attn = z["proj"], z["attn"]
    heads2 = _heads_dir(smol_run["root"] / "heads2", [[14, 2], [20, 3]], [[15, 0], [9, 8]], seed=1)
    argv = list(smol_run["argv"])
    argv[argv.index("--heads") + 1] = str(heads2)
    with one_thread():
        assert main(argv) == 0
    info = json.loads((out / "probe.json").read_text())
    assert set(info["cache"].values()) == {"extracted"}
    with np.load(out / "features_sp_en_trans.npz") as z:
        assert not np.allclose(z["proj"], old_proj) and np.allclose(z["attn"], old_attn)


# --- bad input ----------------------------------------------------------------------------------

def _bad_cases(root: Path, mlp: Path) -> list[tuple[list[str], str]]:
    from transformers import BertConfig

    empty = root / "bad_empty"
    _heads_dir(empty, [], [])
    no_json = root / "bad_nojson"
    _heads_dir(no_json, [[1, 1]], [])
    (no_json / "heads.json").unlink()
    wrong_shape = _heads_dir(root / "bad_shape", [[1, 1]], [[2, 2]], shape=(12, 12, 64))
    bert = root / "bert"
    BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64).save_pretrained(bert)
    good = _heads_dir(root / "good", [[1, 1]], [[2, 2]])
    return [
        (["--model", "smollm2", "--heads", str(no_json)], "no heads.json"),
        (["--model", "smollm2", "--heads", str(empty)], "lists no heads"),
        (["--model", "smollm2", "--heads", str(root / "absent")], "not a folder"),
        (["--model", "smollm2", "--heads", str(wrong_shape)], "another model"),
        (["--model", str(bert), "--heads", str(good)], "unsupported architecture"),
        (["--model", "smollm2", "--heads", str(good), "--datasets", "cities"], "missing cities"),
        (["--model", "smollm2", "--heads", str(good), "--datasets", "mnli"], "unknown dataset"),
        (["--model", "smollm2", "--heads", str(good), "--limit", "3"], "--limit"),
        (["--model", "smollm2", "--heads", str(good), "--seed-features"], "--seed-features takes no"),
        (["--model", "smollm2"], "needs --model and --heads"),
    ]


@pytest.mark.e2e
def test_cli_bad_input_exits_2_and_writes_nothing(smol_run, capsys):
    root = smol_run["root"] / "bad"
    root.mkdir()
    for extra, message in _bad_cases(root, smol_run["mlp"]):
        out = root / "out"
        rc = main(["probe", "--mlp-dir", str(smol_run["mlp"]), "--out", str(out), "--datasets", "snli,sp_en_trans",
                   *extra, "-q"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (extra, err)
        assert err.startswith("gar: error:") and "\n" not in err and message in err, (extra, err)
        assert not out.exists(), extra
    # the seed mode without its data folder
    out = root / "out"
    assert main(["probe", "--seed-features", "--mlp-dir", str(root / "nowhere"), "--out", str(out)]) == 2
    assert "is absent" in capsys.readouterr().err and not out.exists()
