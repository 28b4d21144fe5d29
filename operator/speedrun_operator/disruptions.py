"""Disruptions: a training pod preempted, evicted or lost with its node, not failed by the job itself.

Kubernetes marks such a pod with the condition `DisruptionTarget=True` before it deletes it
(since 1.26, pkg/apis/core/types.go `DisruptionTarget`), with who did it as the reason:
`PreemptionByScheduler`, `EvictionByEvictionAPI` (kubectl drain, the cluster autoscaler's scale
down, a spot VM's termination handler), `DeletionByTaintManager` (its node NotReady or unreachable
past the pod's toleration), `DeletionByPodGC` (its node deleted) and `TerminationByKubelet` (node
pressure, graceful node shutdown). The training Job's podFailurePolicy fails the Job on such a pod
(`FailJob` on the condition, builders/train_job.py), and the Job controller names it in the
failure message: "Pod <ns>/<pod> has condition DisruptionTarget matching FailJob rule at index 1"
(pkg/controller/job/pod_failure_policy.go). That message is the lasting evidence: the pod itself
is usually gone by the time the operator reads the failed Job (the Job controller removes its
tracking finalizer in the same pass). So the operator also remembers the disrupted pods it sees
while the attempt runs short of pods (`Memo`: the pod's reason and node, kept in memory), and a
gone pod's node is read from its Events. When a surviving rank exits first (its peers vanished),
the Job fails with BackoffLimitExceeded instead, and the evidence is the disrupted pod, still
being deleted, or remembered; or a pod of the attempt that had not finished when the node
lifecycle controller posted `NodeNotReady` on it: its node stopped reporting (a node lost, a
kubelet down), so the survivors failed for want of it.

The operator restarts the gang after a disruption without counting it against
`runPolicy.maxRestarts` (lifecycle.py), and says which pod on which node and why. All pure
functions of the objects read; reconcile.py reads them.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

DISRUPTION_TARGET = "DisruptionTarget"
# pkg/controller/job/pod_failure_policy.go: the FailJob message of a rule on a pod condition.
FAILJOB_ON_CONDITION = re.compile(r"Pod (?P<namespace>[^/\s]+)/(?P<pod>\S+) has condition DisruptionTarget matching")
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"  # the Job controller's label on its pods
MAX_MESSAGE = 200
MEMO_SIZE = 1024  # disrupted pods remembered, the oldest forgotten first

# What happened to the pod, by the DisruptionTarget reason (pkg/apis/core/types.go).
VERBS = {
    "PreemptionByScheduler": "preempted by the scheduler",
    "EvictionByEvictionAPI": "evicted (Eviction API)",
    "DeletionByTaintManager": "deleted by the taint manager (its node is NotReady or unreachable)",
    "DeletionByPodGC": "deleted by the pod garbage collector (its node is gone)",
    "TerminationByKubelet": "terminated by its kubelet (node pressure or shutdown)",
    "NodeNotReady": "lost with its node (NotReady: its kubelet stopped reporting)",
    "NodeLost": "lost with its node (failed by the operator)",
}
# The node lifecycle controller's Warning Event on each pod of a node that went NotReady
# (pkg/controller/util/node/controller_utils.go `MarkPodsNotReady`), long before the taint manager
# deletes the pods (DeletionByTaintManager, after their 300 s toleration).
NODE_NOT_READY = "NodeNotReady"
NODE_LOST = "NodeLost"  # the status.reason stuck_pods.fail_lost gives a running pod on a lost node


@dataclass(frozen=True)
class Disruption:
    """One disrupted pod: its name, node (empty when unknown), and the condition's reason and message."""

    pod: str
    node: str = ""
    reason: str = ""
    message: str = ""

    def describe(self) -> str:
        where = f" on node {self.node}" if self.node else ""
        verb = VERBS.get(self.reason, "disrupted")
        cause = f"{DISRUPTION_TARGET}: {self.reason}" if self.reason else DISRUPTION_TARGET
        if self.message:
            cause = f"{cause}: {self.message[:MAX_MESSAGE]}"
        return f"pod {self.pod}{where} was {verb} ({cause})"


