"""Ctrl-C on `speedrun run` stops every process it started (torchrun agents and their workers)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import tiny_manifest, write_manifest


def _alive(marker: str) -> list[str]:
    res = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return res.stdout.split()


def test_ctrl_c_stops_all_processes(tmp_path: Path):
    manifest = write_manifest(tmp_path / "job.yaml", tiny_manifest(**{"spec.train.steps": 100000}))
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "speedrun_trainer.cli", "run", str(manifest), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not list(runs.glob("*/*/checkpoints")) and not list(runs.glob("*/*/logs/train-node-0.log")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    marker = str(runs)
    while len(_alive(marker)) < 4:  # 2 torchrun agents + 2 workers
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err
    deadline = time.monotonic() + 15
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(marker) == []
