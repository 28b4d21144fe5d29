"""The progress timer: rank 0's Prometheus endpoint -> status.progress, while Training.

Rank 0 is the training pod with completion index 0. An unreachable endpoint (pod restarting,
metrics not served yet) is normal during a run: it is counted and logged at debug level, and
the previous progress stays until the next tick. A scrape that ends after the job left Training
is dropped, so it cannot overwrite the final progress the reconcile wrote (lifecycle.py).
"""

from __future__ import annotations

import logging
from typing import Any

from speedrun_api.spec import MetricsSpec
from speedrun_api.status import now_rfc3339
from speedrun_operator import kube, metrics, progress
from speedrun_operator import labels as L
from speedrun_operator.handlers.setup import OperatorContext


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
    with metrics.timed("progress"):
        pod = rank0_pod(ctx.client, namespace, name)
        port = int((spec.get("metrics") or {}).get("port") or MetricsSpec().port)
        url = progress.metrics_url(pod, port) if pod is not None else None
        if url is None:
            return None
        try:
            values = progress.parse_progress(progress.fetch(url))
        except (OSError, ValueError) as err:
            metrics.SCRAPES.labels(result="error").inc()
            logger.debug(f"progress scrape of {url} failed: {err}")
            return None
        metrics.SCRAPES.labels(result="ok").inc()
        if not values or not _still_training(ctx.client, namespace, name):
            return None
        return progress.progress_from(values, now_rfc3339()).model_dump(by_alias=True, exclude_none=True)


def _still_training(client: kube.KubeClient, namespace: str, name: str) -> bool:
    body = client.get(kube.SPEEDRUNJOB, namespace, name)
    return body is not None and (body.get("status") or {}).get("phase") == "Training"
