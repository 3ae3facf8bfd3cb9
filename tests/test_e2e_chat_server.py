"""The chat / API route end to end: `transformers serve` with the embedded SmolLM2 on a loopback
port, the real `lm_eval` CLI with `local-chat-completions --apply_chat_template` on gar_chat tasks."""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chat_server import HOST, console_script, free_port, offline_env, stop, transformers_cli, wait_healthy

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
HEALTH_TIMEOUT_S = 300  # model load on a busy 2-core machine


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, request) -> str:
    """Base URL of a running `transformers serve` with SmolLM2; stopped by its pid at the end."""
    from gar_tasks.models import embedded_model_path

    model = embedded_model_path()
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([transformers_cli(), "serve", str(model), "--host", HOST, "--port", str(port),
                                 "--device", "cpu", "--log-level", "warning"],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=offline_env())
    request.addfinalizer(lambda: stop(proc))
    base = f"http://{HOST}:{port}"
    wait_healthy(f"{base}/health", proc, HEALTH_TIMEOUT_S, log)
    return base


def _first_line_answer(text: str) -> str:
    """The gen template's filter pipeline, read from the template itself (regex, lowercase)."""
    tpl = yaml.safe_load((ROOT / "yaml_tasks/gar/_template_chat_gen").read_text().replace("!function", ""))
    regex = tpl["filter_list"][0]["filter"][0]
    found = re.findall(regex["regex_pattern"], text)
    return (found[0].strip() if found else regex["fallback"]).lower()


def _plain(text: str) -> str:
    """exact_match's ignore_case + ignore_punctuation."""
    return text.lower().translate(str.maketrans("", "", string.punctuation))


def test_lm_eval_local_chat_completions_against_a_real_server(chat_server, tmp_path):
    from gar_tasks.models import embedded_model_path

    out = tmp_path / "results"
    cmd = [console_script("lm_eval"), "run", "--model", "local-chat-completions", "--model_args",
           f"model={embedded_model_path()},base_url={chat_server}/v1/chat/completions,"
           "num_concurrent=1,max_retries=1,tokenized_requests=False",
           "--apply_chat_template", "--tasks", "gar_chat_gen_nr0,gar_chat_cls_nr0", "--limit", "1",
           "--gen_kwargs", "max_gen_toks=12", "--output_path", str(out), "--log_samples"]
    res = subprocess.run(cmd, cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    results = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())
    assert {"gar_chat_gen_nr0", "gar_chat_cls_nr0"} <= set(results["groups"])
    for name in ("gar_chat_gen_nr0", "gar_chat_cls_nr0"):
        assert 0.0 <= results["groups"][name]["exact_match,answer"] <= 1.0
    leaves = [k for k in results["results"] if k.startswith(("gar_chat_gen_nr0_", "gar_chat_cls_nr0_"))]
    assert len(leaves) == 6 and all(results["n-samples"][k]["effective"] == 1 for k in leaves)
    samples = {p.name.split("_20")[0].removeprefix("samples_"): [json.loads(x) for x in p.read_text().splitlines()]
               for p in out.rglob("samples_*.jsonl")}
    assert set(samples) == set(leaves)
    for name, lines in samples.items():
        (s,) = lines
        ((reply,),), (extracted,) = s["resps"], s["filtered_resps"]
        assert isinstance(reply, str) and reply.strip(), (name, s["resps"])  # the server really answered
        if "_cls_" in name:
            assert extracted in ("yes", "no", "[no answer]"), (name, reply, extracted)
        else:
            assert extracted == _first_line_answer(reply), (name, reply, extracted)
        assert s["exact_match"] == float(_plain(extracted) == _plain(s["doc"]["answer"])), (name, s)


def test_a_server_that_never_becomes_healthy_fails_clearly(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # listens nowhere
    try:
        with pytest.raises(AssertionError, match=rf"did not become healthy at http://127.0.0.1:{port}/health "
                                                 r"within 2 s"):
            wait_healthy(f"http://{HOST}:{port}/health", proc, 2.0)
    finally:
        stop(proc)
    assert proc.returncode is not None
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(AssertionError, match="exited with code 3"):
        wait_healthy(f"http://{HOST}:{port}/health", dead, 30.0)
