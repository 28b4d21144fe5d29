"""The session's nodes: real kubelets (kubelet + containerd, kubelet_node.py), one per `NodeSpec`.

Every pod of the control-plane and e2e tiers runs in a container on one of these. The session's
set is two CPU nodes and one GPU node (`SESSION_NODES`); a module adds nodes of its own (GKE TPU
hosts: gke_tpu.py) with `added(...)`, which removes them again at its end. Extended resources
(`nvidia.com/gpu`, `google.com/tpu`) are advertised as Kubernetes documents it
(tasks/administer-cluster/extended-resource-node): a JSON patch adding
`/status/capacity/<resource>` to the Node, which the kubelet keeps (it owns only the resources it
knows) and copies to allocatable, so the real scheduler's fit checks decide placement.

Only one session on a machine may run real nodes at a time (their kube-proxy rules, the kubelet's
device-plugin directory and /var/log/containers are the machine's): a second waits on
`LOCK`, saying so once.

    nodes = RealNodes(control_plane, binaries, workdir, cluster_dns, SESSION_NODES).start()
    nodes.hello.name                   # a static "hello" image present on every node
    nodes.import_image(archive)        # an OCI/docker archive (e.g. buildah's) into every node
    nodes.trust_registry("127.0.0.1:5000")  # pull from a plain-HTTP loopback registry
    nodes.kill(pod)                    # SIGKILL the pod's container (containerd's task kill)
    nodes.stop_kubelet("node-cpu-1")   # NotReady after the grace period; start_kubelet() undoes it
    with nodes.added(NodeSpec("tpu-host-0", ...)): ...  # a module's own node
    nodes.close()                      # pods deleted, kubelets and containerds stopped, all unmounted
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.cluster.api import ApiError
from tests.cluster.containerd_runtime import SHIM_SOCKETS
from tests.cluster.control_plane import ControlPlane, ControlPlaneError, wait_until
from tests.cluster.kubelet_node import KubeletNode, node_address
from tests.cluster.orphans import reap
from tests.cluster.static_images import StaticImage, build_image

DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
CONTAINER_LOGS = Path("/var/log/containers")
LOCK = Path("/run/lock/speedrun-operator-real-nodes.lock")
GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[str, ...] = ()  # "key=value:Effect", as --register-with-taints takes them
    resources: dict[str, int] = field(default_factory=dict)  # extended resources to advertise


CPU_NODES = ("node-cpu-0", "node-cpu-1")
GPU_NODE = "node-gpu-0"
SESSION_NODES = (
    *(NodeSpec(n) for n in CPU_NODES),
    # Tainted as GKE (and EKS, AKS) taint GPU node pools; the apiserver's ExtendedResourceToleration
    # gives a pod that requests nvidia.com/gpu the toleration, as on those clouds. So a CPU pod
    # never lands here, nor pulls the 6 GB trainer image here.
    NodeSpec(GPU_NODE, labels={"speedrun.dev/gpu": "true"}, taints=(f"{GPU}=present:NoSchedule",), resources={GPU: 2}),
)


def real_node_pod(name: str, image: str, args: list[str], *, node: str | None = None,
                  resources: dict[str, Any] | None = None, **container: Any) -> dict[str, Any]:  # fmt: skip
    """A one-container pod (restartPolicy Never), on `node` when given."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 2,
        # A pod pinned to a node by name tolerates its taints, as a DaemonSet's do.
        **({"nodeSelector": {"kubernetes.io/hostname": node}, "tolerations": [{"operator": "Exists"}]} if node else {}),
        "containers": [{"name": "main", "image": image, "args": args, "imagePullPolicy": "IfNotPresent",
                        **({"resources": resources} if resources else {}), **container}],
    }  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def free_session_number() -> int:
    """A number for node_address() whose 10.<a>.0.0/16 no route of this machine uses yet (a bench
    started by a test session runs nodes beside its parent's)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for number in range(os.getpid(), os.getpid() + 50):
        first = node_address(number, 0).ip.rsplit(".", 2)[0]  # "10.<a>"
        if f"{first}." not in routes:
            return number
    return os.getpid()


def ancestors() -> set[int]:
    """This process's parent, its parent, and so on up to init."""
    found, pid = set(), os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        found.add(pid)
    return found


