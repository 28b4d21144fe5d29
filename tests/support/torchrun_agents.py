"""Real torchrun agents on this machine, as a training Job's pods run them: the pods' wrapper
(`speedrun_trainer.train.torchrun`), c10d rendezvous on loopback, one agent per "node" with its
JOB_COMPLETION_INDEX, each writing its log to a file the test reads."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from speedrun_trainer.cli.launch import free_port
from tests.support.helpers import ROOT


def wait_for(path: Path, pattern: str, timeout: float) -> re.Match[str]:
    """The first match of `pattern` in the log at `path`, waiting up to `timeout` s for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text() if path.exists() else "")
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in {path} within {timeout} s:\n{path.read_text()[-2000:]}")


@contextlib.contextmanager
def agents(
    tmp_path: Path, worker: Path, config: Path, run_id: str, extra: list[list[str]]
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[Path]]]:
    """One agent per entry of `extra` (its own torchrun options), index i the i-th, each running
    `worker --config config` with one process; all killed at the end, with the workers they
    started (a worker prints `pid N` for that)."""
    paths = [f"{ROOT}/{p}" for p in ("api", "trainer", "operator")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(ROOT)])}
    port = free_port()
    started, logs = [], [tmp_path / f"agent{i}.log" for i in range(len(extra))]
    try:
        for index, (log, options) in enumerate(zip(logs, extra, strict=True)):
            argv = [sys.executable, "-m", "speedrun_trainer.train.torchrun", f"--nnodes={len(extra)}",
                    "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                    f"--rdzv-id={run_id}", "--max-restarts=0", *options,
                    str(worker), "--config", str(config)]  # fmt: skip
            with log.open("w") as out:
                started.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                                env={**env, "JOB_COMPLETION_INDEX": str(index)}))  # fmt: skip
        yield started, logs
    finally:
        for agent in started:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        for log in logs:  # workers whose agent was killed: end them too
            for pid in re.findall(r"pid (\d+)", log.read_text() if log.exists() else ""):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
