"""Gang placement: the PodGroup of each training attempt and how its pods name it (builders/placement.py),
and which gang the operator picks (gang.py); a queued Job's Kueue Workload (kueue.py). The scheduler's
side is tests/cluster/test_placement.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from speedrun_api.manifest import parse_job
from speedrun_operator import builders, gang, kube, kueue, lifecycle
from speedrun_operator.builders import placement
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import tiny_manifest

SETTINGS = OperatorSettings(default_storage_uri="s3://bucket/runs")


def job(**changes: Any) -> Any:
    doc = tiny_manifest(**changes)
    doc["metadata"]["namespace"] = "ns"
    return parse_job(doc)


def test_kubernetes_gang_names_the_attempts_pod_group_with_min_count_the_nodes() -> None:
    two = job()
    train = builders.build_train_job(two, SETTINGS, attempt=3, gang="kubernetes")
    assert train["spec"]["template"]["spec"]["schedulingGroup"] == {"podGroupName": "test-tiny-train-3"}
    group = placement.build_pod_group(two, "kubernetes", 3)
    assert group is not None and group["apiVersion"] == "scheduling.k8s.io/v1alpha2"
    assert group["metadata"]["name"] == "test-tiny-train-3" and group["metadata"]["namespace"] == "ns"
    assert group["spec"] == {"schedulingPolicy": {"gang": {"minCount": 2}}}
    assert placement.named_gang(train["spec"]["template"]) == "kubernetes"


def test_coscheduling_gang_is_a_pod_label_and_min_member() -> None:
    elastic = job(**{"spec.resources.nodes": None, "spec.resources.minNodes": 1, "spec.resources.maxNodes": 2})
    template = builders.build_train_job(elastic, SETTINGS, gang="coscheduling")["spec"]["template"]
    assert template["metadata"]["labels"][placement.LABEL_COSCHEDULING_GROUP] == "test-tiny-train-0"
    assert "schedulingGroup" not in template["spec"]
    group = placement.build_pod_group(elastic, "coscheduling", 0)
    assert group is not None and group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["spec"] == {"minMember": 1}  # an elastic job starts with its minimum
    assert placement.named_gang(template) == "coscheduling"


@pytest.mark.parametrize("mode", ["kubernetes", "coscheduling", "none"])
def test_no_gang_for_one_node_or_none(mode: placement.GangMode) -> None:
    one = job(**{"spec.resources.nodes": 1})
    template = builders.build_train_job(one, SETTINGS, gang=mode)["spec"]["template"]
    assert placement.named_gang(template) == "none" and placement.build_pod_group(one, mode, 0) is None
    assert placement.build_pod_group(job(), "none", 0) is None


class Discovery:
    def __init__(self, served: set[str]) -> None:
        self.served_kinds, self.asked = served, 0

    def served(self, kind: kube.Kind) -> bool:
        self.asked += 1
        return kind.api_version in self.served_kinds


@pytest.mark.parametrize(
    ("served", "mode"),
    [
        ({"scheduling.k8s.io/v1alpha2", "scheduling.x-k8s.io/v1alpha1"}, "kubernetes"),
        ({"scheduling.x-k8s.io/v1alpha1"}, "coscheduling"),
        (set(), "none"),
    ],
)
def test_auto_asks_discovery_once(served: set[str], mode: str) -> None:
    gang.forget()
    client = Discovery(served)
    assert gang.gang_mode(client, "auto") == mode  # type: ignore[arg-type]
    asked = client.asked
    assert gang.gang_mode(client, "auto") == mode and client.asked == asked  # type: ignore[arg-type]
    assert gang.gang_mode(client, "none") == "none"  # type: ignore[arg-type]
    gang.forget()


def test_an_unknown_setting_is_refused_naming_the_variable() -> None:
    problem = OperatorSettings(gang_scheduling="volcano").problem()
    assert problem is not None and problem.startswith("SPEEDRUN_OPERATOR_GANG_SCHEDULING: one of auto,")


# Kueue's Workload of a queued Job (kueue.py); the apiserver's side is tests/cluster/test_kueue_workload.py.
JOB = {"metadata": {"name": "q-train", "namespace": "ns", "uid": "u-1"}}


class Workloads:
    """Lists and patches Workloads as the apiserver would; v1beta2 not served unless `v1beta2`."""

    def __init__(self, workload: dict[str, Any] | None, v1beta2: bool = True) -> None:
        self.workload, self.v1beta2, self.patches = workload, v1beta2, []

    def list(self, kind: kube.Kind, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        if kind == kube.KUEUE_WORKLOAD and not self.v1beta2:
            raise kube.NotFound(404, "NotFound", "the server could not find the requested resource")
        assert labels == {kueue.LABEL_JOB_UID: "u-1"}
        return [self.workload] if self.workload else []

    def patch(self, kind: kube.Kind, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((kind.api_version, patch))
        return {**self.workload, "spec": {**self.workload["spec"], **patch["spec"]}}  # type: ignore[index]


def workload(active: bool = True, **condition: str) -> dict[str, Any]:
    return {"metadata": {"name": "job-q-train-1a2b3", "namespace": "ns"}, "spec": {"active": active},
            "status": {"conditions": [condition] if condition else []}}  # fmt: skip


@dataclass
class Policy:
    queue_name: str | None = "gpu"
    suspend: bool = False


def test_suspend_deactivates_the_workload_and_resume_activates_it() -> None:
    running, waiting = lifecycle.JobState("Running"), lifecycle.JobState("Suspended")
    client = Workloads(workload(), v1beta2=False)
    kueue.sync_workload(client, Policy(suspend=True), JOB, running)  # type: ignore[arg-type]
    assert client.patches == [("kueue.x-k8s.io/v1beta1", {"spec": {"active": False}})]
    client = Workloads(workload(active=False))
    kueue.sync_workload(client, Policy(), JOB, waiting)  # type: ignore[arg-type]
    assert client.patches == [("kueue.x-k8s.io/v1beta2", {"spec": {"active": True}})]
    client = Workloads(workload())
    assert kueue.sync_workload(client, Policy(), JOB, running) is None  # type: ignore[arg-type]
    assert kueue.sync_workload(client, Policy(queue_name=None, suspend=True), JOB, running) is None  # type: ignore[arg-type]
    assert client.patches == []


def test_the_waiting_message_names_the_queue_and_quotes_kueue() -> None:
    pending = workload(type="QuotaReserved", status="False", reason="Pending", message="insufficient quota for cpu")
    assert kueue.waiting_message("gpu", pending) == (
        "waiting for Kueue to admit the training Job in LocalQueue gpu: "
        "QuotaReserved Pending: insufficient quota for cpu"
    )
    # Reactivated after a stop: Kueue v0.17 leaves Evicted True (Deactivated) while QuotaReserved
    # says why the active Workload waits now (as tests/cluster/test_kueue_workload.py saw it).
    requeued = pending | {"status": {"conditions": [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "insufficient quota for cpu"},
        {"type": "Evicted", "status": "True", "reason": "Deactivated", "message": "The workload is deactivated"},
        {"type": "Admitted", "status": "False", "reason": "NoReservation", "message": "no reservation"},
        {"type": "Requeued", "status": "True", "reason": "Reactivated", "message": "The workload was reactivated"},
    ]}}  # fmt: skip
    assert kueue.waiting_message("gpu", requeued) == kueue.waiting_message("gpu", pending)
    assert "is Kueue installed" in kueue.waiting_message("gpu", None)
    assert kueue.waiting_message("gpu", workload(active=False)).endswith("job-q-train-1a2b3 is inactive")


class PodGroups:
    """Creates PodGroups as the apiserver would: a second of one name is a 409."""

    def __init__(self) -> None:
        self.creates, self.created = 0, []

    def create(self, kind: kube.Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.creates += 1
        if any(g["metadata"]["name"] == body["metadata"]["name"] for g in self.created):
            raise kube.Conflict(409, "AlreadyExists", "podgroups already exists")
        self.created.append(body)
        return body


def test_the_pod_group_is_made_once_owned_by_the_attempts_job() -> None:
    gang.forget()
    two = job()
    train = builders.build_train_job(two, SETTINGS, attempt=1, gang="kubernetes")
    train["metadata"].update(uid="job-uid-1", namespace="ns")
    client = PodGroups()
    for _ in range(3):
        gang.ensure_pod_group(client, two, train, 1)  # type: ignore[arg-type]
    [group] = client.created
    assert client.creates == 1 and group["metadata"]["name"] == "test-tiny-train-1"  # one request, no GET
    assert group["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "test-tiny-train", "uid": "job-uid-1", "controller": True}
    ]
    ready = {**train, "metadata": {**train["metadata"], "uid": "job-uid-2"}, "status": {"ready": 2}}
    gang.ensure_pod_group(client, two, ready, 1)  # type: ignore[arg-type]
    assert client.creates == 1 and len(client.created) == 1  # all pods ready: nothing to ask
    gang.forget()  # an operator that restarted: the 409 says the group is there, and it is remembered
    for _ in range(2):
        gang.ensure_pod_group(client, two, train, 1)  # type: ignore[arg-type]
    assert client.creates == 2 and len(client.created) == 1
    gang.forget()
