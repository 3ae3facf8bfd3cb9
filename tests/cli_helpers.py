"""Shared pieces of the CLI tests: run ``gar`` in-process, check a one-line error, and an autouse
offline/one-thread fixture to import (the ``tiny_dir`` model folder fixture is in conftest.py)."""

from __future__ import annotations

import os

import pytest

from tiny_models import one_thread


def run(capsys, *argv) -> tuple[int, str, str]:
    """``gar *argv`` in this process: ``(exit code, stdout, stderr)``."""
    from gar_tasks.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_error(rc: int, out: str, err: str, *needles: str) -> None:
    """Exit 2 with exactly one ``gar: error:`` line (no traceback) naming every needle."""
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gar: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture(autouse=True, scope="module")
def offline_one_thread():
    """Offline Hub, one torch thread for the module (import it into a test module to use it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with one_thread():
        yield
