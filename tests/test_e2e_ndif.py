"""Every interp command with ``--remote`` against a real NDIF server equals the local run.

The server is the project's own local NDIF (``scripts/ndif_local.sh up``: ndif from PyPI, CPU model
actor, float32, 127.0.0.1), which ``scripts/test.sh`` starts once and names in
``GAR_TEST_NDIF_HOST`` (its Hugging Face cache, holding ``gar-eval/organism``, in
``GAR_TEST_NDIF_HF_HOME``). Without it these tests skip; with ``GAR_REQUIRE_NDIF=1`` (CI) they fail.
Each command runs as a user runs it: ``gar ... --model gar-eval/organism --remote`` with
``NDIF_HOST`` set and no key, against ``gar ... --model organism`` here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from chat_server import console_script
from shared_data import shared_path

pytestmark = pytest.mark.e2e

REMOTE_ID = "gar-eval/organism"
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def ndif() -> dict[str, str]:
    """The client environment of the running local NDIF (skip, or fail in CI, without one)."""
    host, hf_home = os.environ.get("GAR_TEST_NDIF_HOST"), os.environ.get("GAR_TEST_NDIF_HF_HOME")
    if not host or not hf_home:
        why = "no local NDIF server (scripts/test.sh starts one: scripts/ndif_local.sh up)"
        if os.environ.get("GAR_REQUIRE_NDIF") == "1":
            pytest.fail(f"{why} and GAR_REQUIRE_NDIF=1", pytrace=False)
        pytest.skip(why)
    return {"NDIF_HOST": host, "HF_HOME": hf_home}


def gar(env: dict[str, str], *argv, check: bool = True) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full.pop("NDIF_API_KEY", None)
    r = subprocess.run([console_script("gar"), *map(str, argv)], env=full, capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    if check:
        assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-3000:])
    return r


def both(ndif: dict[str, str], tmp_path: Path, *argv) -> tuple[Path, Path]:
    """The command with ``--remote`` on the server's copy, and locally on the shipped organism."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    r = gar(ndif, *argv, "--model", REMOTE_ID, "--remote", "--out", remote, "-q")
    assert "Traceback" not in r.stderr and "warning: version drift" not in r.stderr, r.stderr[-2000:]
    gar({}, *argv, "--model", "organism", "--out", local, "-q")
    return remote, local


