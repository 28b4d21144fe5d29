"""Stopping `speedrun run`: Ctrl-C, SIGTERM and SIGHUP stop every process it started (torchrun
agents and their workers) and exit 128 + the signal; a SIGKILLed `speedrun run` leaves no orphans
either (the kernel's parent-death signal); an agent killed with -9 is reported as signal 9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import tiny_manifest, write_manifest

pytestmark = pytest.mark.e2e

START_TIMEOUT = 120.0  # two torchrun agents and their workers up, on 2 busy cores
GONE_TIMEOUT = 30.0


def _alive(marker: str) -> list[int]:
    """Processes whose command line names the run's directory (agents and workers), not zombies."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    out.append(int(cmdline.parent.name))
        except (OSError, IndexError):
            continue
    return out


def _default_stop_signals() -> None:
    """In the child: Ctrl-C's SIGINT as a shell's foreground job gets it. A script that starts
    pytest as a background job leaves SIGINT ignored, and Python then installs no KeyboardInterrupt
    handler: the test would depend on how pytest was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """`speedrun run` of a long CPU-tiny job, once its 2 agents and 2 workers are all running."""
    manifest = write_manifest(tmp_path / "job.yaml", tiny_manifest(**{"spec.train.steps": 100000}))
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "speedrun_trainer.cli", "run", str(manifest), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_stop_signals,
    )
    marker = str(runs)
    deadline = time.monotonic() + START_TIMEOUT
    while len([p for p in _alive(marker) if p != proc.pid]) < 4:  # 2 torchrun agents + 2 workers
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    return proc, marker


def _all_gone(marker: str) -> list[int]:
    deadline = time.monotonic() + GONE_TIMEOUT
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(marker)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_stops_all_processes(tmp_path: Path, sig: signal.Signals):
    proc, marker = _start(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"stopped ({sig.name})" in err and "--resume" in err
    assert _all_gone(marker) == []


def test_a_killed_speedrun_run_leaves_no_orphans(tmp_path: Path):
    proc, marker = _start(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert _all_gone(marker) == []


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_killed_agent_is_reported_as_signal_9(tmp_path: Path):
    proc, marker = _start(tmp_path)
    agents = [p for p in _alive(marker) if _parent(p) == proc.pid]  # its children: the torchrun agents
    assert len(agents) == 2
    os.kill(agents[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + 9, err
    assert "training failed (killed by signal 9 (SIGKILL))" in err
    assert _all_gone(marker) == []
