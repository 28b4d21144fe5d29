"""The control-plane tier itself: real etcd, apiserver, controllers and scheduler over real nodes.

These check what the operator's tests rely on, with every pod in a container on a real kubelet
(tests/cluster/real_nodes.py): RBAC is enforced for ServiceAccount tokens, the real Job controller
runs an Indexed Job's pods on the nodes the scheduler picks (their env, ConfigMap volume and
termination message as the kubelet gives them), a pod whose image is still being pulled waits with
ContainerCreating and one whose image does not exist with ErrImagePull (the slow registry's
held pull, tests/cluster/slow_registry.py, and a missing ref), deleting a Job stops and collects
its pods, pods resolve each other through CoreDNS by a headless Service's names, and run as their
securityContext's user and groups on a read-only root. Pods needing Python run the trainer image
(`built_images`, pulled on every node first); the others the static `hello` image. GPU placement by
capacity is test_real_node.py's (`test_gpu_capacity_from_a_node_status_patch`).
Run: `pytest -m cluster tests/cluster/test_control_plane.py` (as root).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster.api import ApiError
from tests.cluster.control_plane import ControlPlane, ControlPlaneError, wait_until
from tests.cluster.real_nodes import RealNodes
from tests.cluster.real_speedrun import pod_log, pull_on_every_node
from tests.cluster.slow_registry import SlowRegistry
from tests.support import images

pytestmark = pytest.mark.cluster

_numbers = itertools.count()
INDEX = "batch.kubernetes.io/job-completion-index"
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff")  # the kubelet alternates between them


def wait(predicate: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def trainer(control_plane: ControlPlane, kube_nodes: RealNodes, built_images: dict[str, images.Image]) -> str:
    """The trainer image's ref (Python for the pods that need it), pulled on every node."""
    control_plane.namespace("cp-images")
    pull_on_every_node(control_plane, kube_nodes, "cp-images", built_images["trainer"].ref)
    return built_images["trainer"].ref


@pytest.fixture
def ns(control_plane: ControlPlane) -> Iterator[str]:
    name = f"cp-test-{next(_numbers)}"
    control_plane.namespace(name)
    yield name
    control_plane.drain(name, f"/apis/batch/v1/namespaces/{name}/jobs")


def job(name: str, image: str, args: list[str], completions: int = 1, python: bool = False,
        **pod_spec: Any) -> dict[str, Any]:  # fmt: skip
    """An Indexed Job of `completions` pods running `image` with `args` (a script with `python`)."""
    container = {"name": "main", "image": image, "args": args, "imagePullPolicy": "IfNotPresent",
                 **({"command": ["python", "-c"]} if python else {})}  # fmt: skip
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions, "parallelism": completions, "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                                  "containers": [container], **pod_spec}},
        },
    }  # fmt: skip


def pods(cp: ControlPlane, ns: str, job_name: str) -> list[dict[str, Any]]:
    return cp.admin.list(f"/api/v1/namespaces/{ns}/pods", labels=f"batch.kubernetes.io/job-name={job_name}")


def job_condition(cp: ControlPlane, ns: str, name: str) -> set[str]:
    found = cp.admin.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}") or {}
    return {c["type"] for c in (found.get("status") or {}).get("conditions") or [] if c["status"] == "True"}


def waiting(cp: ControlPlane, ns: str, job_name: str) -> dict[str, Any]:
    """The first pod's container's `waiting` state ({} before the kubelet reports one)."""
    found = pods(cp, ns, job_name)
    statuses = found[0]["status"].get("containerStatuses") if found else None
    return (statuses[0]["state"].get("waiting") or {}) if statuses else {}


def pod_events(cp: ControlPlane, ns: str, pod: dict[str, Any]) -> list[dict[str, Any]]:
    return cp.admin.list(f"/api/v1/namespaces/{ns}/events", fields=f"involvedObject.name={pod['metadata']['name']}")


def wait_job(cp: ControlPlane, ns: str, job_name: str, predicate: Callable[[], Any], what: str,
             timeout: float = 120.0) -> Any:  # fmt: skip
    """`wait`, and on a timeout where the Job's pods are and what their kubelets said of them."""
    try:
        return wait(predicate, what, timeout)
    except ControlPlaneError as err:
        found = [(p["metadata"]["name"], p["spec"].get("nodeName"), p["status"].get("phase"),
                  [c.get("state") for c in p["status"].get("containerStatuses") or []],
                  [(e["reason"], e.get("message")) for e in pod_events(cp, ns, p)])
                 for p in pods(cp, ns, job_name)]  # fmt: skip
        raise AssertionError(f"{err}; pods of Job {job_name}: {found}") from None