def container_id(pod: dict[str, Any]) -> str:
    """The id containerd knows the pod's (first) running container by, or "" when none runs."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if "running" in (status.get("state") or {}):
            return str(status.get("containerID", "")).removeprefix("containerd://")
    return ""


class RealNodes:
    def __init__(self, control_plane: ControlPlane, binaries: dict[str, Path], workdir: Path, cluster_dns: str,
                 specs: tuple[NodeSpec, ...] = SESSION_NODES, registries: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.cp, self.binaries, self.workdir = control_plane, binaries, workdir
        self.cluster_dns, self.registries = cluster_dns, list(registries)
        images = workdir / "images"
        self.pause: StaticImage = build_image(images, "pause")
        self.hello: StaticImage = build_image(images, "hello")
        self.specs: dict[str, NodeSpec] = {}
        self.nodes: dict[str, KubeletNode] = {}
        self._session = free_session_number()
        self._next_index = 0
        for spec in specs:
            self._make(spec)
        self.started_in = 0.0
        self._lock: IO[bytes] | None = None
        # Paths every kubelet or containerd uses whatever its root dir (the device-plugin socket
        # dir is a constant of the kubelet's API; container log links are /var/log/containers; the
        # shims' sockets /run/containerd/s): removed at the end where this session made them.
        self._made: list[Path] = []

    def _make(self, spec: NodeSpec) -> KubeletNode:
        node = KubeletNode(self.cp, self.binaries, self.workdir / spec.name, spec.name,
                           node_address(self._session, self._next_index), self.cluster_dns, self.pause.name,
                           spec.labels, tuple(self.registries), spec.taints)  # fmt: skip
        self._next_index += 1
        self.specs[spec.name], self.nodes[spec.name] = spec, node
        return node

    @property
    def names(self) -> list[str]:
        return list(self.nodes)

    @property
    def cluster_cidr(self) -> str:
        """The range every node's pod subnet lies in (10.<a>.<n>.0/24: node_address)."""
        first = next(iter(self.nodes.values())).address.pod_subnet
        return str(ipaddress.ip_network(first).supernet(new_prefix=16))

    def start(self) -> RealNodes:
        if self._take_lock():
            for line in reap(self.workdir, {n.address.bridge for n in self.nodes.values()}):
                print(f"\nreal nodes: ended {line}", flush=True)
        self._made = [p for p in (DEVICE_PLUGINS.parent, CONTAINER_LOGS, SHIM_SOCKETS.parent) if not p.exists()]
        started = time.monotonic()
        self._bring_up(list(self.nodes))
        self.started_in = time.monotonic() - started
        return self

    def _bring_up(self, names: list[str]) -> None:
        for name in names:
            self.nodes[name].start(images=(self.pause.archive, self.hello.archive))
        for name in names:
            self.nodes[name].wait_ready()
            for resource, count in self.specs[name].resources.items():
                self.advertise(name, resource, count)

    def _take_lock(self) -> bool:
        """Hold LOCK (waiting for another session to let go); False when an ancestor process holds
        it (a bench or test started by a session that runs nodes already: it shares the machine
        with its parent's nodes and must not take them for a dead session's)."""
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = LOCK.open("a+b")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().decode().strip()
            if holder.isdigit() and int(holder) in ancestors():
                self._lock.close()
                self._lock = None
                return False
            print(f"\nreal nodes: another session (pid {holder or '?'}) holds {LOCK}; waiting for it", flush=True)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()).encode())
        self._lock.flush()
        return True

    @contextlib.contextmanager
    def added(self, *specs: NodeSpec) -> Iterator[list[str]]:
        """Nodes of a module's own, Ready (their resources advertised) inside the block, gone after it."""
        names = [self._make(spec).name for spec in specs]
        try:
            self._bring_up(names)
            yield names
        finally:
            self._close(names)
            for name in names:
                left = self.nodes[name].leftovers()
                del self.nodes[name], self.specs[name]
                assert not left, f"node {name} left behind: {', '.join(left)}"

    def import_image(self, archive: Path) -> None:
        """Import an OCI (or docker) archive into every node's containerd, e.g. one buildah wrote."""
        for node in self.nodes.values():
            node.runtime.import_image(archive)

    def trust_registry(self, host: str) -> None:
        """Every node, and every node added later, pulls from the plain-HTTP registry at `host`."""
        if host not in self.registries:
            self.registries.append(host)
        for node in self.nodes.values():
            node.runtime.trust_registry(host)

    def advertise(self, node: str, resource: str, count: int) -> None:
        """Add `count` of an extended resource to the node's capacity (the documented JSON patch)."""
        path = "/status/capacity/" + resource.replace("~", "~0").replace("/", "~1")
        patch = [{"op": "add", "path": path, "value": str(count)}]
        self.cp.admin.request("PATCH", f"/api/v1/nodes/{node}/status", patch,
                              content_type="application/json-patch+json")  # fmt: skip
        wait_until(lambda: self._allocatable(node, resource) == str(count), 30, f"{resource} allocatable on {node}")

    def _allocatable(self, node: str, resource: str) -> str | None:
        body = self.cp.admin.get(f"/api/v1/nodes/{node}") or {}
        return body.get("status", {}).get("allocatable", {}).get(resource)

    def kill(self, pod: dict[str, Any], sig: int = signal.SIGKILL) -> None:
        """Signal the pod's running container through its node's containerd (a killed process, as
        the OOM killer or a crashed program leaves it: the kubelet reports exit 128+sig)."""
        fresh = self.cp.admin.get(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}")
        cid = container_id(fresh or {})
        if not cid:
            raise AssertionError(f"pod {pod['metadata']['name']} has no running container to kill")
        node = self.nodes[(fresh or {})["spec"]["nodeName"]]
        node.runtime.ctr("tasks", "kill", "--signal", signal.Signals(sig).name, cid)

    def stop_kubelet(self, node: str) -> None:
        self.nodes[node].stop_kubelet()

    def start_kubelet(self, node: str) -> None:
        self.nodes[node].start_kubelet()
        self.nodes[node].wait_ready()

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        return self.cp.admin.list("/api/v1/pods", fields=f"spec.nodeName={node}")

    def log_tails(self, lines: int = 15) -> str:
        """Each kubelet's last lines: what a timed-out wait prints beside its own message."""
        return "\n".join(f"--- kubelet {n}:\n{node.log_tail(lines)}" for n, node in self.nodes.items())

    def check(self) -> None:
        """Fail at once when a kubelet or containerd this session did not stop has died."""
        for name, node in self.nodes.items():
            for what, proc in (("kubelet", node.kubelet), ("containerd", node.runtime.proc)):
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"{what} of {name} exited with {proc.returncode}:\n{node.log_tail()}")

    def close(self) -> None:
        """Delete the pods bound to the nodes and let their kubelets end them (the sandboxes'
        networks torn down by CNI), then stop every node; what is left is killed and unmounted."""
        try:
            self._close(list(self.nodes))
            self._remove_shared_paths()
        finally:
            if self._lock is not None:
                self._lock.close()  # the flock goes with the file

    def _close(self, names: list[str]) -> None:
        """Pods deleted through the apiserver first (their kubelets tear their networks down); an
        apiserver that does not answer must not keep the nodes up: they are stopped regardless."""
        nodes = {n: self.nodes[n] for n in names}
        for name, node in nodes.items():
            if node.kubelet is None:
                continue
            with contextlib.suppress(ApiError, OSError):
                for pod in self.pods_on(name):
                    meta = pod["metadata"]
                    self.cp.admin.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", grace=1)
        for name, node in nodes.items():
            if node.kubelet is not None:
                with contextlib.suppress(ControlPlaneError, ApiError, OSError):
                    wait_until(lambda n=name: not self.pods_on(n), 60, f"the pods of {name} gone", interval=0.5)
        for node in nodes.values():
            node.stop()
        for name in nodes:
            with contextlib.suppress(ApiError, OSError):
                self.cp.admin.delete(f"/api/v1/nodes/{name}")

    def leftovers(self) -> list[str]:
        """What close() should have ended or removed and did not (empty when clean)."""
        return [item for node in self.nodes.values() for item in node.leftovers()]

    def _remove_shared_paths(self) -> None:
        prefix = str(self.workdir.resolve()) + "/"
        for link in CONTAINER_LOGS.glob("*.log") if CONTAINER_LOGS.exists() else ():
            if link.is_symlink() and os.readlink(link).startswith(prefix):
                link.unlink()
        if DEVICE_PLUGINS.parent in self._made:
            (DEVICE_PLUGINS / "kubelet.sock").unlink(missing_ok=True)
        for directory in (DEVICE_PLUGINS, SHIM_SOCKETS, *self._made):
            if directory in self._made or directory.parent in self._made:
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only when empty: nothing else's is touched
