"""Real Kueue admits a queued job on the real control plane: one owner for the Job's `spec.suspend`.

With `runPolicy.queueName` the Job carries `kueue.x-k8s.io/queue-name` and is created suspended;
Kueue (v0.17, tests/cluster/kueue.py) makes its Workload and admits it by setting
`spec.suspend: false` once the ClusterQueue has quota; the operator must never write that flag,
or the two would flip it back and forth. While the ClusterQueue has no quota the job waits in
phase Queued, its Training condition quoting Kueue's own reason; a user's
`runPolicy.suspend: true` before that holds the Job back (nothing for Kueue to admit). Who wrote
the Job is read from the apiserver's audit log: after its creation, Kueue only. The admitted
Job's pods go to the session's real kubelets (tests/cluster/real_nodes.py), which cannot pull
the chart's trainer image here (`registry.test`: `.test` never resolves): the pods exist, bound,
and nothing trains, so the phase stays Pending. Needs root; run:
`pytest -m cluster tests/cluster/test_kueue.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from speedrun_operator.operator_metrics import REGISTRY
from tests.cluster import kueue_queues as q
from tests.cluster.chart import NEVER_PULLED, PULL_REASONS, ChartOperator, chart_operator, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.kueue import USER, Kueue
from tests.cluster.real_nodes import RealNodes
from tests.support.helpers import tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-kueue"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
JOB_PATH = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/queued-train"
VALUES = {
    "operator.defaultStorageUri": "s3://speedrun-test/runs",
    "operator.resyncInterval": "2",
    **NEVER_PULLED,
}  # the pods wait in ErrImagePull (chart.py)
FLAVOR, CLUSTER_QUEUE, QUEUE = "kueue-test-plain", "kueue-test-cq", "gpu-queue"
NO_QUOTA = {"cpu": 0, "memory": "0"}
QUOTA = {"cpu": 4, "memory": "8Gi"}  # the job's 2 pods ask 1 cpu and 2Gi each


def wait(predicate: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


def resyncs() -> float:
    """Resync reconciles the in-process operator has finished (its own metrics registry)."""
    value = REGISTRY.get_sample_value("speedrun_operator_reconcile_duration_seconds_count", {"handler": "resync"})
    return value or 0.0


def after_resyncs(count: int) -> None:
    target = resyncs() + count
    wait(lambda: resyncs() >= target, f"{count} more resyncs of the operator")


def pulls_refused(cp: ControlPlane) -> list[str]:
    """The nodes whose kubelets tried the admitted Job's trainer image and could not pull it."""
    pods = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labels="speedrun.dev/job=queued")
    return [p["spec"]["nodeName"] for p in pods for s in (p.get("status") or {}).get("containerStatuses") or []
            if ((s.get("state") or {}).get("waiting") or {}).get("reason") in PULL_REASONS]  # fmt: skip


def srj(cp: ControlPlane) -> dict[str, Any]:
    return cp.admin.get(f"{SRJ_PATH}/queued") or {}


def phase(cp: ControlPlane) -> str:
    return (srj(cp).get("status") or {}).get("phase", "")


def training(cp: ControlPlane) -> dict[str, Any]:
    return next((c for c in (srj(cp).get("status") or {}).get("conditions") or [] if c["type"] == "Training"), {})


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_nodes: RealNodes, kueue: Kueue, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    release = install_chart(control_plane, "speedrun-kueue", NAMESPACE, VALUES)
    control_plane.namespace(NAMESPACE)
    queues = [q.local_queue(QUEUE, NAMESPACE, CLUSTER_QUEUE), q.cluster_queue(CLUSTER_QUEUE, FLAVOR, NO_QUOTA),
              q.resource_flavor(FLAVOR)]  # fmt: skip
    q.make(control_plane, *reversed(queues))
    with chart_operator(control_plane, release, tmp_path_factory.mktemp("kueue"), SPEEDRUN_OPERATOR_METRICS_PORT="0",
                        SPEEDRUN_OPERATOR_LIVENESS="") as op:  # fmt: skip
        yield op
        control_plane.drain(NAMESPACE, SRJ_PATH)
    q.delete(control_plane, *queues)
    assert op.forbidden() == []


