"""The namespaced install on the real control plane, by a tenant who may not touch the cluster scope.

A cluster admin has applied the CRD once; the tenant (a ServiceAccount with every right in its
namespace and none outside, tests/cluster/tenant.py) installs the chart with `helm install
--skip-crds` under its own token, and the operator, running with the chart's ServiceAccount
token, takes a SpeedrunJob to its children without one refused request: no ClusterRole is
rendered and the operator makes no cluster-scoped call (kopf's Namespace/CRD scanning is off).
The apiserver's audit log is the witness for the second part. It also shows the operator's Job
watch carries the server-side label selector, so unrelated Jobs are never sent to it. The training
pods go to the real nodes and wait there on an image no registry holds: nothing trains.
Run: `pytest -m cluster tests/cluster/test_namespaced.py`.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from speedrun_trainer.cli.launch import free_port
from tests.cluster.chart import NEVER_PULLED, PULL_REASONS, ChartOperator, chart_operator
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.real_nodes import RealNodes
from tests.cluster.tenant import helm_install_as, namespace_admin
from tests.support.helpers import ROOT, tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-tenant"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
VALUES = {
    "operator.defaultStorageUri": "s3://speedrun-test/runs",
    "operator.resyncInterval": "5",
    "rbac.readNodes": "false",  # a ClusterRole (get nodes): not the tenant's to create
    **NEVER_PULLED,
}  # the pods wait in ErrImagePull: chart.py
MANAGED = "app.kubernetes.io/managed-by=speedrun-operator"


def wait(predicate: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


def training_reason(cp: ControlPlane) -> str:
    conditions = ((cp.admin.get(f"{SRJ_PATH}/tenant") or {}).get("status") or {}).get("conditions") or []
    return next((c.get("reason", "") for c in conditions if c["type"] == "Training"), "")


def audit_requests(cp: ControlPlane, user: str) -> list[dict[str, Any]]:
    """The audit log's completed requests made by `user`."""
    events = (json.loads(line) for line in cp.audit_log.read_text().splitlines())
    return [e for e in events if e.get("stage") in ("ResponseComplete", "ResponseStarted")
            and e["user"].get("username") == user]  # fmt: skip


@pytest.fixture(scope="module")
def tenant_operator(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    cp = control_plane
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "speedrunjob.yaml"))
    tenant = namespace_admin(cp, NAMESPACE)
    release = helm_install_as(cp, tenant, "speedrun", NAMESPACE, VALUES, "--skip-crds")
    overrides = {"SPEEDRUN_OPERATOR_METRICS_PORT": str(free_port()), "SPEEDRUN_OPERATOR_LIVENESS": ""}
    with chart_operator(cp, release, tmp_path_factory.mktemp("tenant-operator"), **overrides) as op:
        yield op
        cp.drain(NAMESPACE, SRJ_PATH)
    assert op.forbidden() == [], "the namespaced chart's RBAC refused the operator"


def test_a_namespace_admin_installs_and_runs_a_speedrun_with_namespaced_rbac_only(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, tenant_operator: ChartOperator
) -> None:
    cp = control_plane
    doc = tiny_manifest()
    doc["metadata"] = {"name": "tenant", "namespace": NAMESPACE}
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    wait(lambda: cp.admin.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/tenant-train"), "the training Job")
    assert cp.admin.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/tenant-run")
    assert cp.admin.get(f"/api/v1/namespaces/{NAMESPACE}/services/tenant")
    # Its pods reached a real kubelet, which refuses the image; the operator reads their status
    # and posts the reason (a Warning Event) inside the namespace too.
    wait(lambda: training_reason(cp) in PULL_REASONS, "the kubelet's pull error in the Training condition", 120)
    assert tenant_operator.forbidden() == []
    release = tenant_operator.release
    user = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    requests = wait(lambda: audit_requests(cp, user), "the operator's requests in the audit log")
    # Discovery (/api, /apis/<group>/<version>) names no object; a cluster-scoped call names a
    # resource without a namespace (Namespaces, CRDs, KopfPeerings cluster-wide, ...).
    cluster_scoped = sorted({e["requestURI"] for e in requests if (e.get("objectRef") or {}).get("resource")
                             and not e["objectRef"].get("namespace")})  # fmt: skip
    assert cluster_scoped == [], f"cluster-scoped calls of a namespaced operator: {cluster_scoped}"


def test_the_job_watch_is_filtered_by_the_server(control_plane: ControlPlane, tenant_operator: ChartOperator) -> None:
    cp = control_plane
    release = tenant_operator.release
    user = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    job_watches = wait(lambda: [e["requestURI"] for e in audit_requests(cp, user)
                                if e.get("verb") == "watch" and (e.get("objectRef") or {}).get("resource") == "jobs"],
                       "the operator's watch of Jobs in the audit log")  # fmt: skip
    for uri in job_watches:
        selectors = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("labelSelector", [])
        assert selectors and MANAGED in selectors[0].split(","), f"a Job watch without the server-side selector: {uri}"
