"""An OpenAI-compatible server for the chat-route tests: ``transformers serve`` on a loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"  # loopback only: nothing leaves the machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def transformers_cli() -> str:
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    assert exe, "the `transformers` console script is not installed (pip install 'transformers[serving]')"
    return exe


def console_script(name: str) -> str:
    """A console script of this environment (the venv's bin first, then PATH)."""
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert exe, f"the {name} console script is not installed"
    return exe


def offline_env() -> dict[str, str]:
    """No Hub access at run time; our lm-eval hook on."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("GAR_NO_LM_EVAL_HOOK", None)
    return env


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail with one clear message (and the server's log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server process {proc.pid} exited with code {proc.returncode} before "
                                 f"{url} answered{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"server process {proc.pid} did not become healthy at {url} within "
                                 f"{timeout:.0f} s{_tail(log)}")
        time.sleep(0.5)


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return "; server log ends: " + log.read_text(errors="replace")[-1500:]


def stop(proc: subprocess.Popen) -> None:
    """Stop the server by its process id: SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
