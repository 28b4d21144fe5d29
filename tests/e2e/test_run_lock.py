"""One writer per run: two `speedrun run --resume` of the same run directory at once. The first
runs; the second, started once the first holds the run's lock, exits 2 with one line naming it
(host, pid, since when), and the first runs on. Killed, the first leaves the lock free."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speedrun_api.run_contract import RUN_LOCK_FILE
from speedrun_trainer.data.run_lock import Holder, file_run_lock
from tests.support.helpers import tiny_manifest, write_manifest

pytestmark = pytest.mark.e2e

HOLD_TIMEOUT = 120.0  # the first `speedrun run` up and holding its lock, on 2 busy cores


def _speedrun_run(manifest: Path, runs: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "speedrun_trainer.cli", "run", str(manifest), "--runs-dir", str(runs), "--resume"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _holder_pid(runs: Path) -> int | None:
    for lock in runs.glob(f"test-tiny/*/{RUN_LOCK_FILE}"):
        try:
            return int(json.loads(lock.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None  # being written
    return None


def test_a_second_resume_of_a_running_run_exits_2_naming_the_holder(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "job.yaml", tiny_manifest(**{"spec.train.steps": 100000}))
    runs = tmp_path / "runs"
    first = _speedrun_run(manifest, runs)  # no earlier run: it starts one, and holds it
    try:
        deadline = time.monotonic() + HOLD_TIMEOUT
        while _holder_pid(runs) != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        [run_dir] = (runs / "test-tiny").iterdir()

        second = _speedrun_run(manifest, runs)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, out + err
        assert out == ""
        assert err.count("\n") == 1, err
        assert err.startswith(f"speedrun run: {run_dir} is being written by pid {first.pid}")
        assert f"on host {socket.gethostname()} since " in err and f"(run test-tiny-{run_dir.name})" in err
        assert first.poll() is None  # the holder runs on
        assert _holder_pid(runs) == first.pid
        assert [p.name for p in (runs / "test-tiny").iterdir()] == [run_dir.name]  # no second directory
    finally:
        first.kill()
        first.communicate(timeout=60)
    with file_run_lock(run_dir, Holder.here("next")):  # the kernel dropped the killed holder's lock
        pass