def test_kueue_admits_the_queued_job_and_alone_writes_its_suspend_flag(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, kueue: Kueue, operator: ChartOperator
) -> None:
    cp = control_plane
    doc = tiny_manifest(**{"spec.runPolicy": {"queueName": QUEUE, "suspend": True}})
    doc["metadata"] = {"name": "queued", "namespace": NAMESPACE}
    kubectl.run("apply", "-f", "-", stdin=json.dumps(doc))
    # Suspended by the user with a queue: no Job for Kueue to admit.
    wait(lambda: phase(cp) == "Suspended", "phase Suspended")
    after_resyncs(2)
    assert cp.admin.get(JOB_PATH) is None, "a Job was created although runPolicy.suspend is true"

    kubectl.run("patch", "srj", "queued", "-n", NAMESPACE, "--type=merge",
                "-p", '{"spec": {"runPolicy": {"suspend": false}}}')  # fmt: skip
    job = wait(lambda: cp.admin.get(JOB_PATH), "the training Job once the user resumes")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][q.LABEL_QUEUE] == QUEUE
    # The apiserver called Kueue's Job webhook on the create, as in a cluster with Kueue installed.
    assert "mjob.kb.io" in wait(lambda: q.mutating_webhooks_at_create(cp, NAMESPACE, "queued-train"),
                                "the Job's create in the audit log")  # fmt: skip
    # Kueue's Workload for it waits: the ClusterQueue has no quota, and the job says so in Kueue's words.
    workload = wait(lambda: (w := q.workload_of(cp, job)) and q.condition(w, "QuotaReserved").get("message") and w,
                    "Kueue's Workload of the Job, not admitted")  # fmt: skip
    reserved = q.condition(workload, "QuotaReserved")
    assert reserved["status"] == "False" and "insufficient quota for" in reserved["message"], reserved
    said = wait(lambda: (c := training(cp)).get("message", "").endswith(reserved["message"]) and c,
                "the Training condition quoting Kueue")  # fmt: skip
    assert said["reason"] == "WaitingForAdmission" and f"LocalQueue {QUEUE}" in said["message"]
    assert phase(cp) == "Queued"
    after_resyncs(2)
    assert (cp.admin.get(JOB_PATH) or {})["spec"]["suspend"] is True, "the Job started without Kueue's admission"

    # The administrator gives the ClusterQueue quota: Kueue admits the Workload and unsuspends the Job.
    q.set_quota(cp, CLUSTER_QUEUE, FLAVOR, QUOTA)
    wait(lambda: q.is_true(q.workload_of(cp, job), "Admitted"), "the Workload admitted")
    admitted = wait(
        lambda: (j := cp.admin.get(JOB_PATH) or {})["spec"]["suspend"] is False and j, "the Job unsuspended"
    )
    after_resyncs(3)
    now = cp.admin.get(JOB_PATH) or {}
    assert now["spec"]["suspend"] is False, "the operator suspended the Job Kueue admitted"
    assert now["metadata"]["generation"] == admitted["metadata"]["generation"], "the Job's spec kept changing"
    # The admitted Job runs: its pods reach the real nodes, whose kubelets cannot pull the image.
    refused = wait(lambda: len(found := pulls_refused(cp)) == 2 and found, "both pods' image pulls refused", 120)
    assert set(refused) <= set(kube_nodes.names) and phase(cp) == "Pending"
    assert (cp.admin.get(JOB_PATH) or {})["metadata"]["generation"] == admitted["metadata"]["generation"]
    writers = {user for user, _, sub in q.job_writes(cp, NAMESPACE, "queued-train") if sub != "status"}
    assert writers == {USER}, f"the Job was written by {writers}, not by Kueue alone"
    assert operator.forbidden() == []
