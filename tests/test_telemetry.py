"""Trainer metrics: served over HTTP, parsed back by the progress bar; W&B offline never blocks."""

from __future__ import annotations

import io

from speedrun_api.metrics import METRIC_NAMES
from speedrun_trainer.cli.launch import free_port
from speedrun_trainer.cli.progress import ProgressBar, parse_metrics, scrape
from speedrun_trainer.train.telemetry import Telemetry


def test_metrics_served_and_parsed_over_http():
    port = free_port()
    telemetry = Telemetry(port)
    try:
        telemetry.set(step=7, total_steps=10, train_loss=2.5, tokens_per_second=1234.0, mfu=0.25, eta_seconds=3.0)
        got = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        telemetry.close()
    assert got == {"step": 7, "total_steps": 10, "train_loss": 2.5, "tokens_per_second": 1234.0, "mfu": 0.25,
                   "eta_seconds": 3.0, "training_seconds": 0.0}
    assert scrape(f"http://127.0.0.1:{port}/metrics") == {}  # closed: no error, no numbers


def test_unset_validation_metrics_are_absent_not_nan():
    text = "\n".join(f"# TYPE {n} gauge\n{n} NaN" for n in METRIC_NAMES.values()) + "\n"
    assert parse_metrics(text) == {}


def test_progress_bar_without_a_terminal_prints_each_tenth():
    out = io.StringIO()
    bar = ProgressBar(100, stream=out)
    for step in range(0, 101, 5):
        bar.update({"step": step, "train_loss": 1.0, "tokens_per_second": 10.0, "eta_seconds": 1.0})
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("[" + "#" * 28 + "] step 100/100")


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    from speedrun_api.manifest import parse_job
    from speedrun_trainer.train.tracking import Tracker
    from tests.helpers import tiny_manifest

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    job = parse_job(tiny_manifest(**{"spec.tracking.wandb.mode": "offline"}))
    tracker = Tracker(job, enabled=True, run_id="testrun1", config={})
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.finish()
    assert list(tmp_path.glob("wandb/offline-run-*testrun1"))
