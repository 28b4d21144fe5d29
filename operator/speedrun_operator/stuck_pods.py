"""Pods on a lost node: the running attempt's are failed at once, a replaced attempt's force-deleted.

A node is lost when no kubelet will confirm anything there again (`node_lost`): its Node is gone,
or it is not Ready and tainted `node.kubernetes.io/unreachable` (the node lifecycle controller's
mark of a kubelet that stopped reporting) or `node.kubernetes.io/out-of-service` (an admin's word
that it is shut down).

A running attempt with a pod there is failed by marking that pod Failed (`fail_lost`): the Job
controller then stops the surviving ranks within seconds, instead of their waiting in a
collective until the process group's timeout. As after any failure, the gang restart then deletes
the attempt's training Job with Foreground propagation and creates the next attempt's Job (same
name) once the old one is gone, that is once the kubelets have confirmed every old pod stopped. A
pod on a lost node is never confirmed: it stays Terminating, the Job stays, and the restart would
hang for good (jobset#576, kubeflow/trainer#2072; the Job controller itself waits the same way
with podReplacementPolicy Failed). So, as Kubernetes' non-graceful node shutdown and Kueue's pod
failure recovery do, a pod of the replaced attempt is force-deleted (`release`: grace 0, on its
uid) once it is `STUCK_MARGIN_SECONDS` past its `deletionTimestamp` (which already includes its
grace period) and its node is lost. A pod whose kubelet still answers is never forced: it is
stopping, and the restart waits for it. Reading Nodes needs `get` on them (the chart's
`rbac.readNodes`); without it nothing is failed or forced, and such a restart waits as before.

Why two attempts never train at once, although a partitioned node may still run the forced pod's
container: (1) the attempt failed because one of its pods failed (backoffLimit 0), so its process
group lacks a rank and no survivor can finish another collective, let alone a step (the Job
controller stops those it reaches; the others end at the process group's timeout); (2) each
attempt has its own rendezvous id (`--rdzv-id=<job uid>-<attempt>`, builders/train_job.py), so a
straggler agent of attempt N-1 that reaches attempt N's store (the same `<name>-train-0` address)
can never join its rendezvous; (3) the run's storage lease (trainer data/run_lease.py) passes to
the new rank 0. No new pod lands on the lost node (its taints keep them off), and once the node is
back its kubelet finds the pod gone from the API and stops the container.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from speedrun_api.status import parse_rfc3339
from speedrun_operator import kube
from speedrun_operator.disruptions import NODE_LOST

STUCK_MARGIN_SECONDS = 30  # past deletionTimestamp (= deletion + grace period): the kubelet had its chance
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
REASON_NODE_LOST = NODE_LOST  # status.reason of a running pod the operator marks Failed (disruptions.py reads it)

# fail_lost's Node reads are reused this long: while a restart's pods start (not Ready, pulling
# images) every pass of the job looks at their nodes, and a 64-node attempt would GET 64 Nodes a
# pass. A lost node is then seen at most this much later. release() always reads afresh: what it
# decides (a force delete) must rest on the Node as it is now.
NODE_READ_TTL_SECONDS = 5.0
NODE_READS_MAX = 10_000  # forgotten all at once past this
_node_reads: dict[str, tuple[float, dict[str, Any] | None]] = {}
_node_reads_lock = threading.Lock()

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StuckPod:
    name: str
    uid: str
    node: str
    why: str  # how the node is lost, for the Event

    def describe(self) -> str:
        return f"{self.name} on node {self.node} ({self.why})"


def overdue(pod: dict[str, Any], now: str, margin: float = STUCK_MARGIN_SECONDS) -> bool:
    """Deleted, and still here `margin` seconds after its grace period ended."""
    deleted = (pod.get("metadata") or {}).get("deletionTimestamp")
    return bool(deleted) and (parse_rfc3339(now) - parse_rfc3339(deleted)).total_seconds() >= margin


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


def stuck(pods: list[dict[str, Any]], nodes: dict[str, dict[str, Any] | None], now: str | None) -> list[StuckPod]:
    """The pods on a lost node (`nodes`: name -> Node, None if gone), and with `now` overdue too."""
    out = []
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or node not in nodes or (now is not None and not overdue(pod, now)):
            continue
        why = node_lost(nodes[node])
        if why is not None:
            meta = pod["metadata"]
            out.append(StuckPod(meta["name"], meta["uid"], node, why))
    return out


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def fail_lost(client: kube.KubeClient, job: dict[str, Any], pods: list[dict[str, Any]]) -> list[StuckPod]:
    """Mark Failed the running attempt's pods on lost nodes; returns those marked.

    Nothing else ends them: the pod of a lost node stays Running in the API (until the taint
    eviction, 300 s later by default, deletes it, and then it stays Terminating), and its
    surviving ranks wait in their next collective until the process group's timeout. Marked
    Failed (status.phase, as the Pod GC does on out-of-service nodes and Kueue's failure recovery
    on unreachable ones), the pod fails the Job at once (backoffLimit 0): the Job controller stops
    the survivors, and the operator restarts the gang. Only pods not Ready are looked at (the node
    lifecycle controller marks a lost node's pods not Ready), so a healthy run reads no Node."""
    suspects = [
        p
        for p in pods
        if owned_by(p, job["metadata"]["uid"])
        and not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") in ("Pending", "Running")
        and (p.get("spec") or {}).get("nodeName")
        and not ready(p)
    ]
    marked = []
    for pod in stuck(suspects, _read_nodes(client, suspects, NODE_READ_TTL_SECONDS), None):
        message = f"node {pod.node} is lost ({pod.why}): failed by the speedrun operator so the gang restarts"
        status = {"phase": "Failed", "reason": REASON_NODE_LOST, "message": message}
        try:
            client.patch(kube.POD, job["metadata"]["namespace"], pod.name, {"status": status}, subresource="status")
        except kube.NotFound:
            continue
        marked.append(pod)
    return marked


def _read_nodes(
    client: kube.KubeClient, pods: list[dict[str, Any]], reuse_seconds: float = 0.0
) -> dict[str, dict[str, Any] | None]:
    """The Nodes of `pods` (None: gone); one not readable (403 without rbac.readNodes) is left out.
    With `reuse_seconds`, a Node read that recently (by any job's pass) is not read again."""
    nodes: dict[str, dict[str, Any] | None] = {}
    now = time.monotonic()
    for name in {(p.get("spec") or {}).get("nodeName") for p in pods} - {None, ""}:
        with _node_reads_lock:
            seen = _node_reads.get(name)
        if seen is not None and now - seen[0] < reuse_seconds:
            nodes[name] = seen[1]
            continue
        try:
            nodes[name] = client.get(kube.NODE, None, name)
        except kube.KubeError as err:
            log.warning("cannot read node %s (%s): its pods are left alone", name, err)
            continue
        with _node_reads_lock:
            if len(_node_reads) >= NODE_READS_MAX:
                _node_reads.clear()
            _node_reads[name] = (now, nodes[name])
    return nodes


def forget_nodes() -> None:
    """Read every Node afresh next time (tests)."""
    with _node_reads_lock:
        _node_reads.clear()


def release(client: kube.KubeClient, job: dict[str, Any], pods: list[dict[str, Any]], now: str) -> list[StuckPod]:
    """Force-delete the pods of `job` (a failed attempt's Job being deleted) stuck on lost nodes;
    returns those deleted. `pods` may hold other attempts' pods: only `job`'s are considered."""
    mine = [p for p in pods if owned_by(p, job["metadata"]["uid"]) and overdue(p, now)]
    found = stuck(mine, _read_nodes(client, mine), now)
    deleted = []
    for pod in found:
        try:
            client.delete(kube.POD, job["metadata"]["namespace"], pod.name, grace_seconds=0, uid=pod.uid)
        except kube.Conflict:  # another pod of that name now: not the one found stuck
            continue
        deleted.append(pod)
    return deleted
