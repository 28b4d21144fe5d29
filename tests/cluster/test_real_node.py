"""Real nodes (kubelet v1.36.3 + containerd 2.x + runc + CNI) under the control plane, each
part for real — images imported and pulled from a loopback registry, pods
run in containers, logs and exec through the apiserver, real pull and config errors, extended
resources from a node status patch, a stopped kubelet's node going NotReady."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from speedrun_trainer.cli.launch import free_port
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kube_proxy import KubeProxy
from tests.cluster.kubectl import Kubectl
from tests.cluster.pki import SERVICE_IP
from tests.cluster.real_nodes import RealNodes, real_node_pod

pytestmark = pytest.mark.cluster
NS = "real-node-test"


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane, kube_nodes: RealNodes) -> Iterator[str]:
    control_plane.namespace(NS)
    yield NS
    control_plane.drain(NS, f"/api/v1/namespaces/{NS}/pods")


def create(cp: ControlPlane, pod: dict[str, Any]) -> str:
    cp.admin.create(f"/api/v1/namespaces/{NS}/pods", pod)
    return str(pod["metadata"]["name"])


def pod_status(cp: ControlPlane, name: str) -> dict[str, Any]:
    return (cp.admin.get(f"/api/v1/namespaces/{NS}/pods/{name}") or {}).get("status", {})


def wait_phase(cp: ControlPlane, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = pod_status(cp, name)
        if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
            raise AssertionError(f"pod {name} ended {status['phase']}, not {phase}: {status}")
        return status if status.get("phase") == phase else None

    return dict(wait_until(reached, timeout, f"pod {name} {phase}", interval=0.2))


def waiting_reason(cp: ControlPlane, name: str) -> str:
    for container in pod_status(cp, name).get("containerStatuses") or []:
        return str((container.get("state", {}).get("waiting") or {}).get("reason", ""))
    return ""


def wait_reason(cp: ControlPlane, name: str, accept: Callable[[str], bool], timeout: float = 90) -> str:
    def accepted() -> str:
        reason = waiting_reason(cp, name)
        return reason if accept(reason) else ""

    return str(wait_until(accepted, timeout, f"pod {name}'s waiting reason", interval=0.2))


def test_nodes_are_kubelets_on_containerd(kube_nodes: RealNodes, kubectl: Kubectl) -> None:
    header, *lines = kubectl.run("get", "nodes", "-o", "wide").stdout.splitlines()
    columns = header.split()
    starts = [header.index(f" {c} ") + 1 if i else 0 for i, c in enumerate(columns[:-1])] + [header.rindex(" ") + 1]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))  # the columns are aligned; OS-IMAGE has spaces
    rows = {line.split()[0]: {c: line[a:b].strip() for c, (a, b) in zip(columns, bounds, strict=True)}
            for line in lines}  # fmt: skip
    for name in kube_nodes.names:
        row = rows[name]
        assert row["STATUS"] == "Ready" and row["VERSION"] == "v1.36.3", row
        assert row["CONTAINER-RUNTIME"].startswith("containerd://2."), row
        assert row["INTERNAL-IP"] == kube_nodes.nodes[name].address.ip, row


def test_pod_runs_to_success_and_logs_through_the_apiserver(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, ns: str
) -> None:
    started = time.monotonic()
    name = create(control_plane, real_node_pod("hello", kube_nodes.hello.name, ["from", "a", "container"]))
    status = wait_phase(control_plane, name, "Succeeded")
    print(f"\nhello pod Succeeded {time.monotonic() - started:.1f} s after create")
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    subnet = ipaddress.ip_network(kube_nodes.nodes[status_node(control_plane, name)].address.pod_subnet)
    assert ipaddress.ip_address(status["podIP"]) in subnet, status["podIP"]
    logs = kubectl.run("logs", "-n", ns, name).stdout
    assert logs.strip() == "hello from hello: from a container"


def test_pods_resolve_cluster_names_through_coredns(control_plane: ControlPlane, kube_nodes: RealNodes,
                                                     kubectl: Kubectl, ns: str) -> None:  # fmt: skip
    """The kubelet's clusterDNS: the pod's resolv.conf names the session's CoreDNS, reached over
    the node's bridge, and it answers with the `kubernetes` Service's ClusterIP."""
    name = create(control_plane, real_node_pod("resolver", kube_nodes.hello.name,
                                               ["resolve", "kubernetes.default.svc.cluster.local"]))  # fmt: skip
    wait_phase(control_plane, name, "Succeeded")
    dns = kube_nodes.nodes[status_node(control_plane, name)].cluster_dns
    answer = kubectl.run("logs", "-n", ns, name).stdout.strip()
    assert answer == f"kubernetes.default.svc.cluster.local via {dns}: {SERVICE_IP}"


def test_pods_reach_the_apiserver_through_its_service_ip(
    control_plane: ControlPlane, kube_nodes: RealNodes, service_proxy: KubeProxy, kubectl: Kubectl, ns: str
) -> None:
    """An in-cluster client's first step: a TCP connection to the `kubernetes` Service's ClusterIP,
    which only kube-proxy's rules turn into the apiserver's address (without them: "failed")."""
    for node in kube_nodes.names:
        name = create(control_plane, real_node_pod(f"dial-{node}", kube_nodes.hello.name,
                                                   ["connect", SERVICE_IP, "443"], node=node))  # fmt: skip
        wait_phase(control_plane, name, "Succeeded")
        assert kubectl.run("logs", "-n", ns, name).stdout.strip() == f"connect {SERVICE_IP}:443: connected"


def status_node(cp: ControlPlane, name: str) -> str:
    return str(cp.admin.get(f"/api/v1/namespaces/{NS}/pods/{name}")["spec"]["nodeName"])  # type: ignore[index]


def test_exec_into_a_running_container(control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl,
                                       ns: str) -> None:  # fmt: skip
    name = create(control_plane, real_node_pod("sleeper", kube_nodes.hello.name, ["sleep"]))
    wait_phase(control_plane, name, "Running")
    out = kubectl.run("exec", "-n", ns, name, "--", "/hello", "exec", "works").stdout
    assert out.strip() == "hello from sleeper: exec works"
    failed = kubectl.run("exec", "-n", ns, name, "--", "/hello", "exit", "3", check=False)
    assert failed.returncode == 3, failed.stderr


def test_security_context_user_and_deletion_end_the_container(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, ns: str
) -> None:
    """runc runs the container as the securityContext's user; `kubectl delete pod` has the kubelet
    stop it (SIGTERM to the sleeping `hello`) and the runtime forget it."""
    user = {"runAsUser": 1000, "runAsGroup": 3000}
    name = create(control_plane, real_node_pod("ids", kube_nodes.hello.name, ["ids"], securityContext=user))
    wait_phase(control_plane, name, "Succeeded")
    assert kubectl.run("logs", "-n", ns, name).stdout.strip() == "uid=1000 gid=3000"
    sleeper = create(control_plane, real_node_pod("deleted", kube_nodes.hello.name, ["sleep"]))
    status = wait_phase(control_plane, sleeper, "Running")
    container_id = status["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    runtime = kube_nodes.nodes[status_node(control_plane, sleeper)].runtime
    assert container_id in runtime.ctr("containers", "list", "-q").stdout.split()
    kubectl.run("delete", "pod", "-n", ns, sleeper, "--wait=true")
    wait_until(lambda: container_id not in runtime.ctr("containers", "list", "-q").stdout.split(), 60,
               "the container removed from containerd")  # fmt: skip


def test_missing_image_is_a_real_pull_error(control_plane: ControlPlane, kube_nodes: RealNodes, ns: str) -> None:
    name = create(control_plane, real_node_pod("no-image", "localhost/speedrun-test/missing:0", []))
    reason = wait_reason(control_plane, name, lambda r: r in ("ErrImagePull", "ImagePullBackOff"))
    assert reason in ("ErrImagePull", "ImagePullBackOff")
    message = pod_status(control_plane, name)["containerStatuses"][0]["state"]["waiting"].get("message", "")
    assert "localhost/speedrun-test/missing:0" in message, message


def test_missing_secret_is_a_real_config_error(control_plane: ControlPlane, kube_nodes: RealNodes, ns: str) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "token"}}}]
    name = create(control_plane, real_node_pod("no-secret", kube_nodes.hello.name, [], env=env))
    assert wait_reason(control_plane, name, lambda r: r == "CreateContainerConfigError") == "CreateContainerConfigError"
    message = pod_status(control_plane, name)["containerStatuses"][0]["state"]["waiting"].get("message", "")
    assert 'secret "absent" not found' in message, message


def test_gpu_capacity_from_a_node_status_patch(control_plane: ControlPlane, kube_nodes: RealNodes, ns: str) -> None:
    gpu_node = kube_nodes.names[-1]
    kube_nodes.advertise(gpu_node, "nvidia.com/gpu", 2)
    gpus = {"limits": {"nvidia.com/gpu": "2"}}
    name = create(control_plane, real_node_pod("gpu", kube_nodes.hello.name, ["gpu"], resources=gpus))
    wait_phase(control_plane, name, "Succeeded")
    assert status_node(control_plane, name) == gpu_node
    too_many = create(control_plane, real_node_pod("gpu-3", kube_nodes.hello.name, [],
                                                   resources={"limits": {"nvidia.com/gpu": "3"}}))  # fmt: skip

    def scheduled() -> dict[str, Any] | None:
        conditions = pod_status(control_plane, too_many).get("conditions") or []
        return next((c for c in conditions if c["type"] == "PodScheduled"), None)

    condition = wait_until(scheduled, 30, "the scheduler's verdict")
    assert condition["reason"] == "Unschedulable" and "nvidia.com/gpu" in condition["message"], condition


def test_stopped_kubelet_makes_its_node_not_ready(control_plane: ControlPlane, kube_nodes: RealNodes,
                                                  kubectl: Kubectl) -> None:  # fmt: skip
    node = kube_nodes.names[0]
    kube_nodes.stop_kubelet(node)
    try:
        wait_until(lambda: kubectl.run("get", "node", node, "--no-headers").stdout.split()[1] == "NotReady", 90,
                   f"{node} NotReady", interval=1)  # fmt: skip
        ready = next(c for c in control_plane.admin.get(f"/api/v1/nodes/{node}")["status"]["conditions"]  # type: ignore[index]
                     if c["type"] == "Ready")  # fmt: skip
        assert ready["status"] == "Unknown" and ready["reason"] == "NodeStatusUnknown", ready
    finally:
        kube_nodes.start_kubelet(node)
    assert kube_nodes.nodes[node].ready()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, kube_nodes: RealNodes) -> Iterator[str]:
    """Debian's docker-registry (the distribution registry) on loopback, plain HTTP, trusted by the nodes."""
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` (apt: {tool})")
    workdir = tmp_path_factory.mktemp("registry")
    host = f"127.0.0.1:{free_port()}"
    config = workdir / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
                      f"http:\n  addr: {host}\nlog:\n  level: warn\n")  # fmt: skip
    with (workdir / "registry.log").open("wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: registry_up(host), 30, "the registry")
        kube_nodes.trust_registry(host)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def registry_up(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def push(archive: Path, reference: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci-archive:{archive}",
                    f"docker://{reference}"], check=True, capture_output=True)  # fmt: skip


def test_pull_from_a_loopback_registry(control_plane: ControlPlane, kube_nodes: RealNodes, registry: str,
                                       kubectl: Kubectl, ns: str) -> None:  # fmt: skip
    image = f"{registry}/speedrun-test/pulled:1"
    push(kube_nodes.hello.archive, image)
    pod = real_node_pod("pulled", image, ["pulled"], imagePullPolicy="Always")
    name = create(control_plane, pod)
    wait_phase(control_plane, name, "Succeeded")
    assert kubectl.run("logs", "-n", ns, name).stdout.strip() == "hello from pulled: pulled"
    events = kubectl.run("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}").stdout
    assert f'Successfully pulled image "{image}"' in events, events
    missing = create(control_plane, real_node_pod("pull-missing", f"{registry}/speedrun-test/absent:1", []))
    assert wait_reason(control_plane, missing, lambda r: r in ("ErrImagePull", "ImagePullBackOff"))
    message = pod_status(control_plane, missing)["containerStatuses"][0]["state"]["waiting"].get("message", "")
    assert "not found" in message, message
