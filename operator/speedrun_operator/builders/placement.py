"""Gang placement of the training pods: all of an attempt's pods are bound together, or none is.

Without it the scheduler binds each pod on its own: on a cluster with room for one node's pod of
two, rank 0 starts, waits for the other in the rendezvous, and holds its node (and GPUs) for
nothing. A gang is a PodGroup the pods name; which one depends on what the cluster serves
(the operator's `gang.py` asks discovery, or the chart value `operator.gangScheduling` says):

- `kubernetes`: Kubernetes' own gang scheduling (KEP-4671, alpha since 1.35; the API group
  `scheduling.k8s.io/v1alpha2` from 1.36): a PodGroup with `schedulingPolicy.gang.minCount`, named
  by each pod's `spec.schedulingGroup.podGroupName`. The scheduler's GangScheduling plugin keeps
  the pods out of its queue until `minCount` of them exist and binds none until `minCount` fit.
- `coscheduling`: the scheduler-plugins Coscheduling plugin: a `scheduling.x-k8s.io/v1alpha1`
  PodGroup with `minMember`, named by the pod label `scheduling.x-k8s.io/pod-group`.
- `none`: no gang (Kueue's `waitForPodsReady` is the gang of a queued job's admission).

minCount is the job's minimum node count (`resources.nodes`, or `minNodes` of an elastic job): an
elastic job starts with its minimum, and later pods join as they fit. Each training attempt has
its own PodGroup (`<name>-train-<attempt>`), owned by that attempt's Job, so it goes with the
Job at a gang restart and the next attempt never waits on a group still being deleted.
"""

from __future__ import annotations

from typing import Any, Literal

from speedrun_api.spec import SpeedrunJob
from speedrun_operator import labels as L

GangMode = Literal["kubernetes", "coscheduling", "none"]

KUBERNETES_API = "scheduling.k8s.io/v1alpha2"
COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
LABEL_COSCHEDULING_GROUP = "scheduling.x-k8s.io/pod-group"


def pod_group_name(job_name: str, attempt: int) -> str:
    return f"{L.train_job_name(job_name)}-{attempt}"


def min_count(job: SpeedrunJob) -> int:
    lo, _ = job.spec.resources.node_range
    return lo


def wants_gang(job: SpeedrunJob) -> bool:
    """A gang of one is no gang: single-node jobs get no PodGroup."""
    _, hi = job.spec.resources.node_range
    return hi > 1


def apply_gang(template: dict[str, Any], mode: GangMode, group: str) -> None:
    """Name the PodGroup `group` in a pod template, the way `mode`'s scheduler reads it."""
    if mode == "kubernetes":
        template["spec"]["schedulingGroup"] = {"podGroupName": group}
    elif mode == "coscheduling":
        template["metadata"].setdefault("labels", {})[LABEL_COSCHEDULING_GROUP] = group


def named_gang(template: dict[str, Any]) -> GangMode:
    """The gang a (Job's) pod template joins, as `apply_gang` wrote it."""
    if (template.get("spec") or {}).get("schedulingGroup"):
        return "kubernetes"
    if LABEL_COSCHEDULING_GROUP in ((template.get("metadata") or {}).get("labels") or {}):
        return "coscheduling"
    return "none"


def build_pod_group(job: SpeedrunJob, mode: GangMode, attempt: int) -> dict[str, Any] | None:
    """The PodGroup of training attempt `attempt`; None without a gang."""
    if mode == "none" or not wants_gang(job):
        return None
    name = job.metadata.name
    meta: dict[str, Any] = {
        "name": pod_group_name(name, attempt),
        "labels": {**L.child_labels(name, L.ROLE_TRAIN), L.LABEL_ATTEMPT: str(attempt)},
    }
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    if mode == "kubernetes":
        spec: dict[str, Any] = {"schedulingPolicy": {"gang": {"minCount": min_count(job)}}}
        return {"apiVersion": KUBERNETES_API, "kind": "PodGroup", "metadata": meta, "spec": spec}
    return {"apiVersion": COSCHEDULING_API, "kind": "PodGroup", "metadata": meta, "spec": {"minMember": min_count(job)}}
