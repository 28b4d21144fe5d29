"""Integration: `speedrun run` end to end with two torchrun agents rendezvousing over gloo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import tiny_manifest, write_manifest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("launcher", ["torchrun", "torchx"])
def test_speedrun_run_two_nodes(tmp_path: Path, launcher: str):
    manifest = write_manifest(tmp_path / "job.yaml", tiny_manifest())
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "speedrun_trainer.cli",
            "run",
            str(manifest),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--launcher",
            launcher,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "speedrun results" in res.stdout and "BPB" in res.stdout
    [run_dir] = (tmp_path / "runs" / "test-tiny").iterdir()
    info = json.loads((run_dir / "speedrun_results.json").read_text())["runs"][0]["run_info"]
    assert info["num_devices"] == 2
    assert info["training_steps"] == 20
    assert info["total_tokens"] == 20 * 8 * 64
    assert info["eval/builtin://pydoc-topics/val/bpb"] < info["initial_bpb"]
    assert info["training_time"] > 0 and info["training_hardware_flops"] > 0
    assert "eval/paloma/c4_en/bpb" not in info  # the builtin corpus is not Marin's C4-EN
    assert info["warmup_steps"] == 11 and info["warmup_seconds"] > 0  # nanochat's steps 0-10, kept apart
    metas = sorted(p.name for p in (run_dir / "checkpoints").glob("meta_*.json"))
    assert metas == ["meta_000010.json", "meta_000020.json"]
    # both agents really trained: one worker joined through each
    if launcher == "torchx":
        logs = [p.read_text() for p in sorted((run_dir / "logs" / "torchx").glob("**/combined.log"))]
    else:
        logs = [(run_dir / "logs" / f"train-node-{i}.log").read_text() for i in range(2)]
    # torchx tees worker output with a "[rank]:" prefix; torchrun writes it as is
    lines = [line for log in logs for line in log.splitlines() if "worker rank" in line]
    workers = sorted(line[line.index("worker rank") :] for line in lines)
    assert workers == ["worker rank 0/2 (local rank 0) on cpu", "worker rank 1/2 (local rank 0) on cpu"]
    assert (
        json.loads((run_dir / "termination-message.json").read_text())["bpb"]
        == info["eval/builtin://pydoc-topics/val/bpb"]
    )