def test_service_account_token_is_held_to_rbac(control_plane: ControlPlane, ns: str) -> None:
    from tests.cluster.api import Api

    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}
    control_plane.admin.create(f"/api/v1/namespaces/{ns}/serviceaccounts", account)
    api = Api(control_plane.server, control_plane.pki.ca.cert, token=control_plane.token(ns, "nobody"))
    with pytest.raises(ApiError) as denied:
        api.list(f"/api/v1/namespaces/{ns}/pods")
    assert denied.value.status == 403 and f"system:serviceaccount:{ns}:nobody" in denied.value.message


def test_indexed_job_runs_on_the_scheduled_nodes(
    control_plane: ControlPlane, kube_nodes: RealNodes, trainer: str, ns: str
) -> None:
    cp = control_plane
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"x": "42"}}
    cp.admin.create(f"/api/v1/namespaces/{ns}/configmaps", config)
    # The ConfigMap as a mounted file, the pod's name from the downward API, the index from the Job
    # controller; the termination message where the operator tells the trainer to write it
    # (SPEEDRUN_TERMINATION_LOG = terminationMessagePath: docs/contracts.md).
    script = (
        "import os, pathlib, sys; idx = os.environ['JOB_COMPLETION_INDEX']; "
        "print('index', idx, 'x', pathlib.Path(sys.argv[1]).read_text(), 'pod', os.environ['POD']); "
        "pathlib.Path(os.environ['SPEEDRUN_TERMINATION_LOG']).write_text('done ' + idx)"
    )
    spec = job("hello", trainer, [script, "/etc/cfg/x"], completions=2, python=True)
    container = spec["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "SPEEDRUN_TERMINATION_LOG", "value": "/dev/termination-log"}]  # fmt: skip
    container["volumeMounts"] = [{"name": "cfg", "mountPath": "/etc/cfg"}]
    spec["spec"]["template"]["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "cfg"}}]
    cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", spec)

    wait(lambda: job_condition(cp, ns, "hello") & {"Complete", "Failed"}, "Job hello finished")
    conditions = job_condition(cp, ns, "hello")
    found = sorted(pods(cp, ns, "hello"), key=lambda p: p["metadata"]["labels"][INDEX])
    logs = [pod_log(cp, p, lines=None) for p in found]
    assert conditions == {"SuccessCriteriaMet", "Complete"}, (conditions, logs)
    assert [p["status"]["phase"] for p in found] == ["Succeeded", "Succeeded"]
    assert {p["spec"]["nodeName"] for p in found} <= set(kube_nodes.names)
    for index, (pod, log) in enumerate(zip(found, logs, strict=True)):
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        exit_code, reason, message = terminated["exitCode"], terminated["reason"], terminated.get("message")
        assert (exit_code, reason, message) == (0, "Completed", f"done {index}")
        assert f"index {index} x 42 pod {pod['metadata']['name']}" in log, log
        assert {c["type"] for c in pod["status"]["conditions"]} >= {"PodScheduled", "Initialized", "Ready"}


def test_held_and_refused_pods_wait_with_the_kubelets_reasons(
    control_plane: ControlPlane, slow_registry: SlowRegistry, ns: str
) -> None:
    cp, slow = control_plane, slow_registry
    slow.hold("cp-slow")  # the pull of the slow Job's image waits in the registry proxy
    try:
        cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job("slow", slow.hello("cp-slow"), ["ran"]))
        cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job("broken", slow.missing("cp-broken"), []))
        assert wait(lambda: waiting(cp, ns, "slow").get("reason"), "slow pod waiting") == "ContainerCreating"
        # Really pulling: the kubelet said so (a Pulling Event), and its node's containerd is the
        # one whose request the proxy holds.
        pod = pods(cp, ns, "slow")[0]
        node = pod["spec"]["nodeName"]
        wait(lambda: [n for n, _ in slow.waiting("cp-slow") if n == node], f"{node}'s pull held in the proxy")
        pulling = wait(lambda: [e for e in pod_events(cp, ns, pod) if e["reason"] == "Pulling"], "a Pulling Event")
        assert slow.hello("cp-slow") in pulling[0]["message"], pulling

        wait(lambda: waiting(cp, ns, "broken").get("reason") in PULL_REASONS, "the broken pod's pull error")
        message = waiting(cp, ns, "broken").get("message", "")
        assert slow.missing("cp-broken") in message and "not found" in message, message
        assert waiting(cp, ns, "slow").get("reason") == "ContainerCreating"  # still pulling
    finally:
        slow.release("cp-slow")
    wait(lambda: job_condition(cp, ns, "slow") & {"Complete", "Failed"}, "Job slow finished after release")
    done = pods(cp, ns, "slow")[0]
    assert "Complete" in job_condition(cp, ns, "slow"), done["status"]
    assert pod_log(cp, done).strip() == "hello from slow-0: ran"  # an Indexed Job's pod's hostname: <job>-<index>
    assert pods(cp, ns, "broken")[0]["status"]["phase"] == "Pending"


