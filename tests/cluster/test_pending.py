"""Pods that do not start: the reason shown, a start-up deadline, Training only once all run.

Every reason is what Kubernetes itself reports: the scheduler's (a GPU request larger than any
node stays Unschedulable), the real kubelets' (tests/cluster/real_nodes.py): an image ref the
registry does not hold waits with ErrImagePull/ImagePullBackOff, a pod whose Secret is missing
with CreateContainerConfigError, a pod whose image is still being pulled with ContainerCreating
(the pull held in the slow registry's proxy, tests/cluster/slow_registry.py, on one node and
released on the other); a ResourceQuota, enforced by the apiserver's own admission and the
controller-manager's quota controller, keeps the Job controller from creating pods. The operator
is the chart's, under its RBAC (tests/cluster/operator_run.py); its training pods run the trainer
image `built_images` built, pulled on every node first so that no reason races a first pull.
Run: `pytest -m cluster tests/cluster/test_pending.py` (as root).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_run import ServedNamespace, served_namespace
from tests.cluster.real_nodes import RealNodes
from tests.cluster.real_speedrun import pull_on_every_node, split
from tests.cluster.slow_registry import SlowRegistry
from tests.support import images

pytestmark = pytest.mark.cluster

NAMESPACE = "pending-tests"
INDEX, JOB_NAME = "batch.kubernetes.io/job-completion-index", "batch.kubernetes.io/job-name"
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff")  # the kubelet alternates between them


def wait(predicate: Any, what: str, timeout: float = 180.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def served(
    control_plane: ControlPlane,
    kube_nodes: RealNodes,
    built_images: dict[str, images.Image],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedNamespace]:
    trainer = built_images["trainer"].ref
    control_plane.namespace(NAMESPACE)
    pull_on_every_node(control_plane, kube_nodes, NAMESPACE, trainer)
    repository, tag = split(trainer)
    # The default accelerator labels (none): only the GPU count decides scheduling.
    values = {"trainer.image.repository": repository, "trainer.image.tag": tag}
    with served_namespace(control_plane, NAMESPACE, tmp_path_factory.mktemp("operator"), **values) as served:
        yield served


def reasons(served: ServedNamespace, name: str) -> list[str]:
    return [e["reason"] for e in served.events(name)]


def waiting_reason(served: ServedNamespace, name: str, *accepted: str) -> dict[str, Any] | None:
    """The Training condition once it carries an `accepted` reason (and its Event was posted), else None."""
    cond = served.condition(name, "Training")
    return cond if cond.get("reason") in accepted and cond["reason"] in reasons(served, name) else None


def counted(served: ServedNamespace, name: str, ready: str) -> dict[str, Any] | None:
    cond = served.condition(name, "Training")
    return cond if cond.get("message", "").startswith(ready) else None


def job_failed(served: ServedNamespace, name: str) -> bool:
    conditions = ((served.job(name) or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Failed" and c["status"] == "True" for c in conditions)


def test_an_unschedulable_gpu_request_is_shown_then_fails_at_the_startup_deadline(
    served: ServedNamespace, kubectl: Kubectl
) -> None:
    # 4 GPUs on one node; the GPU node has 2.
    doc = served.manifest("toobig", **{"spec.resources.accelerator": "nvidia-h100-80gb", "spec.resources.nodes": 1,
                                       "spec.resources.procsPerNode": 4, "spec.train.batchSize": 16,
                                       "spec.runPolicy.startupDeadlineSeconds": 30})  # fmt: skip
    served.apply(kubectl, doc)
    shown = wait(lambda: waiting_reason(served, "toobig", "Unschedulable"), "reason Unschedulable")
    assert shown["status"] == "False" and "nvidia.com/gpu" in shown["message"], shown
    assert served.phase("toobig") == "Pending"

    wait(lambda: served.phase("toobig") == "Failed", "phase Failed at the start-up deadline", timeout=180)
    failed = served.condition("toobig", "Failed")
    assert failed["reason"] == "StartupDeadlineExceeded", failed
    assert "30 s" in failed["message"] and "Unschedulable" in failed["message"], failed
    assert reasons(served, "toobig")[-1] == "StartupDeadlineExceeded"
    # The Job controller ends the training Job and deletes its pods: nothing is left to start later.
    wait(lambda: job_failed(served, "toobig") and not served.pods("toobig"), "the training Job ended, pods gone")
    served.delete(kubectl, "toobig")


def test_a_pod_the_node_cannot_start_shows_the_kubelets_reason(
    served: ServedNamespace, slow_registry: SlowRegistry, kubectl: Kubectl
) -> None:
    missing = slow_registry.missing("pending-broken")  # a ref the registry does not hold
    served.apply(kubectl, served.manifest("broken", **{"spec.image": missing}))
    shown = wait(lambda: waiting_reason(served, "broken", *PULL_REASONS), "reason ErrImagePull or ImagePullBackOff")
    assert missing in shown["message"], shown
    assert served.phase("broken") == "Pending"
    served.delete(kubectl, "broken")


def test_a_missing_secret_shows_create_container_config_error(served: ServedNamespace, kubectl: Kubectl) -> None:
    doc = served.manifest("nosecret", **{"spec.storage": {"uri": "s3://bucket/runs",
                                                          "secretRef": {"name": "no-such-secret"}}})  # fmt: skip
    served.apply(kubectl, doc)
    shown = wait(lambda: waiting_reason(served, "nosecret", "CreateContainerConfigError"),
                 "reason CreateContainerConfigError")  # fmt: skip
    assert 'secret "no-such-secret" not found' in shown["message"], shown
    assert served.phase("nosecret") == "Pending"
    served.delete(kubectl, "nosecret")


def running_on(served: ServedNamespace, name: str) -> dict[str, str] | None:
    """Each training pod's index -> its node, once both pods are bound to nodes."""
    bound = {p["metadata"]["labels"].get(INDEX, ""): p["spec"].get("nodeName", "") for p in served.pods(name)
             if p["metadata"]["labels"].get(JOB_NAME) == f"{name}-train"}  # fmt: skip
    return bound if sorted(bound) == ["0", "1"] and all(bound.values()) else None


