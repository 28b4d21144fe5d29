"""Training progress: scrape rank 0's Prometheus endpoint and map it onto status.progress.

Rank 0 of the trainer serves gauges without labels (docs/contracts.md); the operator polls
`http://<rank-0 pod IP>:<spec.metrics.port>/metrics` on a kopf timer while the job is Training
and copies the values it finds. Parsing uses prometheus_client's text parser, so any valid
exposition (comments, other metrics, `_created` samples) is fine.
"""

from __future__ import annotations

import math
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from speedrun_operator.status import Progress

SCRAPE_TIMEOUT = 3.0

# Trainer gauge -> status.progress field (camelCase on the wire, snake_case in the model).
METRIC_FIELDS: dict[str, str] = {
    "speedrun_step": "step",
    "speedrun_total_steps": "total_steps",
    "speedrun_train_loss": "train_loss",
    "speedrun_val_loss": "val_loss",
    "speedrun_val_bpb": "val_bpb",
    "speedrun_tokens_per_second": "tokens_per_second",
    "speedrun_mfu": "mfu",
    "speedrun_eta_seconds": "eta_seconds",
    "speedrun_training_seconds": "training_seconds",
}
INTEGER_FIELDS = ("step", "total_steps")


def parse_progress(text: str) -> dict[str, Any]:
    """Exposition text -> {field: value} for the gauges present; NaN and inf are skipped."""
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = METRIC_FIELDS.get(sample.name)
            if field is None or not math.isfinite(sample.value):
                continue
            found[field] = int(sample.value) if field in INTEGER_FIELDS else float(sample.value)
    return found


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
