"""The operator on the real control plane, installed by `helm install` and held to the chart's RBAC.

One release of charts/speedrun-operator serves the namespace NAMESPACE; the operator runs with
its ServiceAccount's token (tests/cluster/chart.py), so any call the chart's Role does not grant
is refused by the apiserver and fails the test. The Job controller, garbage collector and
scheduler are Kubernetes' own, and the training pods go to the session's real kubelets
(tests/cluster/real_nodes.py). These tests need no training: the chart's trainer image here
(CHART_VALUES) names a registry under `.test`, a name that never resolves, so each kubelet fails
the pull (ErrImagePull, then ImagePullBackOff) and the pods stay Pending as during a slow pull,
which the operator shows as phase Pending until the start-up deadline (an hour by default).
Needs root; run: `pytest -m cluster tests/cluster/test_operator.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.chart import CHART_VALUES, ChartOperator, chart_operator, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_run import chart_operator_in
from tests.cluster.real_nodes import RealNodes
from tests.support.helpers import tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-cp"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff")  # the kubelet alternates between them


def wait(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_nodes: RealNodes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    with chart_operator_in(control_plane, NAMESPACE, tmp_path_factory.mktemp("operator"), CHART_VALUES) as op:
        yield op


def srj(cp: ControlPlane, name: str) -> dict[str, Any]:
    return cp.admin.get(f"{SRJ_PATH}/{name}") or {}


def phase(cp: ControlPlane, name: str) -> str:
    return (srj(cp, name).get("status") or {}).get("phase", "")


def children(cp: ControlPlane, name: str) -> dict[str, list[str]]:
    selector = f"speedrun.dev/job={name}"
    paths = {"configmaps": "/api/v1", "services": "/api/v1", "jobs": "/apis/batch/v1", "pods": "/api/v1"}
    return {plural: sorted(o["metadata"]["name"] for o in cp.admin.list(f"{base}/namespaces/{NAMESPACE}/{plural}",
                                                                          labels=selector))
            for plural, base in paths.items()}  # fmt: skip


def pull_refused(pod: dict[str, Any]) -> bool:
    """The pod's kubelet tried the chart's trainer image and could not pull it."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return any(((s.get("state") or {}).get("waiting") or {}).get("reason") in PULL_REASONS for s in statuses)


def held_pods(cp: ControlPlane) -> list[dict[str, Any]]:
    return cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labels="speedrun.dev/job=held")


def manifest(name: str, **changes: Any) -> dict[str, Any]:
    doc = tiny_manifest(**changes)
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    return doc


def test_chart_rbac_suffices_from_apply_to_garbage_collection(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, operator: ChartOperator
) -> None:
    cp = control_plane
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(manifest("held")))
    wait(lambda: len(children(cp, "held")["pods"]) == 2, "the Job controller's two training pods")
    uid = srj(cp, "held")["metadata"]["uid"]

    found = children(cp, "held")
    assert found == {"configmaps": ["held-run"], "services": ["held"], "jobs": ["held-train"],
                     "pods": found["pods"]}  # fmt: skip
    for path in (f"/api/v1/namespaces/{NAMESPACE}/configmaps/held-run", f"/api/v1/namespaces/{NAMESPACE}/services/held",
                 f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/held-train"):  # fmt: skip
        [owner] = cp.admin.get(path)["metadata"]["ownerReferences"]
        assert owner["uid"] == uid and owner["controller"] is True
    pods = held_pods(cp)
    indexes = sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"] and all(p["spec"]["hostname"].startswith("held-train-") for p in pods)
    # Both bound to real nodes, whose kubelets fail the pull: the pods exist and never run.
    refused = wait(lambda: len(held := held_pods(cp)) == 2 and all(map(pull_refused, held)) and held,
                   "both pods' kubelets to fail the trainer image's pull", timeout=120)  # fmt: skip
    assert {p["spec"]["nodeName"] for p in refused} <= set(kube_nodes.names), refused
    assert wait(lambda: phase(cp, "held"), "a phase") == "Pending"

    table = kubectl.run("get", "srj", "held", "-n", NAMESPACE).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "PHASE", "NODES"] and table[1].split()[:3] == ["held", "Pending", "2"]

    kubectl.run("delete", "srj", "held", "-n", NAMESPACE, "--wait=true", "--timeout=60s")
    wait(lambda: not any(children(cp, "held").values()), "the children and pods garbage-collected", timeout=90)
    assert operator.forbidden() == []


def test_invalid_spec_fails_with_the_field_in_a_status_the_apiserver_accepts(
    control_plane: ControlPlane, kubectl: Kubectl, operator: ChartOperator
) -> None:
    cp = control_plane
    # Admitted by the CRD schema and its CEL rules (this rule has no CEL twin), refused by the model.
    doc = manifest("invalid", **{"spec.train.batchSize": 12, "spec.train.deviceBatchSize": 8})
    kubectl.run("apply", "-f", "-", stdin=json.dumps(doc))
    wait(lambda: phase(cp, "invalid") == "Failed", "phase Failed")
    conditions = {c["type"]: c for c in srj(cp, "invalid")["status"]["conditions"]}
    assert conditions["Validated"]["status"] == "False" and conditions["Validated"]["reason"] == "InvalidSpec"
    assert conditions["Validated"]["message"].startswith("spec.train.batchSize:")
    assert children(cp, "invalid") == {"configmaps": [], "services": [], "jobs": [], "pods": []}
    events = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/events", fields="involvedObject.name=invalid")
    assert [e["reason"] for e in events] == ["InvalidSpec"]
    kubectl.run("delete", "srj", "invalid", "-n", NAMESPACE)
    assert operator.forbidden() == []


def test_without_the_charts_rbac_the_operator_is_refused_and_that_is_seen(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    # The detector the fixtures rely on: with `rbac.create=false` the same operator is denied.
    namespace = "speedruns-no-rbac"
    release = install_chart(control_plane, "no-rbac", namespace, {**CHART_VALUES, "rbac.create": "false"})
    control_plane.namespace(namespace)
    overrides = {"SPEEDRUN_OPERATOR_METRICS_PORT": "0", "SPEEDRUN_OPERATOR_LIVENESS": ""}
    with chart_operator(control_plane, release, tmp_path, **overrides) as op:
        wait(op.forbidden, "the apiserver to refuse the operator's watch")
    user = f"system:serviceaccount:{namespace}:{release.service_account}"
    assert any(f'User "{user}" cannot' in line for line in op.forbidden()), op.forbidden()
