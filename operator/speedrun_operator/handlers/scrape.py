"""The progress scrape: rank 0's Prometheus endpoint -> status.progress, while Training.

Rank 0 is the training pod with completion index 0. An unreachable endpoint (pod restarting,
metrics not served yet) is normal during a run: it is counted and logged at debug level, and
the previous progress stays until the next tick of the periodic thread (periodic.py).
`follow_progress` writes what it scraped with the resourceVersion it read the job at as a
precondition: if the reconcile changed the status in the meantime (Training -> Evaluating ->
Succeeded, with the final step, lifecycle.py), the apiserver answers 409 and the stale sample is
dropped instead of overwriting the final progress.

`Scrapes` runs them concurrently and bounded, off the periodic thread: a small pool of
SCRAPE_WORKERS threads, at most one scrape per job in flight (a job whose last scrape has not
ended is skipped this tick, counted as result="busy"), and each scrape cut off after
training_progress.SCRAPE_TIMEOUT in all. A target that never answers (a default-deny
NetworkPolicy drops the packets; a pod that accepts and hangs) then costs one worker for a few
seconds and delays neither the other jobs' scrapes nor any reconcile.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from speedrun_api.spec import MetricsSpec
from speedrun_api.status import now_rfc3339
from speedrun_operator import kube, operator_metrics, training_progress
from speedrun_operator import labels as L
from speedrun_operator.handlers.operator_startup import OperatorContext


def rank0_pod(client: kube.KubeClient, namespace: str, name: str) -> dict[str, Any] | None:
    selector = {**L.selector_labels(name, L.ROLE_TRAIN), L.LABEL_COMPLETION_INDEX: "0"}
    running = [
        p for p in client.list(kube.POD, namespace, selector) if (p.get("status") or {}).get("phase") == "Running"
    ]
    return running[0] if running else None


def scrape_progress(
    ctx: OperatorContext, namespace: str, name: str, spec: dict[str, Any], logger: logging.Logger
) -> dict[str, Any] | None:
    """status.progress (wire form) from rank 0, or None when there is nothing to report."""
    with operator_metrics.timed("progress"):
        pod = rank0_pod(ctx.client, namespace, name)
        port = int((spec.get("metrics") or {}).get("port") or MetricsSpec().port)
        url = training_progress.metrics_url(pod, port) if pod is not None else None
        if url is None:
            return None
        try:
            values = training_progress.parse_progress(training_progress.fetch(url))
        except (OSError, ValueError) as err:
            operator_metrics.SCRAPES.labels(result="error").inc()
            logger.debug(f"progress scrape of {url} failed: {err}")
            return None
        operator_metrics.SCRAPES.labels(result="ok").inc()
        if not values:
            return None
        return training_progress.progress_from(values, now_rfc3339()).model_dump(by_alias=True, exclude_none=True)


def follow_progress(
    ctx: OperatorContext, namespace: str, name: str, spec: dict[str, Any], logger: logging.Logger
) -> bool:
    """Scrape rank 0 and write status.progress while the job is still Training; True if written."""
    found = scrape_progress(ctx, namespace, name, spec, logger)
    if found is None:
        return False
    body = ctx.client.get(kube.SPEEDRUNJOB, namespace, name)
    if body is None or (body.get("status") or {}).get("phase") != "Training":
        return False
    patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": {"progress": found}}
    try:
        ctx.client.patch(kube.SPEEDRUNJOB, namespace, name, patch, subresource="status")
    except kube.Conflict:
        logger.debug("progress sample dropped: the job changed while it was scraped")
        return False
    return True


SCRAPE_WORKERS = 4  # concurrent scrapes per operator: a tick of 100 training jobs takes ~25 round trips


class Scrapes:
    """The progress scrapes of the periodic thread, run on a bounded pool (see the module's docstring)."""

    def __init__(self, ctx: OperatorContext, logger: logging.Logger, workers: int = SCRAPE_WORKERS) -> None:
        self.ctx, self.logger = ctx, logger
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="speedrun-scrape")
        self._busy: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def submit(self, namespace: str, name: str, spec: dict[str, Any]) -> bool:
        """Queue one job's scrape and return at once; False if its previous one is still running."""
        key = (namespace, name)
        with self._lock:
            if key in self._busy:
                operator_metrics.SCRAPES.labels(result="busy").inc()
                return False
            self._busy.add(key)
        try:
            self._pool.submit(self._scrape, key, spec)
        except RuntimeError:  # shut down: the operator is stopping
            self._done(key)
            return False
        return True

    def _scrape(self, key: tuple[str, str], spec: dict[str, Any]) -> None:
        try:
            follow_progress(self.ctx, *key, spec, self.logger)
        except Exception as err:  # the next tick scrapes again; a worker must outlive any one failure
            self.logger.warning(f"[{key[0]}/{key[1]}] progress scrape failed: {type(err).__name__}: {err}")
        finally:
            self._done(key)

    def _done(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._busy.discard(key)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._busy)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
