"""Kueue's queue objects as a cluster administrator makes them, and what the Kueue tests read back.

    make(cp, resource_flavor("plain"), cluster_queue("cq", "plain", {"cpu": 0, "memory": "0"}),
         local_queue("gpu-queue", "ns", "cq"))
    set_quota(cp, "cq", "plain", {"cpu": 4, "memory": "8Gi"})
    workload_of(cp, job)      # the Workload Kueue made for a Job (label kueue.x-k8s.io/job-uid)

All in Kueue's storage version, `kueue.x-k8s.io/v1beta2`. The cluster-scoped objects go with
Kueue's CRDs when its fixture ends (kueue.py); each test module uses names of its own.
"""

from __future__ import annotations

import json
from typing import Any

from tests.cluster.api import ApiError
from tests.cluster.control_plane import ControlPlane

API = "kueue.x-k8s.io/v1beta2"
KUEUE = f"/apis/{API}"
COLLECTIONS = {
    "ResourceFlavor": "resourceflavors",
    "ClusterQueue": "clusterqueues",
    "LocalQueue": "localqueues",
    "Topology": "topologies",
}
LABEL_JOB_UID = "kueue.x-k8s.io/job-uid"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
TOPOLOGY_GATE = "kueue.x-k8s.io/topology"  # the scheduling gate TAS puts on a pod set's pods


def resource_flavor(name: str, node_labels: dict[str, str] | None = None, topology: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeLabels": node_labels} if node_labels else {}
    if topology:
        spec["topologyName"] = topology
    return {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec}


def topology(name: str, levels: list[str]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Topology", "metadata": {"name": name},
            "spec": {"levels": [{"nodeLabel": level} for level in levels]}}  # fmt: skip


def _resources(quota: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "nominalQuota": amount} for name, amount in quota.items()]


def cluster_queue(name: str, flavor: str, quota: dict[str, Any]) -> dict[str, Any]:
    """A ClusterQueue of one flavor for every namespace, `quota` {resource: nominal quota}."""
    group = {"coveredResources": list(quota), "flavors": [{"name": flavor, "resources": _resources(quota)}]}
    return {"apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": name},
            "spec": {"namespaceSelector": {}, "resourceGroups": [group]}}  # fmt: skip


def local_queue(name: str, namespace: str, cluster_queue_name: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "LocalQueue", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue_name}}  # fmt: skip


def path_of(obj: dict[str, Any]) -> str:
    meta, plural = obj["metadata"], COLLECTIONS[obj["kind"]]
    return f"{KUEUE}/namespaces/{meta['namespace']}/{plural}" if meta.get("namespace") else f"{KUEUE}/{plural}"


def make(cp: ControlPlane, *objects: dict[str, Any]) -> None:
    for obj in objects:
        cp.admin.create(path_of(obj), obj)


def delete(cp: ControlPlane, *objects: dict[str, Any]) -> None:
    """Delete (in the order given: queues before their flavors) while Kueue runs, which removes its
    finalizers; deletion is not waited for."""
    for obj in objects:
        cp.admin.delete(f"{path_of(obj)}/{obj['metadata']['name']}")


def set_quota(cp: ControlPlane, name: str, flavor: str, quota: dict[str, Any]) -> None:
    """The ClusterQueue's one resource group, its flavor's nominal quota replaced."""
    group = {"coveredResources": list(quota), "flavors": [{"name": flavor, "resources": _resources(quota)}]}
    cp.admin.patch(f"{KUEUE}/clusterqueues/{name}", {"spec": {"resourceGroups": [group]}})


def workload_of(cp: ControlPlane, job: dict[str, Any]) -> dict[str, Any] | None:
    """The Workload Kueue's job reconciler made for `job` (its name is Kueue's own hash)."""
    meta = job["metadata"]
    path = f"{KUEUE}/namespaces/{meta['namespace']}/workloads"
    try:
        found = cp.admin.list(path, labels=f"{LABEL_JOB_UID}={meta['uid']}")
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return found[0] if found else None


def condition(workload: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    found = [c for c in ((workload or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_]
    return found[0] if found else {}


def is_true(workload: dict[str, Any] | None, type_: str) -> bool:
    return condition(workload, type_).get("status") == "True"


def job_writes(cp: ControlPlane, namespace: str, job: str) -> list[tuple[str, str, str]]:
    """(user, verb, subresource) of each update or patch of the Job the apiserver completed
    (its audit log, tests/cluster/control_plane.py), in order."""
    writes = []
    for line in cp.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (event.get("stage") == "ResponseComplete" and event.get("verb") in ("update", "patch")
                and ref.get("resource") == "jobs" and ref.get("namespace") == namespace and ref.get("name") == job
                and (event.get("responseStatus") or {}).get("code", 0) < 300):  # fmt: skip
            writes.append((event["user"]["username"], event["verb"], ref.get("subresource", "")))
    return writes


def mutating_webhooks_at_create(cp: ControlPlane, namespace: str, job: str) -> set[str]:
    """The mutating webhooks the apiserver called when the Job was created (the audit log's
    `mutation.webhook.admission.k8s.io/round_<r>_index_<i>` annotations)."""
    called = set()
    for line in cp.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (event.get("stage") == "ResponseComplete" and event.get("verb") == "create" and ref.get("resource") == "jobs"
                and ref.get("namespace") == namespace and (ref.get("name") == job or not ref.get("name"))):  # fmt: skip
            for key, value in (event.get("annotations") or {}).items():
                if key.startswith("mutation.webhook.admission.k8s.io/"):
                    called.add(json.loads(value)["webhook"])
    return called
