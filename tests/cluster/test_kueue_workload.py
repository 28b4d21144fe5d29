"""A queued job and Kueue's Workload on the real apiserver: why it waits, and stopping it through Kueue.

Kueue is not installed; the test plays it with its own API: a Workload (`kueue.x-k8s.io/v1beta2`)
for the training Job, labelled `kueue.x-k8s.io/job-uid` with the Job's uid as Kueue's job
reconciler labels it, whose status says why it is not admitted, and Kueue's acts on the Job
(unsuspend on admission, suspend on eviction). The Workload CRD here is a minimal stand-in with
Kueue's group, kind and the fields the operator reads and writes (`spec.active`, defaulting to
true as Kueue's does; `status.conditions`); the rest of Kueue's schema is kept open. No pod
needs to run, so no real node either: `control_plane` only.
Run: `pytest -m cluster tests/cluster/test_kueue_workload.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.api import ApiError
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_run import ServedNamespace, served_namespace

pytestmark = pytest.mark.cluster

NAMESPACE = "kueue-workload-tests"
CRD = "workloads.kueue.x-k8s.io"
WORKLOADS = f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{NAMESPACE}/workloads"
QUEUE = "gpu-queue"
PENDING = "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor h100, 8 more needed"
OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
WORKLOAD_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD},
    "spec": {
        "group": "kueue.x-k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "Workload", "listKind": "WorkloadList", "plural": "workloads", "singular": "workload"},
        "versions": [{
            "name": "v1beta2", "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {**OPEN, "properties": {"active": {"type": "boolean", "default": True}}},
                "status": OPEN,
            }}},
        }],
    },
}  # fmt: skip


def wait(predicate: Any, what: str, timeout: float = 90.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def served(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedNamespace]:
    cp = control_plane
    cp.admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WORKLOAD_CRD)
    kubectl.run("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    wait(lambda: served_yet(cp), "the Workload API served")
    try:
        with served_namespace(cp, NAMESPACE, tmp_path_factory.mktemp("kueue-workload")) as served:
            yield served
    finally:
        cp.admin.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}")


def served_yet(cp: ControlPlane) -> bool:
    """A new CRD's storage answers 404, then 429 ("storage is (re)initializing"), then serves."""
    try:
        return cp.admin.list(WORKLOADS) == []
    except ApiError as err:
        if err.status in (404, 429):
            return False
        raise


def play_kueue_workload(cp: ControlPlane, job: dict[str, Any], conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """The Workload Kueue's job reconciler makes for a queued Job, with the status Kueue writes."""
    meta = job["metadata"]
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"], "controller": True}
    body = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {"name": f"job-{meta['name']}-5d2f1", "labels": {"kueue.x-k8s.io/job-uid": meta["uid"]},
                     "ownerReferences": [owner]},
        "spec": {"queueName": QUEUE, "podSets": [{"name": "main", "count": 2}]},
    }  # fmt: skip
    made = cp.admin.create(WORKLOADS, body)
    return set_conditions(cp, made["metadata"]["name"], conditions)


def set_conditions(cp: ControlPlane, name: str, conditions: list[dict[str, Any]]) -> dict[str, Any]:
    stamped = [{"lastTransitionTime": "2026-01-01T00:00:00Z", **c} for c in conditions]
    return cp.admin.patch(f"{WORKLOADS}/{name}/status", {"status": {"conditions": stamped}})


def condition(reason: str, status: str, type_: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message or reason}


def suspend(kubectl: Kubectl, name: str, value: bool) -> None:
    patch = json.dumps({"spec": {"runPolicy": {"suspend": value}}})
    kubectl.run("patch", "srj", name, "-n", NAMESPACE, "--type=merge", "-p", patch)


def test_a_queued_job_waits_for_admission_and_stops_through_its_workload(
    control_plane: ControlPlane, kubectl: Kubectl, served: ServedNamespace
) -> None:
    cp, name = control_plane, "queued"
    served.apply(kubectl, served.manifest(name, **{"spec.runPolicy": {"queueName": QUEUE}}))
    job = wait(lambda: served.job(name), "the training Job, created suspended for Kueue")
    workload = play_kueue_workload(cp, job, [condition("Pending", "False", "QuotaReserved", PENDING)])

    # Waiting for admission: the Queued condition names the queue and says what Kueue says.
    queued = wait(lambda: (c := served.condition(name, "Training")).get("message", "").endswith(PENDING) and c,
                  "the Training condition with Kueue's reason")  # fmt: skip
    assert queued["reason"] == "WaitingForAdmission" and f"LocalQueue {QUEUE}" in queued["message"]
    assert served.phase(name) == "Queued"

    # Kueue admits: the Job is unsuspended (Kueue's merge patch), the Workload admitted.
    cp.admin.patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}-train", {"spec": {"suspend": False}})
    set_conditions(cp, workload["metadata"]["name"], [condition("QuotaReserved", "True", "QuotaReserved"),
                                                      condition("Admitted", "True", "Admitted")])  # fmt: skip
    wait(lambda: served.phase(name) == "Pending", "phase Pending once admitted")

    # The user stops the admitted job: the operator deactivates the Workload; Kueue evicts it and
    # suspends the Job (played), and the job shows Suspended.
    suspend(kubectl, name, True)
    path = f"{WORKLOADS}/{workload['metadata']['name']}"
    wait(lambda: (cp.admin.get(path) or {})["spec"]["active"] is False, "the Workload deactivated (spec.active false)")
    assert (served.job(name) or {})["spec"]["suspend"] is False, "the operator wrote the Job's suspend, Kueue's field"
    cp.admin.patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}-train", {"spec": {"suspend": True}})
    wait(lambda: served.phase(name) == "Suspended", "phase Suspended")

    # Resumed: the Workload is active again and queues anew.
    suspend(kubectl, name, False)
    wait(lambda: (cp.admin.get(path) or {})["spec"]["active"] is True, "the Workload active again")
    wait(lambda: served.phase(name) == "Queued", "phase Queued again")