def test_deleting_a_job_stops_and_collects_its_pods(
    control_plane: ControlPlane, kube_nodes: RealNodes, ns: str
) -> None:
    cp = control_plane
    cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job("sleeper", kube_nodes.hello.name, ["sleep"]))

    def running() -> list[dict[str, Any]]:
        return [p for p in pods(cp, ns, "sleeper") if p["status"].get("phase") == "Running"]

    sleeper = wait_job(cp, ns, "sleeper", running, "sleeper Running")[0]
    assert pod_log(cp, sleeper).strip() == "hello: sleeping"
    cp.admin.delete(f"/apis/batch/v1/namespaces/{ns}/jobs/sleeper")
    wait_job(cp, ns, "sleeper", lambda: not pods(cp, ns, "sleeper"), "the pod gone (garbage collector, then kubelet)")


def test_pods_resolve_each_other_through_cluster_dns(control_plane: ControlPlane, trainer: str, ns: str) -> None:
    cp = control_plane
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                        "selector": {"job-name": "dns"}}}  # fmt: skip
    cp.admin.create(f"/api/v1/namespaces/{ns}/services", service)
    # Each pod resolves its peer's name and talks to it over TCP, and stays until its peer has
    # talked to it: a pod that exits leaves the EndpointSlice (terminal pods are not endpoints),
    # so one that resolved its peer and left at once would take its own name away before the
    # peer looked it up.
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
    spec = job("dns", trainer, [script], completions=2, python=True, subdomain="peers")
    cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", spec)
    wait(lambda: job_condition(cp, ns, "dns") & {"Complete", "Failed"}, "Job dns finished", timeout=240)
    found = {p["metadata"]["labels"][INDEX]: p for p in pods(cp, ns, "dns")}
    logs = {i: pod_log(cp, found[i], lines=None) for i in ("0", "1")}
    assert job_condition(cp, ns, "dns") >= {"Complete"}, logs
    for me, peer in (("0", "1"), ("1", "0")):
        ips = found[peer]["status"]["podIP"], found[me]["status"]["podIP"]
        assert f"peer {ips[0]} me {ips[1]} heard dns-{peer}" in logs[me], logs[me]


def test_pods_run_as_their_security_contexts_user(
    control_plane: ControlPlane, kube_nodes: RealNodes, trainer: str, ns: str
) -> None:
    cp = control_plane
    script = (
        "import errno, os, pathlib\n"
        "print('ids', os.getuid(), os.getgid(), sorted(os.getgroups()))\n"
        "pathlib.Path('/scratch/mine').write_text('ok')\n"
        "print('scratch group', os.stat('/scratch').st_gid)\n"
        "try:\n"
        "    pathlib.Path('/theirs').write_text('no')\n"
        "except OSError as err:\n"
        "    print('refused outside its volumes:', errno.errorcode[err.errno])\n"
    )
    ids = {"runAsNonRoot": True, "runAsUser": 1234, "runAsGroup": 1235, "fsGroup": 2345}
    spec = job("ids", trainer, [script], python=True, securityContext=ids)
    container = spec["spec"]["template"]["spec"]["containers"][0]
    container |= {"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                  "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}}  # fmt: skip
    spec["spec"]["template"]["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    # The hello image names no USER: it would run as root, which runAsNonRoot forbids.
    as_root = job("as-root", kube_nodes.hello.name, [], securityContext={"runAsNonRoot": True})
    for body in (spec, as_root):
        cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", body)

    wait(lambda: job_condition(cp, ns, "ids") & {"Complete", "Failed"}, "Job ids finished")
    log = pod_log(cp, pods(cp, ns, "ids")[0], lines=None)
    assert "Complete" in job_condition(cp, ns, "ids"), log
    # The fsGroup is a supplementary group, and owns the emptyDir; the root filesystem is read-only.
    assert "ids 1234 1235 [1235, 2345]" in log and "scratch group 2345" in log, log
    assert "refused outside its volumes: EROFS" in log, log

    reason = wait(lambda: waiting(cp, ns, "as-root").get("reason") and waiting(cp, ns, "as-root"),
                  "the as-root pod refused")  # fmt: skip
    assert reason["reason"] == "CreateContainerConfigError" and "runAsNonRoot" in reason["message"], reason
