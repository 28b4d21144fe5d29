"""A SpeedrunJob can be deleted while the operator is gone: it carries no finalizer.

A finalizer on a SpeedrunJob is released only by a running operator: with the operator
uninstalled or down, `kubectl delete srj` (and so `kubectl delete namespace`, which waits for
every object in it) would hang. The operator keeps none (its children go by ownerReference
garbage collection, which needs no operator; its periodic work is not a kopf timer, which would
add one): this runs a SpeedrunJob to its children on the real control plane, stops the
operator, deletes the SpeedrunJob and waits for it and its children to be gone. The training
pods go to the real nodes and wait there on an image no registry holds: nothing trains.
Run: `pytest -m cluster tests/cluster/test_finalizer.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.chart import NEVER_PULLED, chart_operator, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.real_nodes import RealNodes
from tests.support.helpers import tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-gone"
VALUES = {
    "operator.defaultStorageUri": "s3://speedrun-test/runs",
    "operator.resyncInterval": "5",
    **NEVER_PULLED,
}  # the pods wait in ErrImagePull: chart.py
CHILDREN = {"configmaps": "/api/v1", "services": "/api/v1", "jobs": "/apis/batch/v1"}


def wait(predicate: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


def children(cp: ControlPlane) -> list[str]:
    ours = "speedrun.dev/job=gone"
    return [f"{plural}/{o['metadata']['name']}" for plural, base in CHILDREN.items()
            for o in cp.admin.list(f"{base}/namespaces/{NAMESPACE}/{plural}", labels=ours)]  # fmt: skip


def pods(cp: ControlPlane) -> list[str]:
    return [p["metadata"]["name"] for p in cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods",
                                                         labels="speedrun.dev/job=gone")]  # fmt: skip


def test_a_speedrunjob_is_deleted_while_the_operator_is_down(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, tmp_path: Path
) -> None:
    cp = control_plane
    release = install_chart(cp, "speedrun-gone", NAMESPACE, VALUES)
    cp.namespace(NAMESPACE)
    srj_path = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs/gone"
    with chart_operator(cp, release, tmp_path, SPEEDRUN_OPERATOR_METRICS_PORT="0",
                        SPEEDRUN_OPERATOR_LIVENESS="") as operator:  # fmt: skip
        doc = tiny_manifest()
        doc["metadata"] = {"name": "gone", "namespace": NAMESPACE}
        kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))
        wait(lambda: len(children(cp)) == 3, "the ConfigMap, Service and training Job")
        wait(lambda: pods(cp), "the training pods")
        wait(lambda: (cp.admin.get(srj_path) or {}).get("status", {}).get("phase"), "a phase in the status")
        assert operator.forbidden() == []
    finalizers = (cp.admin.get(srj_path) or {})["metadata"].get("finalizers") or []
    proc = kubectl.run("delete", "srj", "gone", "-n", NAMESPACE, "--wait=true", "--timeout=50s", check=False)
    assert proc.returncode == 0, f"{proc.stderr.strip()} (the SpeedrunJob's finalizers: {finalizers})"
    assert cp.admin.get(srj_path) is None
    wait(lambda: not children(cp), "the children garbage-collected without the operator")
    # The training Job's pods go the same way: the garbage collector deletes them and their
    # kubelets end them.
    wait(lambda: not pods(cp), "the training pods garbage-collected and ended by their kubelets")
