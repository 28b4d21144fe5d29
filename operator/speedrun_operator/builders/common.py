"""Pieces every pod the operator creates shares: security, volumes, env, resources, scheduling.

Pure functions of the parsed `SpeedrunJob` and `OperatorSettings`; no API calls. The training
and eval builders compose them, so both pods run the same hardened way: non-root, read-only
root filesystem (writable emptyDirs for /tmp, the shard cache and /dev/shm), no privilege
escalation, no service-account token, credentials only through `secretKeyRef`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from speedrun_api.accelerator_labels import device_resource, node_labels
from speedrun_api.accelerators import GOOGLE_TPU, NVIDIA_GPU
from speedrun_api.crd import cluster_problems
from speedrun_api.manifest import EXIT_INVALID
from speedrun_api.run_contract import ENV_CACHE_DIR, ENV_JOB_NAME, ENV_RUN_ID, ENV_STORAGE_URI, resolve_storage_uri
from speedrun_api.run_env import merged_env
from speedrun_api.spec import SpeedrunJob, train_backend
from speedrun_api.tpu import devices_per_node, is_tpu
from speedrun_operator import labels as L
from speedrun_operator.builders.shard_cache import cache_size_limit
from speedrun_operator.settings import OperatorSettings, env_name

CACHE_DIR = "/var/cache/speedrun"
# The keys of spec.storage.secretRef and spec.tracking.wandb.secretRef (docs/contracts.md).
STORAGE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
WANDB_SECRET_KEY = "WANDB_API_KEY"

ACCELERATOR_TAINTS = (GOOGLE_TPU, NVIDIA_GPU)  # the taint keys GKE puts on accelerator node pools


class BuildError(ValueError):
    """The spec is valid for `speedrun run` but cannot run in a cluster; one line, field first."""


def job_uid(job: SpeedrunJob) -> str:
    """The SpeedrunJob's uid (the torchrun rendezvous id); its name when rendering offline."""
    extra = job.metadata.model_extra or {}
    return str(extra.get("uid") or job.metadata.name)


@dataclass(frozen=True)
class Storage:
    """Where a job's checkpoints and results go and how its pods reach them."""

    uri: str | None
    endpoint_url: str | None = None
    secret: str | None = None  # a Secret in the job's namespace holding STORAGE_SECRET_KEYS


def storage(job: SpeedrunJob, settings: OperatorSettings) -> Storage:
    """spec.storage when it names a URI, as a whole; else `<default prefix>/<namespace>/<name>` with
    the operator's default endpoint and Secret (a job's own endpointUrl or secretRef replaces that
    one); else no URI (a cluster run cannot run without storage).

    The defaults never go with a URI the job names: the default store's credentials stay with it."""
    own = job.spec.storage
    secret = own.secret_ref.name if own.secret_ref is not None else None
    if own.uri or not settings.default_storage_uri:
        return Storage(resolve_storage_uri(job, default=None), own.endpoint_url, secret)
    namespace = job.metadata.namespace or "default"
    default = f"{settings.default_storage_uri.rstrip('/')}/{namespace}/{job.metadata.name}"
    return Storage(
        resolve_storage_uri(job, default=default),
        own.endpoint_url or settings.default_storage_endpoint_url or None,
        secret or settings.default_storage_secret or None,
    )


def storage_uri(job: SpeedrunJob, settings: OperatorSettings) -> str | None:
    """Where checkpoints and results go (`storage(...).uri`)."""
    return storage(job, settings).uri


def check_runnable(job: SpeedrunJob, settings: OperatorSettings) -> None:
    """What a cluster needs beyond the spec's own rules; raises `BuildError`."""
    if storage_uri(job, settings) is None:
        raise BuildError(
            "spec.storage.uri: required in a cluster, where the training and eval pods share checkpoints "
            f"through it (or start the operator with {env_name('default_storage_uri')})"
        )
    problems = cluster_problems(job.spec)  # the CRD's cluster-only rules, for a CRD installed before them
    if problems:
        raise BuildError("; ".join(problems))
    backend, accelerator = train_backend(job.spec), job.spec.resources.accelerator
    if backend == "jax" and not is_tpu(accelerator):  # no builder sets the JAX join env off a TPU slice yet
        raise BuildError(
            f"spec.train.backend: jax runs in a cluster only on TPU slices (GKE joins the processes), not on"
            f" {accelerator}; use torch here, or `speedrun run` for jax on one machine"
        )
    if backend != "jax" and is_tpu(accelerator):
        raise BuildError(f"spec.train.backend: {backend} cannot train on {accelerator}; TPU slices train with jax")


