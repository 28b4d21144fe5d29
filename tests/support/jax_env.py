"""The JAX backend's test environment: a Python 3.12 venv of requirements/jax.txt, cached.

The JAX backend (spec.train.backend: jax) needs Python >= 3.12 (jax >= 0.11), jax, optax and the
torchax pre-release; the project's own venv is Python 3.11 with torch only. As for levanter's
reference (tests/support/levanter_env.py, whose interpreter and uv look-ups this reuses), the
tests build that venv once with uv from the hash-locked requirements/jax.txt (`make lock`),
under ~/.cache/speedrun-operator/jax-<hash of the lock>: a second run installs nothing and a
changed lock gets a fresh venv. The project itself is not installed there: the venv runs it from
this checkout through PYTHONPATH, so it is always the code under test.

The lock holds PyPI's torch 2.13.0, which is the CUDA build (PyPI has no CPU-only torch for
Linux): a cold install downloads its CUDA wheels (~3 GB); the tests then run it on the CPU.

`run_in_venv(args)` runs `python args...` there with JAX on the CPU (JAX_PLATFORMS=cpu) and
`devices` host devices per process (XLA_FLAGS), and returns the finished process.
No Python 3.12 or no uv: the tests skip, saying which. An install that fails fails the tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.levanter_env import cached_venv

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "jax.txt"
INSTALL_TIMEOUT_S = 1800  # a cold install without a uv cache downloads torch's CUDA wheels


def jax_python() -> Path:
    """The JAX venv's interpreter, installing it first if need be."""
    return cached_venv("jax", LOCK, "jax backend", INSTALL_TIMEOUT_S)


def venv_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a process in the venv: this checkout on PYTHONPATH, JAX on `devices` CPUs."""
    path = os.pathsep.join(str(REPO / d) for d in ("api", "trainer", "operator", "."))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def run_in_venv(
    args: list[str], devices: int = 1, timeout: float = 600, cwd: Path | None = None, **extra: str
) -> subprocess.CompletedProcess:
    """`python args...` in the venv (see the module doc); raises with its output when it fails."""
    done = subprocess.run(
        [str(jax_python()), *args],
        capture_output=True,
        text=True,
        env=venv_env(devices, **extra),
        timeout=timeout,
        cwd=cwd or REPO,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"python {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
        )
    return done
