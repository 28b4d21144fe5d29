"""Pure builders: a parsed `SpeedrunJob` + `OperatorSettings` -> the child manifests (dicts).

No API calls and no ownerReferences (the handlers add those with `kopf.append_owner_reference`),
so `speedrun render` prints exactly what the operator would create.
"""

from __future__ import annotations

from typing import Any

from speedrun_api.spec import SpeedrunJob
from speedrun_operator.builders.common import BuildError, check_runnable, storage_uri
from speedrun_operator.builders.eval_job import build_eval_job, torchrun_eval_command
from speedrun_operator.builders.run_config import build_run_configmap
from speedrun_operator.builders.service import build_headless_service
from speedrun_operator.builders.train_job import build_train_job, torchrun_train_command
from speedrun_operator.settings import OperatorSettings

__all__ = [
    "BuildError",
    "build_all",
    "build_eval_job",
    "build_headless_service",
    "build_run_configmap",
    "build_train_job",
    "check_runnable",
    "storage_uri",
    "torchrun_eval_command",
    "torchrun_train_command",
]


def build_all(job: SpeedrunJob, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Every child in creation order: ConfigMap, Service, training Job, then the eval Job (the
    training pods name a PodGroup where the settings name the gang; `auto` asks the cluster)."""
    gang = settings.gang_scheduling if settings.gang_scheduling in ("kubernetes", "coscheduling") else "none"
    return [
        build_run_configmap(job),
        build_headless_service(job),
        build_train_job(job, settings, gang=gang),  # type: ignore[arg-type]
        build_eval_job(job, settings),
    ]
