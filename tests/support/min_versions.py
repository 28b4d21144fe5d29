"""The operator's base install at the lowest versions pyproject.toml allows, in a cached venv.

A floor in `[project].dependencies` (`kopf>=1.45`) is a promise: pip may install exactly that
version. Nothing else here runs it, since every other venv is locked to current releases, so a
floor can silently fall behind the code (kopf's `settings.watching.label_selectors` first exists
in 1.45; the floor said 1.37). `min_python()` builds, once, a venv of this interpreter's Python
with uv holding each declared floor exactly (`name==floor`; what they need in turn resolved as
pip would), under ~/.cache/speedrun-operator/min-versions-<hash of the pins and the Python>: a
second run installs nothing (the test then takes seconds) and a changed floor gets a fresh venv. The project
itself is not installed there: it runs from this checkout through PYTHONPATH.
No uv: the tests skip, saying so. An install that fails (a floor that does not even install on
this Python) fails the tests.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest
import tomllib

from tests.support.levanter_env import CACHE, installed_venv, uv

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
INSTALL_TIMEOUT_S = 600  # ~40 small wheels; cold, about a minute here
FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,|$)")


def floors(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """{package: lowest version allowed} of the base dependencies; every one must declare a floor."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        match = FLOOR.match(dep)
        assert match, f"pyproject.toml: dependency {dep!r} declares no floor (name>=version)"
        found[match.group(1).lower()] = match.group(2)
    return found


def pins(pyproject: Path = PYPROJECT) -> list[str]:
    return [f"{name}=={version}" for name, version in sorted(floors(pyproject).items())]


def min_python(pyproject: Path = PYPROJECT) -> Path:
    """The interpreter of the floors' venv, installing it first if need be (one installer at a time)."""
    tool = uv()
    if tool is None:
        pytest.skip("minimum versions: no uv (requirements/tools.txt installs it)")
    wanted = pins(pyproject)
    key = hashlib.sha256("\n".join([sys.version, *wanted]).encode()).hexdigest()[:16]
    return installed_venv(tool, CACHE / f"min-versions-{key}", sys.executable, wanted, INSTALL_TIMEOUT_S)
