"""GPU pods on a node labelled the EKS way: the chart's `trainer.acceleratorLabels` picks the labels.

The module adds one real node labelled as Karpenter labels the p5.48xlarge it launches on EKS
(`karpenter.k8s.aws/instance-gpu-name: h100`, `instance-gpu-memory: 81920`) and as NVIDIA's GPU
feature discovery labels it (`nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3`), with 8 x
`nvidia.com/gpu` (a node status patch) and the GPU taint. The session's own GPU node has 2 GPUs,
so an 8-GPU pod fits this node only. Two chart operators serve a namespace each: one with
`acceleratorLabels: eks`, whose 8 x H100 training pod the real scheduler binds to the EKS node;
one with `gke`, whose same pod selects `cloud.google.com/gke-accelerator`, which no node here
carries: it stays Unschedulable, the scheduler's reason shown in the Training condition. An
accelerator the table lacks (given `deviceFlops`) requests `nvidia.com/gpu` like any GPU and is
bound to the EKS node too. The pods' image is one no registry holds (NEVER_PULLED): being bound
is the proof, nothing trains. Run: `pytest -m cluster tests/cluster/test_accelerator_labels.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_run import ServedNamespace, served_namespace
from tests.cluster.real_nodes import GPU, NodeSpec, RealNodes

pytestmark = pytest.mark.cluster

EKS_NODE = "node-gpu-eks"
EKS_LABELS = {
    "karpenter.k8s.aws/instance-gpu-name": "h100",
    "karpenter.k8s.aws/instance-gpu-memory": "81920",
    "karpenter.k8s.aws/instance-gpu-manufacturer": "nvidia",
    "node.kubernetes.io/instance-type": "p5.48xlarge",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
}
NODES = (NodeSpec(EKS_NODE, labels=EKS_LABELS, taints=(f"{GPU}=present:NoSchedule",), resources={GPU: 8}),)


@pytest.fixture(scope="module")
def eks_node(kube_nodes: RealNodes) -> Iterator[str]:
    with kube_nodes.added(*NODES):
        yield EKS_NODE


def _served(cp: ControlPlane, namespace: str, profile: str, tmp: pytest.TempPathFactory) -> Any:
    cp.namespace(namespace)
    return served_namespace(cp, namespace, tmp.mktemp(namespace), **{"trainer.acceleratorLabels": profile})


@pytest.fixture(scope="module")
def eks(
    control_plane: ControlPlane, eks_node: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedNamespace]:
    with _served(control_plane, "labels-eks", "eks", tmp_path_factory) as served:
        yield served


@pytest.fixture(scope="module")
def gke(
    control_plane: ControlPlane, eks_node: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedNamespace]:
    with _served(control_plane, "labels-gke", "gke", tmp_path_factory) as served:
        yield served


def eight_gpus(served: ServedNamespace, name: str, **resources: Any) -> dict[str, Any]:
    """One node of 8 GPUs (the accelerator given), small requests beside them."""
    spec = {"nodes": 1, "procsPerNode": 8, "cpu": "100m", "memory": "128Mi", **resources}
    return served.manifest(name, **{"spec.resources": spec, "spec.train.batchSize": 32})


def train_pod(served: ServedNamespace, name: str) -> dict[str, Any] | None:
    pods = [p for p in served.pods(name) if p["metadata"]["labels"].get("speedrun.dev/role") == "train"]
    return pods[0] if len(pods) == 1 else None


def bound(served: ServedNamespace, name: str) -> dict[str, Any] | None:
    pod = train_pod(served, name)
    return pod if pod is not None and pod["spec"].get("nodeName") else None


def test_eks_labels_put_the_gpu_pod_on_the_eks_node(eks: ServedNamespace, kubectl: Kubectl) -> None:
    name = "h100-eks"
    eks.apply(kubectl, eight_gpus(eks, name, accelerator="nvidia-h100-80gb"))
    try:
        pod = wait_until(lambda: bound(eks, name), 180, "the training pod bound to a node", interval=0.5)
        assert pod["spec"]["nodeName"] == EKS_NODE
        assert pod["spec"]["nodeSelector"] == {"karpenter.k8s.aws/instance-gpu-name": "h100"}
        [container] = pod["spec"]["containers"]
        assert container["resources"]["limits"][GPU] == "8"
    finally:
        eks.delete(kubectl, name)


def test_an_accelerator_the_table_lacks_requests_gpus(eks: ServedNamespace, kubectl: Kubectl) -> None:
    """A GPU the table lacks (deviceFlops given) asks for nvidia.com/gpu, so it lands on a GPU node,
    never on a CPU node training on the CPU."""
    name = "b200"
    eks.apply(kubectl, eight_gpus(eks, name, accelerator="nvidia-b200", deviceFlops=2.25e15))
    try:
        pod = wait_until(lambda: bound(eks, name), 180, "the training pod bound to a node", interval=0.5)
        [container] = pod["spec"]["containers"]
        assert container["resources"]["limits"].get(GPU) == "8", container["resources"]
        assert pod["spec"]["nodeName"] == EKS_NODE
    finally:
        eks.delete(kubectl, name)


def unschedulable(served: ServedNamespace, name: str) -> dict[str, Any] | None:
    cond = served.condition(name, "Training")
    return cond if cond.get("reason") == "Unschedulable" else None


def test_gke_labels_leave_the_same_pod_unschedulable_with_the_reason(gke: ServedNamespace, kubectl: Kubectl) -> None:
    name = "h100-gke"
    gke.apply(kubectl, eight_gpus(gke, name, accelerator="nvidia-h100-80gb"))
    try:
        shown = wait_until(lambda: unschedulable(gke, name), 180, "reason Unschedulable", interval=0.5)
        assert "node affinity/selector" in shown["message"], shown  # the scheduler's own words
        pod = train_pod(gke, name)
        assert pod is not None and not pod["spec"].get("nodeName"), pod
        assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
        assert gke.phase(name) == "Pending"
    finally:
        gke.delete(kubectl, name)
