"""The ConfigMap `<name>-run`: the resolved manifest the trainer and evaluator read.

Its key `run.json` is `speedrun_api.manifest.dumps_job(job)` (docs/contracts.md), mounted
read-only at /etc/speedrun/run.json in every pod.
"""

from __future__ import annotations

from typing import Any

from speedrun_api.manifest import dumps_job
from speedrun_api.spec import SpeedrunJob
from speedrun_operator import labels as L
from speedrun_operator.builders import common


def build_run_configmap(job: SpeedrunJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": common.metadata(job, L.configmap_name(job.metadata.name), L.ROLE_CONFIG),
        "data": {L.CONFIG_KEY: _config_json(job)},
    }


def _config_json(job: SpeedrunJob) -> str:
    # The server-side bookkeeping (uid, resourceVersion, managedFields, kopf's annotations) says
    # nothing to the trainer and would make the config differ from `speedrun run`'s.
    meta = {"name": job.metadata.name}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    clean = job.model_copy(update={"metadata": job.metadata.__class__(**meta)})
    return dumps_job(clean)
