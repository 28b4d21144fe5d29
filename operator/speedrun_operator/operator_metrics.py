"""The operator's own Prometheus metrics, on their own registry and port.

    speedrun_operator_jobs{phase}                          gauge: SpeedrunJobs by phase
    speedrun_operator_reconcile_duration_seconds{handler}  histogram
    speedrun_operator_training_restarts_total              counter: gang restarts counted (status.restarts)
    speedrun_operator_training_disruptions_total           counter: gang restarts after a disruption
    speedrun_operator_training_early_restarts_total        counter: gang restarts before all ranks joined
    speedrun_operator_failures_total{reason}               counter: jobs that ended Failed
    speedrun_operator_progress_scrapes_total{result}       counter: rank-0 scrapes (ok|error)

A private `CollectorRegistry` keeps these apart from anything else in the process (tests run
the operator in-process) and from the default process collectors.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from speedrun_api.status import PHASES

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("speedrun_operator_jobs", "SpeedrunJobs by phase", ["phase"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "speedrun_operator_reconcile_duration_seconds",
    "Time spent in one handler call",
    ["handler"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESTARTS = Counter(
    "speedrun_operator_training_restarts",
    "Gang restarts: a failed training attempt replaced by the next (status.restarts)",
    registry=REGISTRY,
)
DISRUPTIONS = Counter(
    "speedrun_operator_training_disruptions",
    "Gang restarts after a pod was preempted, evicted or lost with its node (status.disruptions)",
    registry=REGISTRY,
)
EARLY_RESTARTS = Counter(
    "speedrun_operator_training_early_restarts",
    "Gang restarts of attempts that failed before all ranks joined (not counted in status.restarts)",
    registry=REGISTRY,
)
FAILURES = Counter("speedrun_operator_failures", "SpeedrunJobs that ended Failed", ["reason"], registry=REGISTRY)
SCRAPES = Counter("speedrun_operator_progress_scrapes", "Scrapes of rank 0's metrics", ["result"], registry=REGISTRY)


class PhaseBook:
    """Who is in which phase, so the gauge counts each job once (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def record(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase
            counts = {p: 0 for p in PHASES}
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
            for p, n in counts.items():
                JOBS.labels(phase=p).set(n)

    def forget(self, namespace: str, name: str) -> None:
        self.record(namespace, name, None)


PHASE_BOOK = PhaseBook()


@contextmanager
def timed(handler: str) -> Any:
    with RECONCILE_SECONDS.labels(handler=handler).time():
        yield


def record_failure(reason: str) -> None:
    FAILURES.labels(reason=reason).inc()


def record_restarts(count: int) -> None:
    if count > 0:
        RESTARTS.inc(count)


def record_disruptions(count: int) -> None:
    if count > 0:
        DISRUPTIONS.inc(count)


def record_early_restarts(count: int) -> None:
    if count > 0:
        EARLY_RESTARTS.inc(count)


def serve(port: int) -> Any:
    """Start the /metrics HTTP server; returns it (call `.shutdown()` to stop), None if port 0."""
    if not port:
        return None
    server, _thread = start_http_server(port, registry=REGISTRY)
    return server
