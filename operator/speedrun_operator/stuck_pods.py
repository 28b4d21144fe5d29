"""Pods of a failed attempt stuck Terminating on a lost node: force-deleted, so the restart goes on.

A gang restart deletes the failed attempt's training Job with Foreground propagation and creates
the next attempt's Job (same name) only once the old one is gone, that is once the kubelets have
confirmed every old pod stopped. A pod on a node whose kubelet is silent (powered off, kernel hang,
partitioned) is never confirmed: it stays Terminating, the Job stays, and the restart would hang
for good (jobset#576, kubeflow/trainer#2072; Kubernetes' own Job controller waits the same way
with podReplacementPolicy Failed).

The choice, as Kubernetes' non-graceful node shutdown and Kueue's pod failure recovery make it: a
pod of the old attempt is force-deleted (grace 0, precondition on its uid) when
- it is being deleted and is past its `deletionTimestamp` (which already includes its grace
  period) by `STUCK_MARGIN_SECONDS`, and
- its node is lost: the Node is gone, or it is not Ready and tainted `node.kubernetes.io/unreachable`
  (the node lifecycle controller's mark of a kubelet that stopped reporting) or
  `node.kubernetes.io/out-of-service` (an admin's word that the node is shut down).
A pod on a node whose kubelet still answers is never forced: it is stopping, and the restart
waits for it. Reading the Node needs `get` on nodes (the chart's `rbac.readNodes`); without it
nothing is forced and such a restart waits as before.

Why this never has two attempts training at once, although a partitioned node may still run the
forced pod's container: (1) the attempt failed because one of its pods failed (backoffLimit 0),
so its process group lacks a rank and none of its survivors can finish another collective, let
alone a step; they exit at the collective timeout (`runPolicy.collectiveTimeoutSeconds`); (2) each
attempt has its own rendezvous id (`--rdzv-id=<job uid>-<attempt>`, builders/train_job.py), so a
straggler agent of attempt N-1 that reaches attempt N's store (the same `<name>-train-0` address)
can never join its rendezvous; (3) the run's storage lease (trainer data/run_lease.py) passes to the
new rank 0. The new pods cannot land on the lost node either: its unreachable taint keeps them off.
When the node comes back, its kubelet finds the pod gone from the API and stops the container.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from speedrun_operator import kube

STUCK_MARGIN_SECONDS = 30  # past deletionTimestamp (= deletion + grace period): the kubelet had its chance
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StuckPod:
    name: str
    uid: str
    node: str
    why: str  # how the node is lost, for the Event

    def describe(self) -> str:
        return f"{self.name} on node {self.node} ({self.why})"


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def overdue(pod: dict[str, Any], now: str, margin: float = STUCK_MARGIN_SECONDS) -> bool:
    """Deleted, and still here `margin` seconds after its grace period ended."""
    deleted = (pod.get("metadata") or {}).get("deletionTimestamp")
    return bool(deleted) and (_time(now) - _time(deleted)).total_seconds() >= margin


def node_lost(node: dict[str, Any] | None) -> str | None:
    """How a node is lost for good (no kubelet will confirm its pods stopped), or None when its
    kubelet may still answer."""
    if node is None:
        return "the Node is gone"
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), "Unknown")
    taints = {t.get("key") for t in (node.get("spec") or {}).get("taints") or []}
    if ready == "True":
        return None
    if TAINT_OUT_OF_SERVICE in taints:
        return f"out of service: tainted {TAINT_OUT_OF_SERVICE}"
    if TAINT_UNREACHABLE in taints:
        return f"unreachable: Ready {ready}, tainted {TAINT_UNREACHABLE}"
    return None


def owned_by(pod: dict[str, Any], owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])


def stuck(pods: list[dict[str, Any]], nodes: dict[str, dict[str, Any] | None], now: str) -> list[StuckPod]:
    """The pods to force-delete: overdue, on a lost node (`nodes`: name -> Node, None if gone)."""
    out = []
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or node not in nodes or not overdue(pod, now):
            continue
        why = node_lost(nodes[node])
        if why is not None:
            meta = pod["metadata"]
            out.append(StuckPod(meta["name"], meta["uid"], node, why))
    return out


def release(client: kube.KubeClient, job: dict[str, Any], pods: list[dict[str, Any]], now: str) -> list[StuckPod]:
    """Force-delete the pods of `job` (a failed attempt's Job being deleted) stuck on lost nodes;
    returns those deleted. `pods` may hold other attempts' pods: only `job`'s are considered."""
    mine = [p for p in pods if owned_by(p, job["metadata"]["uid"]) and overdue(p, now)]
    nodes: dict[str, dict[str, Any] | None] = {}
    for name in {(p.get("spec") or {}).get("nodeName") for p in mine} - {None, ""}:
        try:
            nodes[name] = client.get(kube.NODE, None, name)
        except kube.KubeError as err:  # 403 without rbac.readNodes: nothing is forced, the restart waits
            log.warning("cannot read node %s (%s): pods stuck Terminating there are left alone", name, err)
    found = stuck(mine, nodes, now)
    deleted = []
    for pod in found:
        try:
            client.delete(kube.POD, job["metadata"]["namespace"], pod.name, grace_seconds=0, uid=pod.uid)
        except kube.Conflict:  # another pod of that name now: not the one found stuck
            continue
        deleted.append(pod)
    return deleted
