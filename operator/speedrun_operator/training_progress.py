"""Training progress: scrape rank 0's Prometheus endpoint and map it onto status.progress.

Rank 0 of the trainer serves gauges without labels (docs/contracts.md); while the job is
Training, the operator's periodic thread (handlers/periodic.py) polls
`http://<rank-0 pod IP>:<spec.metrics.port>/metrics` and copies the values it finds. Parsing
uses prometheus_client's text parser, so any valid exposition (comments, other metrics,
`_created` samples) is fine.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from speedrun_api.status import Progress
from speedrun_api.trainer_metrics import METRIC_NAMES, parse_metrics

SCRAPE_TIMEOUT = 3.0

# Trainer gauge -> status.progress field: the trainer's own names (speedrun_trainer.train.telemetry),
# whose short keys are the snake_case fields of `Progress`.
METRIC_FIELDS: dict[str, str] = {name: field for field, name in METRIC_NAMES.items()}
INTEGER_FIELDS = ("step", "total_steps")


def parse_progress(text: str) -> dict[str, Any]:
    """Exposition text -> {field: value} for the gauges present; NaN and inf are skipped."""
    return {k: int(v) if k in INTEGER_FIELDS else v for k, v in parse_metrics(text).items()}


def progress_from(values: dict[str, Any], now: str) -> Progress:
    return Progress(**values, update_time=now)


def metrics_url(pod: dict[str, Any], port: int) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


def fetch(url: str, timeout: float = SCRAPE_TIMEOUT) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8", errors="replace")
