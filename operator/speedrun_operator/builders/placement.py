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

Topology (`spec.resources.placement`), on top of the gang:
- the attempt's pods share one domain of the node label `topologyKey` (a rack, an NVLink or
  network block, a zone): a pod affinity to the attempt's own training pods, required (the pods
  wait for a domain with room) or preferred. The scheduler lets the first pod go anywhere (no pod
  matches yet, and it matches its own term); the others follow it.
- `exclusive`: no pod of another SpeedrunJob in that domain, as JobSet's exclusive placement does
  it: a required anti-affinity to every pod that carries `speedrun.dev/job` but is not this job's
  (two terms: other namespaces, and this one with another name). Anti-affinity holds both ways, so
  another run's pods stay out of the domain too, exclusive or not; pods of anything else do not.
- with Kueue (`runPolicy.queueName`), Kueue places the pods: its topology-aware scheduling reads the
  pod set's annotation (`kueue.x-k8s.io/podset-required-topology` or `-preferred-topology`), picks
  domains with room at admission and ungates the pods with those domains' node selectors
  (tests/cluster/test_kueue_tas.py checks the domain it picks). The pod affinity is left out
  then: Kueue's choice is the one that counts. The cluster's ResourceFlavor must name a Topology
  whose levels include `topologyKey` (docs/operator.md "Topology").
Ranks follow completion indices whatever the placement (the trainer's train/rank_order.py), so an
index order that follows the topology is the ranks' order too.
"""

from __future__ import annotations

from typing import Any, Literal

from speedrun_api.spec import SpeedrunJob
from speedrun_operator import labels as L
from speedrun_operator.builders.pod_overrides import merge_affinity

GangMode = Literal["kubernetes", "coscheduling", "none"]

KUBERNETES_API = "scheduling.k8s.io/v1alpha2"
COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
LABEL_COSCHEDULING_GROUP = "scheduling.x-k8s.io/pod-group"
# Kueue's topology-aware scheduling: the pod set's topology request (pkg/controller/tas, Kueue v0.9+).
KUEUE_REQUIRED_TOPOLOGY = "kueue.x-k8s.io/podset-required-topology"
KUEUE_PREFERRED_TOPOLOGY = "kueue.x-k8s.io/podset-preferred-topology"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # every Namespace carries its name (Kubernetes 1.22+)


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


def topology_affinity(job: SpeedrunJob, attempt: int) -> dict[str, Any]:
    """The training pods' affinity for `spec.resources.placement` (empty without it); no pod
    affinity for a queued job, whose domain Kueue chooses (`topology_annotations`)."""
    place, name = job.spec.resources.placement, job.metadata.name
    if place is None:
        return {}
    out: dict[str, Any] = {}
    if not job.spec.run_policy.queue_name:
        own = {L.LABEL_JOB: name, L.LABEL_ROLE: L.ROLE_TRAIN, L.LABEL_ATTEMPT: str(attempt)}
        term = {"labelSelector": {"matchLabels": own}, "topologyKey": place.topology_key}
        if place.mode == "required":
            out["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
        else:
            out["podAffinity"] = {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
            }
    if place.exclusive:
        namespace = job.metadata.namespace or "default"
        runs = {"key": L.LABEL_JOB, "operator": "Exists"}
        elsewhere = {
            "labelSelector": {"matchExpressions": [runs]},
            "namespaceSelector": {
                "matchExpressions": [{"key": NAMESPACE_LABEL, "operator": "NotIn", "values": [namespace]}]
            },
            "topologyKey": place.topology_key,
        }
        here = {
            "labelSelector": {"matchExpressions": [runs, {"key": L.LABEL_JOB, "operator": "NotIn", "values": [name]}]},
            "topologyKey": place.topology_key,
        }
        out["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [elsewhere, here]}
    return out


def topology_annotations(job: SpeedrunJob) -> dict[str, str]:
    """Kueue's topology request for a queued job's pod set (empty when not queued or not placed)."""
    place = job.spec.resources.placement
    if place is None or not job.spec.run_policy.queue_name:
        return {}
    key = KUEUE_REQUIRED_TOPOLOGY if place.mode == "required" else KUEUE_PREFERRED_TOPOLOGY
    return {key: place.topology_key}


def apply_topology(template: dict[str, Any], job: SpeedrunJob, attempt: int) -> None:
    """`spec.resources.placement` in a training pod template: affinity merged with the template's
    own, Kueue's annotation added."""
    affinity = topology_affinity(job, attempt)
    if affinity:
        pod = template["spec"]
        pod["affinity"] = merge_affinity(pod.get("affinity") or {}, affinity)
    annotations = topology_annotations(job)
    if annotations:
        template["metadata"].setdefault("annotations", {}).update(annotations)
