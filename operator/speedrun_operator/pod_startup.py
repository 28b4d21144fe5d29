"""Start-up of the training pods: why they are not all running yet, and the start-up deadline.

A training Job whose pods never start (a GPU request no node can fit, an image that cannot be
pulled, a missing Secret) would otherwise sit Pending forever with nothing shown. The reasons are
the scheduler's and the kubelet's own, read from the pods' status:

- `PodScheduled=False` with its reason (Unschedulable, SchedulingGated) and the scheduler's message
  ("0/3 nodes are available: 1 Insufficient nvidia.com/gpu ...");
- a container waiting with a reason other than the normal ContainerCreating/PodInitializing
  (ErrImagePull, ImagePullBackOff, CreateContainerConfigError, InvalidImageName, ...);
- pods that do not exist at all because the Job controller cannot create them (a ResourceQuota
  exceeded, a pod admission webhook or policy refusing them): no pod carries a status then, so
  the reason is the Job controller's `FailedCreate` Warning Event on the Job, with its message.

The run is training only once its rendezvous can form: every pod ready (the minimum node count
of an elastic run). Until then the phase stays Pending, and after `runPolicy.startupDeadlineSeconds`
counted from the Job's start (`status.startTime`, which Kubernetes resets on every resume from
suspension, so time queued in Kueue does not count) the job fails with the last reason seen. Each
attempt of a gang restart is a new Job, so each has its own deadline, except after an attempt that
failed before all its ranks joined: the deadline then counts from the first such attempt's start
(`status.startupStartTime`, lifecycle.py), so failing early cannot start the clock over.
All pure functions of the objects read; reconcile.py reads them and lifecycle.py decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from speedrun_api.status import parse_rfc3339
from speedrun_operator import labels as L

# Waiting reasons of a container that is starting normally (kubelet: pkg/kubelet/container).
STARTING_REASONS = ("ContainerCreating", "PodInitializing")


@dataclass(frozen=True)
class PodsWaiting:
    """The first pod that is not running yet: the scheduler's or kubelet's reason and message."""

    reason: str
    message: str
    problem: bool  # False for a pod that is merely starting (ContainerCreating)

    def describe(self) -> str:
        return f"{self.reason}: {self.message}"


def _index(pod: dict[str, Any]) -> int:
    labels = pod["metadata"].get("labels") or {}
    try:
        return int(labels.get(L.LABEL_COMPLETION_INDEX, 0))
    except ValueError:
        return 0


def _pod_waiting(pod: dict[str, Any]) -> PodsWaiting | None:
    status = pod.get("status") or {}
    name = pod["metadata"]["name"]
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reason = cond.get("reason") or "Unschedulable"
            return PodsWaiting(reason, f"pod {name}: {cond.get('message') or 'not scheduled'}", True)
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
            detail = waiting.get("message") or reason
            return PodsWaiting(reason, f"pod {name}: {detail}", reason not in STARTING_REASONS)
    if status.get("phase", "Pending") == "Pending":
        return PodsWaiting("PodsPending", f"pod {name}: waiting to be scheduled", False)
    return None


def pods_waiting(pods: list[dict[str, Any]]) -> PodsWaiting | None:
    """Why the training pods are not all running: the first problem, else the first pod starting."""
    active = [p for p in pods if not p["metadata"].get("deletionTimestamp")
              and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]  # fmt: skip
    found = [w for p in sorted(active, key=_index) if (w := _pod_waiting(p)) is not None]
    problems = [w for w in found if w.problem]
    return (problems or found or [None])[0]


def missing_pods(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """Fewer live pods than the Job runs at once: the Job controller has not created them all."""
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return len(live) < int((job.get("spec") or {}).get("parallelism") or 1)


def creation_failure(job_events: list[dict[str, Any]]) -> PodsWaiting | None:
    """The Job controller's last `FailedCreate` Event (pods it could not create), if any."""
    failed = [e for e in job_events if e.get("reason") == "FailedCreate" and e.get("type") == "Warning"]
    if not failed:
        return None
    last = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    job = (last.get("involvedObject") or {}).get("name", "")
    return PodsWaiting("FailedCreate", f"job {job}: {last.get('message') or 'pods could not be created'}", True)


def startup_overdue(job: dict[str, Any] | None, deadline_seconds: int, now: str, since: str | None = None) -> bool:
    """True once the training Job has been started (not suspended) longer than the deadline, counted
    from `since` when given (the start of an earlier attempt that failed before its ranks joined)."""
    if job is None or (job.get("spec") or {}).get("suspend"):
        return False
    started = (job.get("status") or {}).get("startTime")
    if not started:
        return False
    return (parse_rfc3339(now) - parse_rfc3339(since or started)).total_seconds() > deadline_seconds


def startup_failure(deadline_seconds: int, waiting: PodsWaiting | None, ready: int, nodes: int) -> str:
    """The Failed message: the deadline, how far start-up got, and the last reason seen."""
    message = (
        f"the training pods did not all start within runPolicy.startupDeadlineSeconds ({deadline_seconds} s): "
        f"{ready} of {nodes} ready"
    )
    return f"{message}; {waiting.describe()}" if waiting is not None else message


def stop_patch(job: dict[str, Any], deadline_seconds: int, now: str | None = None) -> dict[str, Any] | None:
    """A Job patch that makes the Job controller end a Job whose pods never started (and delete
    its pods, so none starts training unwatched later): its activeDeadlineSeconds, which counts
    from the same startTime, lowered to the start-up deadline that has passed, or, given `now`, to
    the Job's age if that is less (an attempt whose deadline counted from an earlier attempt's
    start). None if it is lower."""
    started = (job.get("status") or {}).get("startTime")
    if now is not None and started:
        age = int((parse_rfc3339(now) - parse_rfc3339(started)).total_seconds())
        deadline_seconds = max(1, min(deadline_seconds, age))
    current = (job.get("spec") or {}).get("activeDeadlineSeconds")
    if current is not None and current <= deadline_seconds:
        return None
    return {"spec": {"activeDeadlineSeconds": deadline_seconds}}
