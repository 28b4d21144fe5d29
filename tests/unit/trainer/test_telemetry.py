"""Trainer metrics: served over HTTP, parsed back by `speedrun run`; W&B: files under the run
directory, one `wandb:` line saying what became of it, never a reason for a run to stop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from speedrun_api.trainer_metrics import METRIC_NAMES
from speedrun_trainer.cli.launch import free_port
from speedrun_trainer.cli.live_display import parse_metrics, scrape
from speedrun_trainer.train.telemetry import Telemetry


def test_metrics_served_and_parsed_over_http():
    port = free_port()
    telemetry = Telemetry(port)
    try:
        telemetry.set(step=7, total_steps=10, train_loss=2.5, tokens_per_second=1234.0, mfu=0.25, eta_seconds=3.0)
        got = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        telemetry.close()
    assert got == {
        "step": 7,
        "total_steps": 10,
        "train_loss": 2.5,
        "tokens_per_second": 1234.0,
        "mfu": 0.25,
        "eta_seconds": 3.0,
        "training_seconds": 0.0,
    }
    assert scrape(f"http://127.0.0.1:{port}/metrics") == {}  # closed: no error, no numbers


def test_unset_validation_metrics_are_absent_not_nan():
    text = "\n".join(f"# TYPE {n} gauge\n{n} NaN" for n in METRIC_NAMES.values()) + "\n"
    assert parse_metrics(text) == {}


def wandb_job(mode: str):
    from speedrun_api.manifest import parse_job
    from tests.support.helpers import tiny_manifest

    return parse_job(tiny_manifest(**{"spec.tracking.wandb.mode": mode}))


def test_wandb_offline_writes_under_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from speedrun_trainer.train.tracking import Tracker

    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("SPEEDRUN_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)  # the working directory stays clean (in a pod: read-only)
    tracker = Tracker(wandb_job("offline"), enabled=True, run_id="testrun1", config={})
    tracker.log({"train/loss": 1.0, "train/lr": 0.01}, step=1)
    tracker.summary({"eval/paloma/c4_en/bpb": 1.5})
    tracker.finish()
    [run] = (tmp_path / "run" / "wandb").glob("offline-run-*testrun1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    out = capsys.readouterr().out
    assert f"wandb: offline, files in {run} (upload later: wandb sync {run})" in out


def test_wandb_online_without_a_key_is_off_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from speedrun_trainer.train.tracking import Tracker

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    tracker = Tracker(wandb_job("online"), enabled=True, run_id="x", config={})
    assert tracker.run is None and tracker.link is None
    [line] = capsys.readouterr().out.splitlines()
    assert "wandb: off: mode online but no API key" in line and "secretRef" in line
    tracker.log({"train/loss": 1.0}, step=1)  # no-ops
    tracker.finish()


def test_wandb_without_the_package_is_off_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from speedrun_trainer.train.tracking import Tracker

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(wandb_job("offline"), enabled=True, run_id="x", config={})
    assert tracker.run is None
    assert "wandb: off: the wandb package is not installed (pip install 'speedrun-operator[wandb]')" in (
        capsys.readouterr().out
    )


def test_wandb_other_ranks_say_nothing(capsys: pytest.CaptureFixture) -> None:
    from speedrun_trainer.train.tracking import Tracker

    assert Tracker(wandb_job("offline"), enabled=False, run_id="x", config={}).run is None
    assert capsys.readouterr().out == ""