def assert_npz_close(a: Path, b: Path, rtol: float, atol: float, skip: tuple[str, ...] = ()) -> None:
    x, y = np.load(a), np.load(b)
    assert sorted(x.files) == sorted(y.files)
    for k in sorted(set(x.files) - set(skip)):
        if x[k].dtype.kind == "f":
            np.testing.assert_allclose(x[k], y[k], rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{a.name}:{k}")
        else:
            assert (x[k] == y[k]).all(), f"{a.name}:{k}"


def test_patch_remote_equals_local(ndif, tmp_path):
    remote, local = both(ndif, tmp_path, "patch", "--tasks", "gen_nr0,cls_nr0", "--config", "v1", "--n", "6",
                         "--verify-top", "4")
    assert_npz_close(remote / "scores.npz", local / "scores.npz", rtol=1e-6, atol=1e-6)
    info = json.loads((remote / "scores.json").read_text())
    assert info["remote"] is True and info["families"]["gen"]["n_pairs"] > 0


def test_heads_remote_equals_local(ndif, tmp_path):
    remote, local = both(ndif, tmp_path, "heads", "--config", "v1", "--n", "8", "--batch-size", "8")
    assert_npz_close(remote / "directions.npz", local / "directions.npz", rtol=1e-5, atol=1e-6)
    r, lo = (json.loads((d / "heads.json").read_text()) for d in (remote, local))
    assert (r["true_heads"], r["false_heads"]) == (lo["true_heads"], lo["false_heads"])
    assert r["true_heads"] and r["false_heads"]  # the organism has both kinds


@pytest.mark.parametrize("mode", [["ablate", "--heads", "0:2;3:6"], ["mean", "--heads", "0:2;3:6"],
                                  ["label", "--true-heads", "0:2;1:4", "--false-heads", "3:6"]])
def test_intervene_remote_equals_local(ndif, tmp_path, mode):
    remote, local = both(ndif, tmp_path, "intervene", "--mode", *mode, "--config", "v1", "--n", "8",
                         "--random-draws", "2")
    r, lo = (json.loads((d / "intervene.json").read_text()) for d in (remote, local))

    def numbers(x, path=""):
        if isinstance(x, dict):
            for k, v in sorted(x.items()):
                yield from numbers(v, f"{path}/{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from numbers(v, f"{path}[{i}]")
        elif isinstance(x, float):
            yield path, x

    got, want = dict(numbers([r["overall"], r["tasks"]])), dict(numbers([lo["overall"], lo["tasks"]]))
    assert got.keys() == want.keys() and len(got) > 20
    for k in want:  # accuracies exactly; logit margins (~5) to float32 rounding of the logits (~10)
        assert got[k] == (want[k] if "/acc" in k else pytest.approx(want[k], rel=1e-6, abs=2e-5)), k
    assert r["overall"]["targeted"]["metric"] < r["overall"]["baseline"]["metric"] - 0.5  # the edits took effect


def test_probe_remote_equals_local(ndif, tmp_path):
    mlp = shared_path("reference/mlp")
    heads = tmp_path / "heads"
    gar({}, "heads", "--model", "organism", "--config", "v1", "--n", "8", "--out", heads, "-q")
    common = ["probe", "--heads", heads, "--mlp-dir", mlp, "--dtype", "float32", "--datasets", "snli,cities",
              "--limit", "40", "--k", "4", "--random-draws", "1", "--runs", "1"]
    remote, local = tmp_path / "remote", tmp_path / "local"
    # heads found locally serve the remote run only when the ids name the same model: the shipped
    # fingerprint differs, so the remote run discovers its own (equal: test_heads_remote_equals_local)
    rheads = tmp_path / "rheads"
    gar(ndif, "heads", "--model", REMOTE_ID, "--remote", "--config", "v1", "--n", "8", "--out", rheads, "-q")
    common_r = [a if a != heads else rheads for a in common]
    gar(ndif, *common_r, "--model", REMOTE_ID, "--remote", "--out", remote, "-q")
    gar({}, *common, "--model", "organism", "--out", local, "-q")
    files = sorted(p.name for p in local.glob("features_*.npz"))
    assert files == sorted(p.name for p in remote.glob("features_*.npz")) and len(files) == 4
    for f in files:  # eager attention here, the server's own (sdpa) there: rounding only
        assert_npz_close(remote / f, local / f, rtol=1e-5, atol=1e-5, skip=("meta",))  # meta: the model's name


def test_circuit_remote_equals_local(ndif, tmp_path):
    remote, local = both(ndif, tmp_path, "circuit", "--tasks", "gen_nr0", "--config", "v1", "--n", "8",
                         "--batch-size", "4")
    assert_npz_close(remote / "scores.npz", local / "scores.npz", rtol=1e-5, atol=1e-6)
    info = json.loads((remote / "circuit.json").read_text())
    assert info["circuit"]["n_edges"] == json.loads((local / "circuit.json").read_text())["circuit"]["n_edges"]


@pytest.mark.parametrize("arch", ["gemma2", "gpt_neox", "olmo2", "gpt2"])
def test_circuit_on_every_family_remote_equals_local(ndif, tmp_path, arch):
    """``gar circuit --remote`` on tiny random models of the table's other families (sandwich norms
    and soft caps; parallel residual with fused per-head q/k/v; q/k norms across heads without a
    pre-norm; Conv1D with absolute positions), served by the test server (``scripts/test.sh``
    deploys them from ``GAR_TEST_NDIF_TINY``), equals the run on the same folder here."""
    from tiny_models import remote_id

    folder = Path(os.environ.get("GAR_TEST_NDIF_TINY", "")) / arch
    if not (folder / "config.json").is_file():
        pytest.fail(f"no tiny {arch} folder under GAR_TEST_NDIF_TINY: scripts/test.sh deploys them", pytrace=False)
    argv = ("circuit", "--tasks", "gar_gen_nr0_gender_city", "--n", "6", "--batch-size", "3")
    remote, local = tmp_path / "remote", tmp_path / "local"
    r = gar(ndif, *argv, "--model", remote_id(arch), "--remote", "--out", remote, "-q")
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    gar({}, *argv, "--model", folder, "--out", local, "-q")
    assert_npz_close(remote / "scores.npz", local / "scores.npz", rtol=1e-5, atol=1e-6)
    assert not np.isnan(np.load(remote / "scores.npz")["resid"]).all()


def test_lm_eval_on_ndif_equals_the_hf_model(ndif, tmp_path):
    """``lm_eval --model gar-ndif`` (log-likelihoods computed on the server) scores every document as
    lm-eval's ``hf`` model does on the same weights here."""
    tasks = "gar_v1_cls_nr0_gender_city,gar_v1_gen_nr1_gender_kind"
    common = ["eval", "--tasks", tasks, "--limit", "6", "--batch_size", "8", "--log_samples"]
    gar({**ndif, "HF_DATASETS_OFFLINE": "1"}, *common, "--model", "gar-ndif", "--model_args",
        f"pretrained={REMOTE_ID}", "--output_path", tmp_path / "remote")
    gar({"HF_DATASETS_OFFLINE": "1"}, *common, "--model", "hf", "--model_args", "pretrained=organism,dtype=float32",
        "--output_path", tmp_path / "local")

    def scores(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.rglob("samples_*.jsonl")):
            task = f.name.split("samples_")[1].rsplit("_", 1)[0]
            for line in f.read_text().splitlines():
                s = json.loads(line)
                out[(task, s["doc_id"])] = ([float(r[0][0]) for r in s["resps"]], s["acc"])
        return out

    got, want = scores(tmp_path / "remote"), scores(tmp_path / "local")
    assert got.keys() == want.keys() and len(got) == 12
    for k, (lls, acc) in want.items():
        assert got[k][1] == acc, k
        assert got[k][0] == pytest.approx(lls, rel=1e-5, abs=1e-5), k
    info = json.loads(next((tmp_path / "remote").rglob("results_*.json")).read_text())
    assert info["config"]["model_args"] == {"pretrained": REMOTE_ID}


def test_a_server_error_is_one_line(ndif, tmp_path):
    """A model the server has not deployed: the server's own message, one line, exit 2."""
    import shutil

    from gar_tasks.models import embedded_model_path

    cache = Path(ndif["HF_HOME"]) / "hub" / "models--gar-eval--not-deployed"
    snap = cache / "snapshots" / "local"
    snap.mkdir(parents=True, exist_ok=True)
    (cache / "refs").mkdir(exist_ok=True)
    (cache / "refs" / "main").write_text("local")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_model_path("organism") / f, snap / f)
    try:
        r = gar(ndif, "patch", "--model", "gar-eval/not-deployed", "--remote", "--tasks", "gen_nr0", "--config",
                "v1", "--n", "2", "--out", tmp_path / "out", "-q", check=False)
    finally:
        shutil.rmtree(cache)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(f"gar: error: the NDIF server at {ndif['NDIF_HOST']} failed the request: ")


def test_a_server_that_is_down_is_one_line_within_seconds(ndif, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    r = gar({**ndif, "NDIF_HOST": f"http://127.0.0.1:{port}"}, "heads", "--model", REMOTE_ID, "--remote",
            "--config", "v1", "--n", "2", "--out", tmp_path / "out", check=False)
    assert time.perf_counter() - t0 < 60  # interpreter start and imports included
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "does not answer" in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "out").exists()


# what a shared deployment does with a request it does not trust: run it in a separate runner process
UNTRUSTED = ("import sys; from nnsight.schema.request import RequestModel; "
             "RequestModel.metadata = lambda self: self.model_dump_json()[:-1] + ', \"trusted\": false}'; "
             "from gar_tasks.cli import main; sys.exit(main(sys.argv[1:]))")


def sandbox_runners() -> set[int]:
    r = subprocess.run(["pgrep", "-f", "ndif.services.ray.sandbox.runner"], capture_output=True, text=True)
    return {int(p) for p in r.stdout.split()}


def untrusted(ndif: dict[str, str], *argv) -> subprocess.CompletedProcess:
    import sys

    full = {**os.environ, **ndif, "HF_HUB_OFFLINE": "1"}
    full.pop("NDIF_API_KEY", None)
    return subprocess.run([sys.executable, "-c", UNTRUSTED, *map(str, argv)], env=full, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def runners_seen_during(call) -> tuple[set[int], set[int], set[int], object]:
    """Runner pids before, during (sampled every 0.2 s) and after ``call()``: a warm runner may be
    missing (its background spawn can time out on a loaded machine; the pool then spawns one inline)."""
    import threading

    before, seen, done = sandbox_runners(), set(), threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.update(sandbox_runners())
            done.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = call()
    finally:
        done.set()
        t.join()
    return before, seen, sandbox_runners(), result


def test_untrusted_requests_run_in_the_sandbox(ndif, tmp_path):
    """ndif's sandboxed path (the block runs in a runner process that drives the actor's model over a
    socket; a runner serves one request and is discarded) gives the local run's numbers for a
    forward-only command; ndif 0.1.2's sandbox cannot read gradients inside ``backward()``, so the
    gradient commands (patch, heads, circuit) come back as one error line naming its message."""
    if os.environ.get("NDIF_LOCAL_SANDBOX", "1") == "0":
        pytest.skip("the local NDIF runs no sandboxed actor (NDIF_LOCAL_SANDBOX=0)")
    remote, local = tmp_path / "remote", tmp_path / "local"
    args = ["intervene", "--mode", "ablate", "--heads", "0:2;3:6", "--random-draws", "1", "--config", "v1", "--n", "4"]
    before, seen, after, r = runners_seen_during(
        lambda: untrusted(ndif, *args, "--model", REMOTE_ID, "--remote", "--out", remote, "-q"))
    assert r.returncode == 0, r.stderr[-3000:]
    # sandboxed: a warm runner was taken (and discarded), or one was spawned for the request
    assert (before - after) or (seen - before), "no sandbox runner was used (the request ran in-process)"
    gar({}, *args, "--model", "organism", "--out", local, "-q")
    got, want = (json.loads((d / "intervene.json").read_text())["overall"] for d in (remote, local))
    assert got["baseline"]["acc"] == want["baseline"]["acc"] and got["targeted"]["acc"] == want["targeted"]["acc"]
    assert got["targeted"]["metric"] == pytest.approx(want["targeted"]["metric"], rel=1e-6, abs=2e-5)

    r = untrusted(ndif, "patch", "--model", REMOTE_ID, "--remote", "--tasks", "gen_nr0", "--config", "v1", "--n", "2",
                  "--out", tmp_path / "patch")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "failed the request" in lines[0], r.stderr[-2000:]
    assert "OutOfOrderError" in lines[0] and ".grad" in lines[0]
