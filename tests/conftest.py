"""Fixtures shared by several test modules (pytest finds them here without imports), and the test tiers.

Tiers (markers registered in pyproject.toml; every test has exactly one, checked at collection):
``unit`` (no model, or tiny random models built in memory: the fast loop, ``pytest -m unit``),
``integration`` (tiny models through the commands, in-process lm-eval, the seed's reference features) and
``e2e`` (the embedded SmolLM2, subprocess ``lm_eval`` / ``gar``, wheel build).
"""

from __future__ import annotations

import pytest

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Refuse a test with no tier, or with two (a module-level mark plus another on the function
    would make ``-m unit`` select an e2e test)."""
    bad = []
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) != 1:
            bad.append(f"{item.nodeid}: {tiers or 'no tier'}")
    if bad:
        raise pytest.UsageError("every test needs exactly one tier marker (unit, integration, e2e):\n  "
                                + "\n  ".join(bad[:20]))


@pytest.fixture(scope="session", autouse=True)
def private_hash_cache(tmp_path_factory):
    """Model identities hashed by the tests go to a cache of the test run, not the user's
    ``~/.cache/gar/hashes.json`` (subprocesses inherit the variable)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GAR_HASH_CACHE", str(tmp_path_factory.mktemp("gar_hash_cache") / "hashes.json"))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama and its offline BPE tokenizer saved as a model folder (``--model DIR``)."""
    from tiny_models import tiny_model
    from tiny_tokenizers import bpe_tokenizer

    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(d)
    bpe_tokenizer().save_pretrained(d)
    return d
