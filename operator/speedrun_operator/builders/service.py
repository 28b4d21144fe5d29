"""The headless Service `<name>`: stable DNS for the training pods and the c10d rendezvous.

Indexed Job pods get hostname `<name>-train-<index>`; with `subdomain: <name>` and this Service
they resolve as `<name>-train-<index>.<name>`. `publishNotReadyAddresses` lets rank 0's name
resolve before any readiness, which the rendezvous needs at start.
"""

from __future__ import annotations

from typing import Any

from speedrun_api.spec import SpeedrunJob
from speedrun_operator import labels as L
from speedrun_operator.builders import common


def build_headless_service(job: SpeedrunJob) -> dict[str, Any]:
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(job, L.service_name(name), L.ROLE_RENDEZVOUS),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": L.selector_labels(name, L.ROLE_TRAIN),
            "ports": [
                {"name": L.PORT_NAME_RENDEZVOUS, "port": L.PORT_RENDEZVOUS, "targetPort": L.PORT_RENDEZVOUS},
                {
                    "name": L.PORT_NAME_METRICS,
                    "port": job.spec.metrics.port,
                    "targetPort": job.spec.metrics.port,
                },
            ],
        },
    }
