"""Starting and stopping the local processes of `speedrun run`.

Two launchers run the same torchrun command line: `torchrun` (one `python -m
speedrun_trainer.train.torchrun` agent per node, started here) and `torchx` (torchx's `dist.ddp` component
on its `local_cwd` scheduler, the way torchx users launch jobs). Both are stopped as a whole:
torchrun starts its workers in sessions of their own, so killing the agent's process group is
not enough, and `stop_process_trees` collects every descendant first (psutil, on any OS) and
signals them all.

A `train.backend: jax` manifest is no torchrun job: each "node" of `spec.resources` is one
`python -m speedrun_trainer.train.jax_main` process using all of its devices, joined through
`jax.distributed` with the coordinator address and ranks `jax_process_env` puts in their
environment (docs/contracts.md, "JAX backend entry point"). On a `cpu` accelerator each gets
`procsPerNode` host-platform devices (`--xla_force_host_platform_device_count`), so the
data-parallel size and the batch arithmetic are the torch run's. jax needs Python >= 3.12 and
requirements/jax.txt, which the project's Python 3.11 venv lacks: `missing_jax` is the one line
`speedrun run` refuses with, before anything starts. The evaluation after it is torch's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from speedrun_api.spec import SpeedrunJob

JAX_MODULE = "speedrun_trainer.train.jax_main"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_jax() -> str | None:
    """Why this Python cannot run the JAX backend (one line), or None when it can."""
    import importlib.util

    missing = [name for name in ("jax", "torchax", "optax") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"spec.train.backend: jax needs {', '.join(missing)} in this Python ({sys.executable}): run speedrun"
        " from a Python >= 3.12 venv of requirements/jax.txt (docs/trainer.md, JAX backend), or set"
        " spec.train.backend: torch"
    )


def jax_process_env(job: SpeedrunJob, base: dict[str, str], coordinator_port: int, index: int) -> dict[str, str]:
    """The environment of node `index`'s jax_main process."""
    r = job.spec.resources
    env = {
        **base,
        "SPEEDRUN_JAX_COORDINATOR": f"127.0.0.1:{coordinator_port}",
        "SPEEDRUN_JAX_NUM_PROCESSES": str(r.node_range[1]),
        "SPEEDRUN_JAX_PROCESS_ID": str(index),
    }
    if r.accelerator == "cpu":
        env["SPEEDRUN_JAX_PLATFORM"] = "cpu"
        flag = f"--xla_force_host_platform_device_count={r.procs_per_node}"
        env["XLA_FLAGS"] = f"{base.get('XLA_FLAGS', '')} {flag}".strip()
    return env


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (none if it is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_process_trees(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process below (and including) `procs`, then SIGKILL what is left."""
    tree = {pid for p in procs if p.poll() is None for pid in (p.pid, *_descendants(p.pid))}
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 2.0)):
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for p in procs:
                p.poll()  # reap our direct children
            tree = {pid for pid in tree if _running(pid)}
            if not tree:
                return
            time.sleep(0.1)


class TorchxApp:
    """A torchx `dist.ddp` app on the `local_cwd` scheduler, polled like a Popen."""

    def __init__(
        self,
        *,
        module: str,
        args: list[str],
        nodes: str,
        procs_per_node: int,
        env: dict[str, str],
        max_retries: int,
        rdzv_port: int,
        log_dir: Path,
    ) -> None:
        from torchx.components.dist import ddp
        from torchx.runner import get_runner

        # torchx runs `bash -c "torchrun ..."`: this interpreter's bin directory must come first on
        # PATH, also when the venv was never activated (`.venv/bin/speedrun run ...`).
        bin_dir = str(Path(sys.executable).parent)
        env = {**env, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
        app = ddp(
            *args,
            m=module,
            j=f"{nodes}x{procs_per_node}",
            env=env,
            max_retries=max_retries,
            rdzv_port=rdzv_port,
            name=module.rsplit(".", 1)[-1],
        )
        self.log_dir = log_dir
        self.runner: Any = get_runner()
        self.handle = self.runner.run(app, scheduler="local_cwd", cfg={"log_dir": str(log_dir)})

    def poll(self) -> int | None:
        from torchx.specs import AppState

        status = self.runner.status(self.handle)
        if status is None or not status.is_terminal():
            return None
        return 0 if status.state == AppState.SUCCEEDED else 1

    def cancel(self) -> None:
        if self.poll() is None:
            self.runner.cancel(self.handle)
        self.runner.close()

    def node_log(self, index: int) -> Path | None:
        """The combined stdout/stderr of one replica (node)."""
        found = sorted(self.log_dir.glob(f"**/{index}/combined.log"))
        return found[0] if found else None
