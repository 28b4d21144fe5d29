"""The Indexed training Job `<name>-train`: one pod per node, torchrun with c10d rendezvous.

completions = parallelism = nodes (the maximum for elastic jobs), so pod `i` is hostname
`<name>-train-i` and rank 0's agent hosts the rendezvous at `<name>-train-0.<name>:29400`.
Failure policy: the trainer's invalid-config exit code (2) fails the Job at once; any other pod
failure is retried up to `runPolicy.maxRestarts` times (the Job's backoffLimit), while torchrun
restarts workers inside a pod up to the same count (`--max-restarts`).
"""

from __future__ import annotations

from typing import Any

from speedrun_api.manifest import EXIT_INVALID
from speedrun_api.spec import SpeedrunJob
from speedrun_operator import labels as L
from speedrun_operator.builders import common
from speedrun_operator.settings import OperatorSettings

TRAIN_MODULE = "speedrun_trainer.train"


def torchrun_train_command(job: SpeedrunJob) -> list[str]:
    """`python -m speedrun_trainer.train.torchrun --nnodes=N|MIN:MAX ... -m speedrun_trainer.train --config ...`.

    `speedrun_trainer.train.torchrun` takes torchrun's arguments and keeps exit code 2 (invalid config).
    """
    r, name = job.spec.resources, job.metadata.name
    lo, hi = r.node_range
    return [
        *common.TORCHRUN,
        f"--nnodes={lo}:{hi}" if r.elastic else f"--nnodes={hi}",
        f"--nproc-per-node={r.procs_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={L.rendezvous_endpoint(name)}",
        f"--rdzv-id={common.job_uid(job)}",
        f"--max-restarts={job.spec.run_policy.max_restarts}",
        "-m",
        TRAIN_MODULE,
        "--config",
        L.CONFIG_PATH,
    ]


def pod_failure_policy(container_name: str) -> dict[str, Any]:
    """Exit code 2 (invalid config) is final; evictions and preemptions do not count as failures."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": container_name, "operator": "In", "values": [EXIT_INVALID]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_train_job(job: SpeedrunJob, settings: OperatorSettings) -> dict[str, Any]:
    name, r, policy = job.metadata.name, job.spec.resources, job.spec.run_policy
    _, nodes = r.node_range
    ports = [
        {"name": L.PORT_NAME_RENDEZVOUS, "containerPort": L.PORT_RENDEZVOUS},
        {"name": L.PORT_NAME_METRICS, "containerPort": job.spec.metrics.port},
    ]
    container = common.container(job, settings, L.CONTAINER_TRAINER, torchrun_train_command(job), ports)
    pod = common.pod_spec(job, settings, container)
    pod["subdomain"] = L.service_name(name)
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": policy.max_restarts,
        "podFailurePolicy": pod_failure_policy(L.CONTAINER_TRAINER),
        # Kueue admits a queued Job by unsuspending it, so queued Jobs start suspended.
        "suspend": bool(policy.suspend or policy.queue_name),
        "template": {
            "metadata": {"labels": {**L.child_labels(name, L.ROLE_TRAIN), **common.queue_labels(job)}},
            "spec": pod,
        },
    }
    if r.elastic:
        # An elastic run may finish before late pods ever start: rank 0's success is the run's.
        spec["successPolicy"] = {"rules": [{"succeededIndexes": "0"}]}
    if policy.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": common.metadata(job, L.train_job_name(name), L.ROLE_TRAIN, common.queue_labels(job)),
        "spec": spec,
    }
