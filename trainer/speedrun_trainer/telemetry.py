"""Prometheus metrics served by trainer rank 0 (names pinned in docs/contracts.md).

The operator scrapes these into `status.progress`; `speedrun run` scrapes them for its
progress bar; a Prometheus server can scrape them too. Every gauge lives in a private
registry so that importing this module twice (tests) never collides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

METRIC_NAMES = {
    "step": "speedrun_step",
    "total_steps": "speedrun_total_steps",
    "train_loss": "speedrun_train_loss",
    "val_loss": "speedrun_val_loss",
    "val_bpb": "speedrun_val_bpb",
    "tokens_per_second": "speedrun_tokens_per_second",
    "mfu": "speedrun_mfu",
    "eta_seconds": "speedrun_eta_seconds",
    "training_seconds": "speedrun_training_seconds",
}
HELP = {
    "step": "Optimizer steps completed",
    "total_steps": "Optimizer steps in the training horizon",
    "train_loss": "Training loss (nats/token), averaged over ranks",
    "val_loss": "Latest validation loss (nats/token)",
    "val_bpb": "Latest validation bits-per-byte",
    "tokens_per_second": "Training throughput over all ranks (eval and checkpoints excluded)",
    "mfu": "Model FLOPs utilization against the accelerator's peak",
    "eta_seconds": "Estimated training seconds left",
    "training_seconds": "Training wall time so far (eval, checkpointing and logging excluded)",
}


_KEY_BY_NAME = {name: key for key, name in METRIC_NAMES.items()}


def parse_metrics(text: str) -> dict[str, float]:
    """Our gauges out of a Prometheus text exposition, keyed by their short names.

    NaN and infinite values (not measured yet) are left out; other metrics are ignored.
    Used by `speedrun run`'s progress bar and by the operator's progress scrape.
    """
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _KEY_BY_NAME.get(sample.name)
            if key is not None and math.isfinite(sample.value):
                out[key] = float(sample.value)
    return out


@dataclass
class Telemetry:
    """Gauges plus an optional HTTP endpoint. `Telemetry(None)` records but serves nothing."""

    port: int | None

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {k: Gauge(n, HELP[k], registry=self.registry) for k, n in METRIC_NAMES.items()}
        # Unknown until measured: NaN, which the operator and the progress bar skip (never a fake 0).
        for k in ("train_loss", "val_loss", "val_bpb", "tokens_per_second", "mfu", "eta_seconds"):
            self.gauges[k].set(math.nan)
        self._server = None
        if self.port is not None:
            self._server, _ = start_http_server(self.port, addr="0.0.0.0", registry=self.registry)

    def set(self, **values: float | None) -> None:
        for key, value in values.items():
            if value is not None:
                self.gauges[key].set(value)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