def test_one_ready_pod_of_two_is_not_training(
    served: ServedNamespace, slow_registry: SlowRegistry, kubectl: Kubectl
) -> None:
    slow = slow_registry
    slow.hold("pending-half")  # the image is being pulled on every node until released
    try:
        # 1.5 CPUs a pod: no node (2 CPUs each) holds both, so each rank pulls on its own node.
        served.apply(kubectl, served.manifest("half", **{"spec.image": slow.trainer("pending-half"),
                                                         "spec.resources.cpu": "1500m"}))  # fmt: skip
        nodes = wait(lambda: running_on(served, "half"), "both training pods bound to nodes")
        assert nodes["0"] != nodes["1"], nodes
        wait(lambda: {n for n, _ in slow.waiting("pending-half")} >= set(nodes.values()), "both nodes' pulls held")
        slow.release("pending-half", node=nodes["0"])  # rank 0's pull completes; rank 1's is still held
        wait(lambda: ((served.job("half") or {}).get("status") or {}).get("ready") == 1, "rank 0's pod ready")
        # The operator has seen the one ready pod once its condition says so; the phase stays Pending.
        shown = wait(lambda: counted(served, "half", "1 of 2"), "the condition counting 1 of 2 ready pods")
        assert shown["status"] == "False" and served.phase("half") == "Pending", shown
        assert "Running" not in reasons(served, "half")
        held = {n for n, _ in slow.waiting("pending-half")}
        assert held == {nodes["1"]}, held  # rank 1's node is still pulling
    finally:
        slow.release("pending-half")
    wait(lambda: "Running" in reasons(served, "half"), "the Training event once both pods run")
    served.delete(kubectl, "half")


def test_pods_the_job_controller_cannot_create_show_its_failed_create(
    served: ServedNamespace, kubectl: Kubectl
) -> None:
    quotas = f"/api/v1/namespaces/{served.namespace}/resourcequotas"
    served.cp.admin.create(quotas, {"apiVersion": "v1", "kind": "ResourceQuota",
                                    "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})  # fmt: skip
    try:
        served.apply(kubectl, served.manifest("overquota"))
        shown = wait(lambda: waiting_reason(served, "overquota", "FailedCreate"), "reason FailedCreate")
        assert "exceeded quota: no-pods" in shown["message"] and "job overquota-train" in shown["message"], shown
        assert shown["message"].startswith("0 of 2 training pods ready") and served.phase("overquota") == "Pending"
    finally:
        served.cp.admin.delete(f"{quotas}/no-pods")
    served.delete(kubectl, "overquota")
