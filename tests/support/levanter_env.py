"""levanter's own code as a reference: a Python 3.12 venv of requirements/levanter.txt, cached.

The differential tests (tests/unit/levanter) check our BPB against levanter's source, not our
reading of it. levanter needs Python >= 3.12 and jax, the project runs 3.11 and torch, so
levanter lives in a venv of its own: made once by uv from the hash-locked
requirements/levanter.txt (`make lock`; jax on CPU only), under
~/.cache/speedrun-operator/levanter-<hash of the lock>, so a second run installs nothing and a
changed lock gets a fresh venv. Tests talk to it through files: `run_reference(op, request)`
writes the request as JSON (arrays as lists), runs tests/support/levanter_reference.py in the
venv, and reads its JSON answer.

No Python 3.12 (pyenv's or `python3.12` on PATH) or no uv: the tests skip, saying which. An
install that fails (no network, no index) fails the tests: the lock is what CI installs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "levanter.txt"
SCRIPT = Path(__file__).with_name("levanter_reference.py")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "speedrun-operator"
INSTALL_TIMEOUT_S = 1200  # a cold install without a uv cache downloads ~600 MB of wheels


def python312() -> str | None:
    """A CPython 3.12: `python3.12` on PATH (not a pyenv shim of an unselected version), else pyenv's."""
    candidates = [shutil.which("python3.12")]
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(p) for p in sorted((root / "versions").glob("3.12*/bin/python3.12"))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True, check=False)  # fmt: skip
        if probe.stdout.strip() == "True":
            return candidate
    return None


def uv() -> str | None:
    """uv: the one beside this interpreter (requirements/tools.txt puts it in every venv), else PATH's."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else shutil.which("uv")


def cached_venv(name: str, lock: Path, what: str, timeout: float) -> Path:
    """The interpreter of a Python 3.12 venv of `lock`, cached under CACHE as `<name>-<lock hash>`
    and installed first if need be (one installer at a time: a file lock); `what` names the tests
    in their skip reason."""
    interpreter, tool = python312(), uv()
    if interpreter is None:
        pytest.skip(f"{what}: no Python 3.12 (python3.12 on PATH or pyenv's 3.12)")
    if tool is None:
        pytest.skip(f"{what}: no uv (requirements/tools.txt installs it)")
    venv = CACHE / f"{name}-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    return installed_venv(tool, venv, interpreter, ["--require-hashes", "-r", str(lock)], timeout)


def installed_venv(tool: str, venv: Path, interpreter: str, requirements: list[str], timeout: float) -> Path:
    """The interpreter of `venv`, made first by uv (`tool`) for `interpreter` with `uv pip install
    REQUIREMENTS` if no finished install is there (`.installed`; one installer at a time: a file
    lock). An install that fails fails the test, with pip's own words."""
    done = venv / ".installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{venv.name}.lock", "w") as file_lock:
        fcntl.flock(file_lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)  # a half-made venv from an interrupted install
            subprocess.run([tool, "venv", "--quiet", "--python", interpreter, str(venv)], check=True)
            install = [tool, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *requirements]
            proc = subprocess.run(install, capture_output=True, text=True, timeout=timeout)
            assert proc.returncode == 0, f"{' '.join(requirements)} does not install:\n{proc.stderr[-3000:]}"
            done.touch()
    return venv / "bin" / "python"


def levanter_python() -> Path:
    """The levanter venv's interpreter, installing it first if need be."""
    return cached_venv("levanter", LOCK, "levanter reference", INSTALL_TIMEOUT_S)


def run_reference(op: str, request: dict[str, Any], timeout: float = 600) -> Any:
    """levanter_reference.py's answer to `op` on `request` (JSON in, JSON out)."""
    python = levanter_python()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        src.write_text(json.dumps({"op": op, **request}))
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(
            [str(python), str(SCRIPT), str(src), str(dst)], capture_output=True, text=True, env=env, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"levanter_reference.py {op} failed:\n{done.stderr[-4000:]}")
        return json.loads(dst.read_text())
