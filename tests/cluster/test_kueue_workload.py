"""A queued job and its real Kueue Workload: why it waits, and stopping and resuming it through Kueue.

Kueue v0.17 runs beside the control plane (tests/cluster/kueue.py): its Workload CRD, its job
reconciler making a Workload for the training Job (labelled `kueue.x-k8s.io/job-uid`), its
scheduler admitting it once the ClusterQueue has quota, its eviction of a Workload made inactive.
The operator's part: the Training condition quotes the Workload's reason while it waits, and
`runPolicy.suspend` sets the Workload's `spec.active` (false: Kueue evicts it and suspends the
Job; true: it queues anew), never the Job's `spec.suspend`, which is Kueue's (the audit log
says who wrote it). No pod needs to run: the admitted Job's pods may stay unscheduled, or land
on the session's real nodes if another module started them, where they cannot pull the image.
Needs root (kueue.py); run: `pytest -m cluster tests/cluster/test_kueue_workload.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import kueue_queues as q
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.kueue import USER, Kueue
from tests.cluster.operator_run import ServedNamespace, served_namespace

pytestmark = pytest.mark.cluster

NAMESPACE = "kueue-workload-tests"
FLAVOR, CLUSTER_QUEUE, QUEUE = "kueue-workload-plain", "kueue-workload-cq", "gpu-queue"
NO_QUOTA = {"cpu": 0, "memory": "0"}
QUOTA = {"cpu": 4, "memory": "8Gi"}  # the job's 2 pods ask 1 cpu and 2Gi each


def wait(predicate: Any, what: str, timeout: float = 90.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def served(
    control_plane: ControlPlane, kueue: Kueue, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedNamespace]:
    cp = control_plane
    queues = [q.local_queue(QUEUE, NAMESPACE, CLUSTER_QUEUE), q.cluster_queue(CLUSTER_QUEUE, FLAVOR, NO_QUOTA),
              q.resource_flavor(FLAVOR)]  # fmt: skip
    cp.namespace(NAMESPACE)
    q.make(cp, *reversed(queues))
    with served_namespace(cp, NAMESPACE, tmp_path_factory.mktemp("kueue-workload")) as served:
        yield served
    q.delete(cp, *queues)


def suspend(kubectl: Kubectl, name: str, value: bool) -> None:
    patch = json.dumps({"spec": {"runPolicy": {"suspend": value}}})
    kubectl.run("patch", "srj", name, "-n", NAMESPACE, "--type=merge", "-p", patch)


def waiting_says(served: ServedNamespace, name: str, workload: dict[str, Any] | None) -> str:
    """The Training condition's message once it quotes the Workload's QuotaReserved message, else ""."""
    said = q.condition(workload, "QuotaReserved").get("message", "")
    message = served.condition(name, "Training").get("message", "")
    return message if said and message.endswith(said) else ""


def test_a_queued_job_waits_for_admission_and_stops_through_its_workload(
    control_plane: ControlPlane, kubectl: Kubectl, served: ServedNamespace
) -> None:
    cp, name, job_name = control_plane, "queued", "queued-train"
    served.apply(kubectl, served.manifest(name, **{"spec.runPolicy": {"queueName": QUEUE}}))
    job = wait(lambda: served.job(name), "the training Job, created suspended for Kueue")
    workload = wait(lambda: q.workload_of(cp, job), "Kueue's Workload of the Job")
    path = f"{q.KUEUE}/namespaces/{NAMESPACE}/workloads/{workload['metadata']['name']}"

    # Waiting for admission: the Queued condition names the queue and quotes Kueue.
    message = wait(lambda: waiting_says(served, name, cp.admin.get(path)), "the Training condition quoting Kueue")
    assert "insufficient quota for" in message and f"LocalQueue {QUEUE}" in message, message
    assert served.condition(name, "Training")["reason"] == "WaitingForAdmission"
    assert served.phase(name) == "Queued"

    # Quota: Kueue admits the Workload and unsuspends the Job.
    q.set_quota(cp, CLUSTER_QUEUE, FLAVOR, QUOTA)
    wait(lambda: served.phase(name) == "Pending", "phase Pending once admitted")
    assert q.is_true(cp.admin.get(path), "Admitted") and (served.job(name) or {})["spec"]["suspend"] is False

    # The user stops the admitted job: the operator deactivates the Workload; Kueue evicts it and
    # suspends the Job, and the job shows Suspended.
    suspend(kubectl, name, True)
    wait(lambda: (cp.admin.get(path) or {})["spec"]["active"] is False, "the Workload deactivated (spec.active false)")
    evicted = wait(lambda: q.is_true(w := cp.admin.get(path), "Evicted") and q.condition(w, "Evicted"),
                   "Kueue's eviction of the inactive Workload")  # fmt: skip
    assert evicted["reason"] == "Deactivated", evicted
    wait(lambda: (served.job(name) or {})["spec"]["suspend"] is True, "the Job suspended by Kueue")
    wait(lambda: served.phase(name) == "Suspended", "phase Suspended")
    wait(lambda: not q.is_true(cp.admin.get(path), "Admitted"), "the Workload no longer admitted")

    # Resumed while the ClusterQueue has no quota: the Workload is active again and waits in the queue.
    q.set_quota(cp, CLUSTER_QUEUE, FLAVOR, NO_QUOTA)
    suspend(kubectl, name, False)
    wait(lambda: (cp.admin.get(path) or {})["spec"]["active"] is True, "the Workload active again")
    wait(lambda: served.phase(name) == "Queued", "phase Queued again")
    # Kueue may keep "The workload is deactivated" for a moment after reactivation; the operator quotes
    # it, then follows Kueue's next message.
    again = wait(lambda: "insufficient quota" in (m := waiting_says(served, name, cp.admin.get(path))) and m,
                 "the Training condition quoting Kueue's quota reason again")  # fmt: skip
    assert f"LocalQueue {QUEUE}" in again, again
    # And with quota again, admitted again.
    q.set_quota(cp, CLUSTER_QUEUE, FLAVOR, QUOTA)
    wait(lambda: served.phase(name) == "Pending", "phase Pending once admitted again")
    writers = {user for user, _, sub in q.job_writes(cp, NAMESPACE, job_name) if sub != "status"}
    assert writers == {USER}, f"the Job was written by {writers}, not by Kueue alone"