def disruption_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == DISRUPTION_TARGET and cond.get("status") == "True":
            return dict(cond)
    return None


def job_pods(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods of this Job (this attempt), by the Job controller's uid label: an earlier attempt's
    pods may still be terminating under the same selector."""
    uid = ((job or {}).get("metadata") or {}).get("uid")
    if not uid:
        return pods
    return [p for p in pods if ((p["metadata"].get("labels") or {}).get(CONTROLLER_UID)) in (uid, None)]


def _from_pod(pod: dict[str, Any], cond: dict[str, Any]) -> Disruption:
    return Disruption(
        pod["metadata"]["name"], (pod.get("spec") or {}).get("nodeName") or "", cond.get("reason") or "",
        (cond.get("message") or "").strip(),
    )  # fmt: skip


def named_pod(job_message: str) -> str | None:
    """The pod a Job's failure message names as disrupted (its podFailurePolicy rule), if any."""
    found = FAILJOB_ON_CONDITION.search(job_message or "")
    return found.group("pod") if found else None


def find_disruption(job_reason: str, job_message: str, pods: list[dict[str, Any]]) -> Disruption | None:
    """The disruption that failed this attempt's Job, if one did: the pod its failure message
    names (PodFailurePolicy), else a pod of the attempt marked DisruptionTarget (a survivor's exit
    failed the Job first: BackoffLimitExceeded). None for a failure of the job's own."""
    named = named_pod(job_message) if job_reason == "PodFailurePolicy" else None
    if job_reason == "PodFailurePolicy" and named is None:
        return None  # the trainer's invalid-config exit code: final, whatever else happened
    for pod in pods:
        cond = disruption_condition(pod)
        if cond is not None and (named is None or pod["metadata"]["name"] == named):
            return _from_pod(pod, cond)
    return Disruption(named) if named is not None else None


def node_of(pod_events: list[dict[str, Any]]) -> str:
    """The node a pod ran on, from its Events (a kubelet's carry `source.host`), once the pod is gone."""
    for event in pod_events:
        host = (event.get("source") or {}).get("host") or ""
        if host:
            return str(host)
        message = event.get("message") or ""
        if event.get("reason") == "Scheduled" and " to " in message:
            return str(message.rsplit(" to ", 1)[1].strip())
    return ""


def lost_with_node(pods: list[dict[str, Any]], pod_events: list[dict[str, Any]]) -> Disruption | None:
    """A pod of the attempt that had not finished on a node the node lifecycle controller found
    NotReady (its `NodeNotReady` Event on the pod), if any."""
    flagged = {(e.get("involvedObject") or {}).get("name") for e in pod_events if e.get("reason") == NODE_NOT_READY}
    for pod in pods:
        status = pod.get("status") or {}
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if status.get("reason") == NODE_LOST:  # failed by the operator itself (stuck_pods.fail_lost)
            return Disruption(pod["metadata"]["name"], node, NODE_LOST, status.get("message") or "")
        finished = status.get("phase") in ("Succeeded", "Failed")
        if pod["metadata"]["name"] in flagged and not finished:
            return Disruption(pod["metadata"]["name"], node, NODE_NOT_READY, "Node is not ready")
    return None


class Memo:
    """Disrupted pods seen while their attempt ran, by (namespace, pod): what the failed Job's
    message no longer shows once the pod is gone (thread-safe, bounded)."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], Disruption] = OrderedDict()
        self._size = size

    def remember(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            cond = disruption_condition(pod)
            if cond is None:
                continue
            with self._lock:
                self._seen[(namespace, pod["metadata"]["name"])] = _from_pod(pod, cond)
                while len(self._seen) > self._size:
                    self._seen.popitem(last=False)

    def recall(self, namespace: str, found: Disruption) -> Disruption:
        """`found` completed with what was seen of its pod, if anything."""
        with self._lock:
            seen = self._seen.get((namespace, found.pod))
        return seen if seen is not None and not found.reason else found


MEMO = Memo()
