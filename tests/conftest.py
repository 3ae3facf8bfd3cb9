"""Fixtures shared by several test modules (pytest finds them here without imports)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama and its offline BPE tokenizer saved as a model folder (``--model DIR``)."""
    from tiny_models import tiny_model
    from tiny_tokenizers import bpe_tokenizer

    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(d)
    bpe_tokenizer().save_pretrained(d)
    return d
