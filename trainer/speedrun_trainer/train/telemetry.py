"""Prometheus metrics served by trainer rank 0 (names pinned in docs/contracts.md).

The operator scrapes these into `status.progress`; `speedrun run` scrapes them for its
progress bar; a Prometheus server can scrape them too. Every gauge lives in a private
registry so that importing this module twice (tests) never collides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from speedrun_api.trainer_metrics import HELP, METRIC_NAMES


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
