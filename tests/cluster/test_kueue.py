"""Kueue and `runPolicy.suspend` on the real control plane: one owner for the Job's `spec.suspend`.

With `runPolicy.queueName` the Job carries `kueue.x-k8s.io/queue-name`, is created suspended and
Kueue admits it by setting `spec.suspend: false` (its jobframework's `RunWithPodSetsInfo`); the
operator must then never write that flag, or the two would flip it back and forth. A user's
`runPolicy.suspend: true` acts another way with a queue: the Job is not created (nothing for
Kueue to admit) until suspend is false again. Kueue itself is not installed here; the test plays
its admission on the real apiserver (the same merge patch) and counts the Job's spec changes
(`metadata.generation`) across several resyncs of the operator. The admitted Job's pods go to the
session's real kubelets (tests/cluster/real_nodes.py), which cannot pull the chart's trainer image
here (`registry.test`: `.test` never resolves): the pods exist, bound, and nothing trains, so the
phase stays Pending. Needs root; run: `pytest -m cluster tests/cluster/test_kueue.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from speedrun_operator.operator_metrics import REGISTRY
from tests.cluster.chart import NEVER_PULLED, PULL_REASONS, ChartOperator, chart_operator, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
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


def phase(cp: ControlPlane) -> str:
    return ((cp.admin.get(f"{SRJ_PATH}/queued") or {}).get("status") or {}).get("phase", "")


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_nodes: RealNodes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    release = install_chart(control_plane, "speedrun-kueue", NAMESPACE, VALUES)
    control_plane.namespace(NAMESPACE)
    with chart_operator(control_plane, release, tmp_path_factory.mktemp("kueue"), SPEEDRUN_OPERATOR_METRICS_PORT="0",
                        SPEEDRUN_OPERATOR_LIVENESS="") as op:  # fmt: skip
        yield op
        control_plane.drain(NAMESPACE, SRJ_PATH)
    assert op.forbidden() == []


def test_kueue_owns_the_suspend_flag_and_a_user_suspend_holds_the_job_back(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, operator: ChartOperator
) -> None:
    cp = control_plane
    doc = tiny_manifest(**{"spec.runPolicy": {"queueName": "gpu-queue", "suspend": True}})
    doc["metadata"] = {"name": "queued", "namespace": NAMESPACE}
    kubectl.run("apply", "-f", "-", stdin=json.dumps(doc))
    # Suspended by the user with a queue: no Job for Kueue to admit.
    wait(lambda: phase(cp) == "Suspended", "phase Suspended")
    after_resyncs(2)
    assert cp.admin.get(JOB_PATH) is None, "a Job was created although runPolicy.suspend is true"

    kubectl.run("patch", "srj", "queued", "-n", NAMESPACE, "--type=merge",
                "-p", '{"spec": {"runPolicy": {"suspend": false}}}')  # fmt: skip
    job = wait(lambda: cp.admin.get(JOB_PATH), "the training Job once the user resumes")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    wait(lambda: phase(cp) == "Queued", "phase Queued (waiting for Kueue)")

    # Kueue admits: the same merge patch its job reconciler sends.
    admitted = cp.admin.patch(JOB_PATH, {"spec": {"suspend": False}})
    after_resyncs(3)
    job = cp.admin.get(JOB_PATH) or {}
    assert job["spec"]["suspend"] is False, "the operator suspended the Job Kueue admitted"
    assert job["metadata"]["generation"] == admitted["metadata"]["generation"], "the Job's spec kept changing"
    # The admitted Job runs: its pods reach the real nodes, whose kubelets cannot pull the image.
    refused = wait(lambda: len(found := pulls_refused(cp)) == 2 and found, "both pods' image pulls refused", 120)
    assert set(refused) <= set(kube_nodes.names) and phase(cp) == "Pending"
    assert (cp.admin.get(JOB_PATH) or {})["metadata"]["generation"] == admitted["metadata"]["generation"]
    assert operator.forbidden() == []
