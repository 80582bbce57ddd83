"""Locate the published test vectors in ``../shared/vectors`` (next to the repository, DESIGN.md "The ledger").

Tests call :func:`vectors_path` inside the test body: a missing vectors folder skips the test on a workstation and
fails it under ``CI=true``, where the vectors must be present. Parametrised tests build their cases at collection
time from :data:`VECTORS_DIR` directly and pair them with one test that calls :func:`vectors_path`, so that a
missing folder cannot turn into a silently empty parameter list in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = Path(REPO_ROOT).parent / "shared" / "vectors"


def vectors_path(*parts: str) -> Path:
    """The path of ``parts`` under the shared vectors folder; skips (or, under ``CI=true``, fails) when missing."""
    path = VECTORS_DIR.joinpath(*parts)
    if not path.exists():
        message = f"published test vectors not found at {path}; check out the shared vectors next to the repository"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (under CI=true this is a failure)")
        pytest.skip(message)
    return path
