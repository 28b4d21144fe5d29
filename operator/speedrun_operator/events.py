"""Kubernetes Events about a SpeedrunJob (what `kubectl describe srj` and `kubectl get events`
show), posted through the operator's own client from any thread.

Not `kopf.event`: kopf posts through an event queue whose context variables it sets only inside
its per-object handler tasks (kopf's _core/reactor/processing.py), so from the operator's
periodic resync thread (handlers/periodic.py) kopf.event raises LookupError, and the phase change
a resync finds (a start-up deadline passing, a Job event the watch missed) would post nothing.
This writes a core/v1 Event as client-go's EventRecorder does for a new one: `<name>.<random>`,
count 1, first and last timestamp now, source and reporting component `speedrun-operator`,
reporting instance this replica. Events are best effort: a refused post is logged, and the
reconcile that asked for it goes on.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Literal

from speedrun_api.status import now_rfc3339
from speedrun_operator import kube

COMPONENT = "speedrun-operator"
MAX_MESSAGE = 1024  # what kopf and client-go's recorder keep of a message
MAX_INSTANCE = 128  # the apiserver's limit on reportingInstance (core/validation/events.go)

logger = logging.getLogger(__name__)


def build(
    body: dict[str, Any], type_: Literal["Normal", "Warning"], reason: str, message: str, instance: str, now: str
) -> dict[str, Any]:
    """The core/v1 Event about `body` (the SpeedrunJob as read from the API)."""
    meta = body["metadata"]
    involved = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {k: v for k, v in involved.items() if v},
        "type": type_,
        "reason": reason,
        "message": message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "...",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance[:MAX_INSTANCE],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def post(
    client: kube.KubeClient,
    body: dict[str, Any],
    type_: Literal["Normal", "Warning"],
    reason: str,
    message: str,
) -> None:
    """Post one Event about `body`; a refusal is logged, never raised."""
    instance = os.environ.get("HOSTNAME") or socket.gethostname()  # the operator's pod
    event = build(body, type_, reason, message, instance, now_rfc3339())
    try:
        client.create(kube.EVENT, body["metadata"]["namespace"], event)
    except kube.KubeError as err:
        logger.warning(f"[{body['metadata']['namespace']}/{body['metadata']['name']}] event {reason} not posted: {err}")