def image(job: SpeedrunJob, settings: OperatorSettings, accelerator: bool = True) -> str:
    """spec.image, else the TPU trainer image for a TPU run's accelerator pods, else the trainer's."""
    if job.spec.image:
        return job.spec.image
    return (
        settings.tpu_trainer_image if accelerator and is_tpu(job.spec.resources.accelerator) else settings.trainer_image
    )


def pod_security_context(settings: OperatorSettings) -> dict[str, Any]:
    uid = settings.run_as_user
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def volumes(job_name: str, cache_size: str | None = None) -> list[dict[str, Any]]:
    """`cache_size`: the shard cache's sizeLimit (shard_cache.py), so the data cannot fill the node."""
    return [
        {"name": "config", "configMap": {"name": L.configmap_name(job_name)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # NCCL and DataLoader shared memory
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {"sizeLimit": cache_size} if cache_size else {}},
    ]


def volume_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "config", "mountPath": L.CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]


# torchrun, keeping the trainer's "invalid config" exit code (plain torchrun exits 1 for any
# worker failure, so a podFailurePolicy on exit code 2 could never match).
TORCHRUN = ["python", "-m", "speedrun_trainer.train.torchrun"]


def env(job: SpeedrunJob, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Environment of the trainer and evaluator (docs/contracts.md); secrets only by reference."""
    out: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},  # read-only root: torch.compile and friends cache under HOME
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": ENV_CACHE_DIR, "value": CACHE_DIR},
        {"name": ENV_JOB_NAME, "value": job.metadata.name},
        # The run's writer (train rank 0, then the eval) holds a lease on its storage; a new pod of
        # this SpeedrunJob takes over the lease of a pod it replaces at once (data/run_lease.py).
        {"name": ENV_RUN_ID, "value": job_uid(job)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # A replaced pod other than index 0 would otherwise wait forever for the surviving rank 0
        # to publish its store address again: https://github.com/pytorch/pytorch/issues/135712
        {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"},
    ]
    where = storage(job, settings)
    if where.uri is not None:
        out.append({"name": ENV_STORAGE_URI, "value": where.uri})
    if where.endpoint_url:
        out.append({"name": "AWS_ENDPOINT_URL", "value": where.endpoint_url})
    if where.secret is not None:
        out += [_secret_env(key, where.secret, key) for key in STORAGE_SECRET_KEYS]
    wandb = job.spec.tracking.wandb
    out.append({"name": "WANDB_MODE", "value": wandb.mode})
    if wandb.secret_ref is not None:
        out.append(_secret_env(WANDB_SECRET_KEY, wandb.secret_ref.name, WANDB_SECRET_KEY))
    # The user's own, last: the chart's `trainer.env` under `spec.env`. Neither may name a variable
    # set above (api run_env.py refuses those names), so the order decides nothing.
    user = merged_env(settings.trainer_env_vars(), job.spec.env)
    out += [{"name": name, "value": value} for name, value in user.items()]
    return out


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def resources(job: SpeedrunJob, extra: bool = False, accelerator: bool = True) -> dict[str, Any]:
    """Requests/limits of one node's pod: `procsPerNode` accelerators (a TPU host's chips), plus cpu
    and memory; with `extra` (the training pods) also `resources.extraResources` (RDMA NICs: the
    eval pod talks to no other node, so it takes none of a node's few). Without `accelerator` (a
    TPU run's eval pod, builders/tpu.py) no accelerator at all."""
    r = job.spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if r.cpu:
        requests["cpu"] = r.cpu
    if r.memory:
        requests["memory"] = r.memory
        limits["memory"] = r.memory
    device = device_resource(r.accelerator)  # a GPU the table lacks: nvidia.com/gpu
    if accelerator and device is not None:
        # Extended resources cannot be overcommitted: request == limit.
        requests[device] = limits[device] = str(devices_per_node(r))
    if extra:
        for name, count in r.extra_resources.items():
            requests[name] = limits[name] = str(count)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def node_selector(job: SpeedrunJob, settings: OperatorSettings, accelerator: bool = True) -> dict[str, str]:
    """The accelerator's node labels in the cluster's profile (settings.accelerator_labels), the
    TPU topology, then the spec's own."""
    r = job.spec.resources
    out: dict[str, str] = node_labels(r.accelerator, settings.accelerator_labels) if accelerator else {}
    if accelerator and is_tpu(r.accelerator) and r.topology:
        out[L.LABEL_GKE_TPU_TOPOLOGY] = r.topology
    out.update(r.node_selector)  # the user's word wins
    return out


def tolerations(job: SpeedrunJob, accelerator: bool = True) -> list[dict[str, Any]]:
    """The spec's tolerations; a pod that asks for no accelerator (a TPU run's CPU evaluation) drops
    those of the accelerator taints (`google.com/tpu`, `nvidia.com/gpu`, GKE's), which only keep
    other pods off the slice's hosts: it would otherwise take a TPU host's CPU and pull the trainer
    image there."""
    out = [t.model_dump(by_alias=True, exclude_none=True) for t in job.spec.resources.tolerations]
    return out if accelerator else [t for t in out if t.get("key") not in ACCELERATOR_TAINTS]


def pod_spec(
    job: SpeedrunJob, settings: OperatorSettings, container: dict[str, Any], accelerator: bool = True
) -> dict[str, Any]:
    """The pod spec around one container: scheduling (`accelerator`: on the accelerator's nodes),
    security, volumes."""
    r = job.spec.resources
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy needs it; torchrun restarts workers in-pod
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings),
        "containers": [container],
        "volumes": volumes(job.metadata.name, cache_size_limit(job)),
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    selector = node_selector(job, settings, accelerator)
    if selector:
        spec["nodeSelector"] = selector
    kept = tolerations(job, accelerator)
    if kept:
        spec["tolerations"] = kept
    if r.priority_class_name:
        spec["priorityClassName"] = r.priority_class_name
    return spec


