"""Files under the shared folder (``../shared`` beside the checkout, or ``$GAR_SHARED_DIR``) for tests.

``shared_path("reference/GAR_data.jsonl")`` returns the path, or skips the calling test when the
file is absent; with ``GAR_REQUIRE_SHARED=1`` in the environment it fails instead, so a CI job
that is meant to have the data cannot pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_root() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared"  # <checkout>/../shared
    return Path(os.environ.get("GAR_SHARED_DIR", default))


def shared_path(relpath: str) -> Path:
    path = shared_root() / relpath
    if path.exists():
        return path
    if os.environ.get("GAR_REQUIRE_SHARED") == "1":
        pytest.fail(f"shared file {path} is absent and GAR_REQUIRE_SHARED=1", pytrace=False)
    pytest.skip(f"shared file {path} is absent (set GAR_SHARED_DIR to its folder; "
                f"GAR_REQUIRE_SHARED=1 turns this skip into a failure)")
