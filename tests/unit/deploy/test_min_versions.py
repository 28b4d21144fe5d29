"""The lowest versions pyproject.toml allows run the operator (tests/support/min_versions.py).

Slow once (a venv of the floors from PyPI: about a minute here), then cached by the pins."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.min_versions import REPO, floors, min_python

pytestmark = pytest.mark.slow

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: probe}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_operator_starts_on_the_declared_minimum_versions(tmp_path: Path) -> None:
    declared = floors()
    python = min_python()
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("api", "trainer", "operator", ".")),
           "KUBECONFIG": str(tmp_path / "kubeconfig"), "SPEEDRUN_OPERATOR_METRICS_PORT": "0",
           "SPEEDRUN_OPERATOR_DEFAULT_STORAGE_URI": "s3://probe/runs"}  # fmt: skip
    env.pop("KUBERNETES_SERVICE_HOST", None)
    args = [str(python), "-m", "tests.support.min_versions_probe", str(REPO / "examples" / "tiny-cpu.yaml")]
    proc = subprocess.run([*args, *declared], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    installed = json.loads(proc.stdout.strip().splitlines()[-1])
    # The probe ran on exactly the floors, not on something newer uv picked.
    assert {name: installed[name] for name in declared} == {n: _full(v, installed[n]) for n, v in declared.items()}


def _full(floor: str, got: str) -> str:
    """`6` is installed as 6.0, `29` as 29.0.0: the same version, PEP 440 padding with zeros."""
    pad = got.split(".")
    want = floor.split(".")
    return got if want == pad[: len(want)] and all(p == "0" for p in pad[len(want) :]) else floor
