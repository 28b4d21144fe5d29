"""Resume: a training process killed after a checkpoint restarts from it and ends exactly where an
uninterrupted run ends (same step count, same weights up to float noise)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.helpers import tiny_manifest, write_manifest

pytestmark = pytest.mark.e2e

STEPS = 60


def _train(config: Path, storage: Path) -> subprocess.Popen:
    env = {**os.environ, "SPEEDRUN_STORAGE_URI": storage.as_uri(), "SPEEDRUN_METRICS_PORT": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "speedrun_trainer.train", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _final_weights(storage: Path) -> dict[str, torch.Tensor]:
    return torch.load(storage / "checkpoints" / f"model_{STEPS:06d}.pt", weights_only=True)


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path):
    doc = tiny_manifest(**{"spec.train.steps": STEPS, "spec.train.evalEvery": 0})
    config = write_manifest(tmp_path / "job.yaml", doc)

    straight = tmp_path / "straight"
    proc = _train(config, straight)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out

    interrupted = tmp_path / "interrupted"
    proc = _train(config, interrupted)
    deadline = time.monotonic() + 180
    while not list((interrupted / "checkpoints").glob("meta_*.json")):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (interrupted / "train_summary.json").exists(), "killed too late to test a resume"

    proc = _train(config, interrupted)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "resumed from" in out
    resumed_at = int(out.split("at step ")[1].split()[0])
    assert 10 <= resumed_at < STEPS
    summary = json.loads((interrupted / "train_summary.json").read_text())
    assert summary["step"] == STEPS
    # the clock's warm-up: the first 11 steps of each process start, the resumed one included
    expected = min(11, resumed_at) + min(11, STEPS - resumed_at)
    assert summary["warmup_steps"] == expected and summary["warmup_seconds"] > 0
    straight_summary = json.loads((straight / "train_summary.json").read_text())
    assert straight_summary["warmup_steps"] == 11
    a, b = _final_weights(straight), _final_weights(interrupted)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
