"""Integration: `speedrun run` end to end with two torchrun agents rendezvousing over gloo, into a
pipe and into a terminal of 80 columns (tmux)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import tiny_manifest, write_manifest
from tests.support.tmux_screen import screen_of

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
    assert "speedrun results" in res.stdout and "the final evaluation of step 20" in res.stdout
    # A pipe gets each set-up phase as a plain line, from the first second: before any step; the
    # last step shows whenever the run ends (rank 0's log line, not only a lucky scrape).
    shown = res.stderr.splitlines()
    steps = [i for i, line in enumerate(shown) if line.startswith("step ")]
    assert steps and shown[steps[-1]].startswith("step 20/20 | "), res.stderr
    assert shown[0].startswith("phase: starting "), res.stderr  # the launcher's own, at once
    assert "phase: building the model and its optimizer" in shown[: steps[0]], res.stderr
    assert "note: in-loop eval at step 20/20: val loss" in res.stderr
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


def test_speedrun_run_in_tmux_at_80_columns(tmp_path: Path) -> None:
    """As a person sees it in a terminal of 80 x 24: set-up phases before step 0, one progress
    line, nothing wrapped (long paths folded), the full results path on screen."""
    write_manifest(tmp_path / "job.yaml", tiny_manifest())
    command = f"cd {tmp_path} && {sys.executable} -m speedrun_trainer.cli run job.yaml --runs-dir runs"
    screen = screen_of(f"{command}; echo RUN EXITED $?", "RUN EXITED", deadline_s=240)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert "RUN EXITED 0" in screen, screen
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    progress = [i for i, line in enumerate(lines) if line.startswith("step ")]
    assert len(progress) == 1 and lines[progress[0]].startswith("step 20/20"), screen
    set_up = lines[: progress[0]]
    for phase in ("starting 2 torchrun agent(s)", "rendezvous of 2 node(s)", "building the model and its optimizer"):
        assert any(line.startswith(phase) for line in set_up), (phase, screen)
    assert "in-loop eval at step 20/20" in screen and "bpb@" in lines[progress[0]]
    [run_dir] = (tmp_path / "runs" / "test-tiny").iterdir()
    joined = "".join(line.strip() for line in lines)
    assert "the final evaluation of step 20" in " ".join(line.strip() for line in lines)
    assert (run_dir / "speedrun_results.json").as_uri() in joined  # folded at most, never cut