def container(
    job: SpeedrunJob,
    settings: OperatorSettings,
    name: str,
    command: list[str],
    ports: list[dict[str, Any]],
    extra_resources: bool = False,
    accelerator: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "image": image(job, settings, accelerator),
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": env(job, settings),
        "volumeMounts": volume_mounts(),
        "securityContext": container_security_context(),
        # On failure the log tail becomes the termination message: the operator shows its last line.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if ports:
        out["ports"] = ports
    res = resources(job, extra=extra_resources, accelerator=accelerator)
    if res:
        out["resources"] = res
    return out


def metadata(job: SpeedrunJob, name: str, role: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**L.child_labels(job.metadata.name, role), **(extra_labels or {})},
    }
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    return meta


def starts_suspended(job: SpeedrunJob) -> bool:
    """Both Jobs start suspended when the run is, and when it is queued: Kueue admits a queued Job
    by unsuspending it."""
    policy = job.spec.run_policy
    return bool(policy.suspend or policy.queue_name)


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


def batch_job(
    job: SpeedrunJob,
    name: str,
    role: str,
    labels: dict[str, str],
    pod: dict[str, Any],
    counts: dict[str, Any],
) -> dict[str, Any]:
    """A batch/v1 Job of `role` running `pod` (one container): `counts` (completions, parallelism,
    backoffLimit, ...), then the failure policy and the suspend rule every Job of a run shares."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(job, name, role, labels),
        "spec": {
            **counts,
            "podFailurePolicy": pod_failure_policy(pod["containers"][0]["name"]),
            "suspend": starts_suspended(job),
            "template": {"metadata": {"labels": {**L.child_labels(job.metadata.name, role), **labels}}, "spec": pod},
        },
    }


def queue_labels(job: SpeedrunJob) -> dict[str, str]:
    q = job.spec.run_policy.queue_name
    return {L.LABEL_KUEUE_QUEUE: q} if q else {}
