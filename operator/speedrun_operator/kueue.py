"""A queued job's Kueue Workload: why it waits, and stopping and resuming it through Kueue.

With `runPolicy.queueName` the Jobs carry Kueue's queue-name label and Kueue owns their
`spec.suspend`: it makes a Workload for each Job (labelled `kueue.x-k8s.io/job-uid` with the
Job's uid, the one stable link: its name is Kueue's own hash), admits it by unsuspending the
Job, and suspends the Job again when it evicts the Workload. So the operator never writes the
Job's `spec.suspend` of a queued job; instead:

- `runPolicy.suspend: true` deactivates the Workload (`spec.active: false`, Kueue's documented
  way to stop a workload: it is evicted, Kueue suspends the Job and its pods go, and it is never
  admitted while inactive); `false` activates it again and it queues for admission anew. (A Job
  not created yet is simply not created while suspended: handlers/reconcile.py `_held_back`.)
- While the Job waits, the job's Queued condition names the LocalQueue and says what Kueue says
  about the Workload: the message of its QuotaReserved (or Admitted, or Evicted) condition, e.g.
  "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu ...".

Waiting for admission is not bounded by the operator: the queue is the cluster's policy, and a
job waits its turn there as long as it takes (the start-up deadline runs from admission, when
the Job starts); Kueue's own `waitForPodsReady` bounds the time from admission to running pods.
Workloads are read only while a queued Job waits or is to be stopped: a running job costs no
request. Without Kueue installed the API is not served (404) and there is nothing to read.
"""

from __future__ import annotations

from typing import Any

from speedrun_operator import kube, lifecycle

LABEL_JOB_UID = "kueue.x-k8s.io/job-uid"
# The API versions Kueue serves its Workload in, newest first (v1beta2 since Kueue 0.15).
WORKLOAD_KINDS = (kube.KUEUE_WORKLOAD, kube.KUEUE_WORKLOAD_V1BETA1)
WAITING = "waiting for Kueue to admit the training Job"


def workload_of(client: kube.KubeClient, job: dict[str, Any]) -> tuple[kube.Kind, dict[str, Any]] | None:
    """Kueue's Workload of `job` (and the API version it was read in), or None."""
    meta = job["metadata"]
    for kind in WORKLOAD_KINDS:
        try:
            found = client.list(kind, meta["namespace"], labels={LABEL_JOB_UID: meta["uid"]})
        except kube.NotFound:  # this version not served (or Kueue not installed)
            continue
        return (kind, found[0]) if found else None
    return None


def sync_workload(
    client: kube.KubeClient, policy: Any, job: dict[str, Any] | None, state: lifecycle.JobState
) -> dict[str, Any] | None:
    """Make a queued Job's Workload active unless runPolicy.suspend; the Workload, when read."""
    if not policy.queue_name or job is None or state.phase not in ("Suspended", "Pending", "Running"):
        return None
    if not policy.suspend and state.phase != "Suspended":
        return None  # admitted and not to be stopped: nothing to do, nothing to say
    found = workload_of(client, job)
    if found is None:
        return None
    kind, workload = found
    active = not policy.suspend
    if bool((workload.get("spec") or {}).get("active", True)) != active:
        meta = workload["metadata"]
        workload = client.patch(kind, meta["namespace"], meta["name"], {"spec": {"active": active}})
    return workload


def waiting_message(queue: str, workload: dict[str, Any] | None) -> str:
    """What the Queued condition says: the LocalQueue, and Kueue's word on the Workload."""
    where = f"{WAITING} in LocalQueue {queue}"
    if workload is None:
        return f"{where} (no Kueue Workload for it yet: is Kueue installed and watching this namespace?)"
    if (workload.get("spec") or {}).get("active") is False:
        return f"{where}: its Workload {workload['metadata']['name']} is inactive"
    conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    # QuotaReserved first: Kueue (v0.17) keeps an old `Evicted` True ("The workload is deactivated")
    # after the Workload is active and queued again; QuotaReserved says why it waits now.
    for kind in ("QuotaReserved", "Admitted", "Evicted"):
        c = conditions.get(kind)
        if c is not None and c.get("status") == ("True" if kind == "Evicted" else "False") and c.get("message"):
            return f"{where}: {kind} {c.get('reason', '')}: {c['message']}".replace(" : ", ": ")
    return f"{where} (Workload {workload['metadata']['name']})"
