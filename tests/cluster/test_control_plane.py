"""The control-plane tier itself: real etcd, apiserver, controllers and scheduler, our node agent.

These check what the operator's tests rely on: RBAC is enforced for ServiceAccount tokens, the
real Job controller runs an Indexed Job's pods on the nodes the scheduler picks, GPU capacity
decides placement, pods get their env, volumes and status as from a kubelet, held and refused
pods wait with the kubelet's reasons, deletion completes, and (as root) pods resolve each other
through CoreDNS, and run as their securityContext's user. Run: `pytest -m cluster tests/cluster/test_control_plane.py`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.api import ApiError
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.network import NamespaceNetwork
from tests.cluster.node_agent import NodeAgent
from tests.cluster.real_nodes import CPU_NODES, GPU_NODE

pytestmark = pytest.mark.cluster

_numbers = itertools.count()
INDEX = "batch.kubernetes.io/job-completion-index"


def wait(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    name = f"cp-test-{next(_numbers)}"
    control_plane.namespace(name)
    return name


def job(name: str, script: str, completions: int = 1, **pod_spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11", "command": ["python", "-c", script]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions, "parallelism": completions, "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container], **pod_spec}},
        },
    }  # fmt: skip


def pods(cp: ControlPlane, ns: str, job_name: str) -> list[dict[str, Any]]:
    return cp.admin.list(f"/api/v1/namespaces/{ns}/pods", labels=f"batch.kubernetes.io/job-name={job_name}")


def job_condition(cp: ControlPlane, ns: str, name: str) -> set[str]:
    found = cp.admin.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}") or {}
    return {c["type"] for c in (found.get("status") or {}).get("conditions") or [] if c["status"] == "True"}


def test_service_account_token_is_held_to_rbac(control_plane: ControlPlane, ns: str) -> None:
    from tests.cluster.api import Api

    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}
    control_plane.admin.create(f"/api/v1/namespaces/{ns}/serviceaccounts", account)
    api = Api(control_plane.server, control_plane.pki.ca.cert, token=control_plane.token(ns, "nobody"))
    with pytest.raises(ApiError) as denied:
        api.list(f"/api/v1/namespaces/{ns}/pods")
    assert denied.value.status == 403 and f"system:serviceaccount:{ns}:nobody" in denied.value.message


def test_indexed_job_runs_on_the_scheduled_nodes(control_plane: ControlPlane, kube_nodes: NodeAgent, ns: str) -> None:
    cp = control_plane
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"x": "42"}}
    cp.admin.create(f"/api/v1/namespaces/{ns}/configmaps", config)
    # Paths reach the process as arguments and env values, where the agent maps mount paths
    # (no mount namespaces here); the termination log as the trainer finds it (docs/contracts.md).
    script = (
        "import os, pathlib, sys; idx = os.environ['JOB_COMPLETION_INDEX']; "
        "print('index', idx, 'x', pathlib.Path(sys.argv[1]).read_text(), 'pod', os.environ['POD']); "
        "pathlib.Path(os.environ['SPEEDRUN_TERMINATION_LOG']).write_text('done ' + idx)"
    )
    spec = job("hello", script, completions=2)
    container = spec["spec"]["template"]["spec"]["containers"][0]
    container["args"] = ["/etc/cfg/x"]
    container["env"] = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    container["volumeMounts"] = [{"name": "cfg", "mountPath": "/etc/cfg"}]
    spec["spec"]["template"]["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "cfg"}}]
    cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", spec)

    wait(lambda: "Complete" in job_condition(cp, ns, "hello"), "Job hello Complete")
    conditions = job_condition(cp, ns, "hello")
    assert conditions == {"SuccessCriteriaMet", "Complete"}, conditions
    found = sorted(pods(cp, ns, "hello"), key=lambda p: p["metadata"]["labels"][INDEX])
    assert [p["status"]["phase"] for p in found] == ["Succeeded", "Succeeded"]
    assert {p["spec"]["nodeName"] for p in found} <= {*CPU_NODES, GPU_NODE}
    for index, pod in enumerate(found):
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        exit_code, reason, message = terminated["exitCode"], terminated["reason"], terminated["message"]
        assert (exit_code, reason, message) == (0, "Completed", f"done {index}")
        assert f"index {index} x 42 pod {pod['metadata']['name']}" in kube_nodes.log(pod["metadata"]["name"])
        assert {c["type"] for c in pod["status"]["conditions"]} >= {"PodScheduled", "Initialized", "Ready"}


def test_gpu_requests_are_scheduled_by_capacity(control_plane: ControlPlane, kube_nodes: NodeAgent, ns: str) -> None:
    cp = control_plane
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "2"}}}
    fits = job("fits", "print('on a gpu node')")
    fits["spec"]["template"]["spec"]["containers"][0].update(gpu)
    too_big = job("too-big", "print('never')")
    too_big["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "3"}}
    for body in (fits, too_big):
        cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", body)

    wait(lambda: "Complete" in job_condition(cp, ns, "fits"), "Job fits Complete")
    assert [p["spec"]["nodeName"] for p in pods(cp, ns, "fits")] == [GPU_NODE]

    def unschedulable() -> bool:
        found = pods(cp, ns, "too-big")
        scheduled = [c for p in found for c in p["status"].get("conditions") or [] if c["type"] == "PodScheduled"]
        return bool(scheduled) and scheduled[0]["status"] == "False" and scheduled[0]["reason"] == "Unschedulable"

    wait(unschedulable, "the 3-GPU pod reported Unschedulable")
    assert "nodeName" not in pods(cp, ns, "too-big")[0]["spec"]


def test_held_and_refused_pods_wait_with_the_kubelets_reasons(
    control_plane: ControlPlane, kube_nodes: NodeAgent, ns: str
) -> None:
    cp = control_plane
    kube_nodes.hold("slow-")
    kube_nodes.refuse("broken-")
    for name in ("slow", "broken"):
        cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job(name, "print('ran')"))

    def waiting(name: str) -> str:
        found = pods(cp, ns, name)
        statuses = found[0]["status"].get("containerStatuses") if found else None
        return (statuses[0]["state"].get("waiting") or {}).get("reason", "") if statuses else ""

    assert wait(lambda: waiting("slow"), "slow pod waiting") == "ContainerCreating"
    assert wait(lambda: waiting("broken"), "broken pod waiting") == "ErrImagePull"
    kube_nodes.release("slow-")
    wait(lambda: "Complete" in job_condition(cp, ns, "slow"), "Job slow Complete after release")
    assert pods(cp, ns, "broken")[0]["status"]["phase"] == "Pending"


def test_deleting_a_job_stops_and_collects_its_pods(
    control_plane: ControlPlane, kube_nodes: NodeAgent, ns: str
) -> None:
    cp = control_plane
    cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job("sleeper", "import time; time.sleep(600)"))
    wait(lambda: [p for p in pods(cp, ns, "sleeper") if p["status"].get("phase") == "Running"], "sleeper Running")
    cp.admin.delete(f"/apis/batch/v1/namespaces/{ns}/jobs/sleeper")
    wait(lambda: not pods(cp, ns, "sleeper"), "the sleeper's pod gone (garbage collector, then the agent)")


def test_pods_resolve_each_other_through_cluster_dns(
    control_plane: ControlPlane, kube_nodes: NodeAgent, ns: str
) -> None:
    if not isinstance(kube_nodes.network, NamespaceNetwork):
        pytest.skip(f"cluster DNS needs per-pod network namespaces: {kube_nodes.network.reason}")
    cp = control_plane
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                        "selector": {"job-name": "dns"}}}  # fmt: skip
    cp.admin.create(f"/api/v1/namespaces/{ns}/services", service)
    # Each pod resolves its peer's name and talks to it over TCP, and stays until its peer has
    # talked to it: a pod that exits leaves the EndpointSlice (terminal pods are not endpoints),
    # so one that resolved its peer and left at once would take its own name away before the
    # peer looked it up (the flake this test had while each pod only resolved and exited).
    script = (
        "import os, socket, threading, time\n"
        "me = int(os.environ['JOB_COMPLETION_INDEX'])\n"
        "server = socket.create_server(('', 7000))\n"
        "server.settimeout(90)\n"
        "heard = []\n"
        "def serve():\n"
        "    conn, _ = server.accept()\n"
        "    heard.append(conn.recv(100).decode())\n"
        "    conn.sendall(b'ok')\n"
        "    conn.close()\n"
        "listener = threading.Thread(target=serve)\n"
        "listener.start()\n"
        "deadline = time.monotonic() + 90\n"
        "while True:\n"
        "    try:\n"
        "        peer = socket.gethostbyname(f'dns-{1 - me}.peers')\n"
        "        with socket.create_connection((peer, 7000), timeout=5) as conn:\n"
        "            conn.sendall(f'dns-{me}'.encode())\n"
        "            assert conn.recv(10) == b'ok'\n"
        "        break\n"
        "    except OSError as err:\n"
        "        if time.monotonic() > deadline:\n"
        "            raise SystemExit(f'dns-{1 - me}.peers never answered: {err}')\n"
        "        time.sleep(0.2)\n"
        "listener.join()\n"
        "print('peer', peer, 'me', socket.gethostbyname(socket.gethostname()), 'heard', heard[0])\n"
    )
    spec = job("dns", script, completions=2, subdomain="peers")
    cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", spec)
    wait(lambda: job_condition(cp, ns, "dns") & {"Complete", "Failed"}, "Job dns finished", timeout=150)
    found = {p["metadata"]["labels"][INDEX]: p for p in pods(cp, ns, "dns")}
    logs = {i: kube_nodes.log(found[i]["metadata"]["name"]) for i in ("0", "1")}
    assert job_condition(cp, ns, "dns") >= {"Complete"}, logs
    for me, peer in (("0", "1"), ("1", "0")):
        ips = found[peer]["status"]["podIP"], found[me]["status"]["podIP"]
        assert f"peer {ips[0]} me {ips[1]} heard dns-{peer}" in logs[me], logs[me]


def test_pods_run_as_their_security_contexts_user(
    control_plane: ControlPlane, kube_nodes: NodeAgent, ns: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching a pod's user needs root (the node agent then runs pods as its own user)")
    cp = control_plane
    guarded = tmp_path / "root-only"
    guarded.mkdir(mode=0o755)
    script = (
        "import os, pathlib, sys\n"
        "print('ids', os.getuid(), os.getgid(), sorted(os.getgroups()))\n"
        "pathlib.Path(sys.argv[1], 'mine').write_text('ok')\n"
        "try:\n"
        "    pathlib.Path(sys.argv[2], 'theirs').write_text('no')\n"
        "except PermissionError:\n"
        "    print('refused outside its volumes')\n"
    )
    spec = job("ids", script, securityContext={"runAsNonRoot": True, "runAsUser": 1234, "runAsGroup": 1235,
                                               "fsGroup": 2345})  # fmt: skip
    container = spec["spec"]["template"]["spec"]["containers"][0]
    container |= {"args": ["/scratch", str(guarded)], "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                  "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}}  # fmt: skip
    spec["spec"]["template"]["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    as_root = job("as-root", "print('never')", securityContext={"runAsNonRoot": True})
    for body in (spec, as_root):
        cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", body)

    wait(lambda: "Complete" in job_condition(cp, ns, "ids"), "Job ids Complete")
    log = kube_nodes.log(pods(cp, ns, "ids")[0]["metadata"]["name"])
    assert "ids 1234 1235 [2345]" in log and "refused outside its volumes" in log, log
    assert not (guarded / "theirs").exists()

    def waiting() -> dict[str, Any]:
        found = pods(cp, ns, "as-root")
        statuses = found[0]["status"].get("containerStatuses") if found else None
        return statuses[0]["state"].get("waiting") or {} if statuses else {}

    reason = wait(waiting, "the as-root pod refused")
    assert reason["reason"] == "CreateContainerConfigError" and "runAsNonRoot" in reason["message"], reason
