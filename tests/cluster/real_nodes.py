"""The session's real nodes (kubelet + containerd, kubelet_node.py) beside the node agent's.

Real nodes carry the label and taint `speedrun.dev/real-node=true` (NoSchedule): the node agent's
tests never land a pod on them, and a pod meant for them says so with `real_node_pod()` (node
selector and toleration). Extended resources are advertised as Kubernetes documents it
(tasks/administer-cluster/extended-resource-node): a JSON patch adding
`/status/capacity/<resource>` to the Node, which the kubelet keeps (it owns only the resources it
knows) and copies to allocatable.

    nodes = RealNodes(control_plane, binaries, workdir, cluster_dns, count=2).start()
    nodes.advertise("real-node-1", "nvidia.com/gpu", 2)
    nodes.hello.name                   # a static "hello" image present on every node
    nodes.import_image(archive)        # an OCI/docker archive (e.g. buildah's) into every node
    nodes.trust_registry("127.0.0.1:5000")  # pull from a plain-HTTP loopback registry
    nodes.stop_kubelet("real-node-1")  # NotReady after the grace period; start_kubelet() undoes it
    nodes.close()                      # pods deleted, kubelets and containerds stopped, all unmounted
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from pathlib import Path
from typing import Any

from tests.cluster.api import ApiError
from tests.cluster.containerd_runtime import SHIM_SOCKETS
from tests.cluster.control_plane import ControlPlane, ControlPlaneError, wait_until
from tests.cluster.kubelet_node import KubeletNode, node_address
from tests.cluster.static_images import StaticImage, build_image

DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
CONTAINER_LOGS = Path("/var/log/containers")
LABEL = "speedrun.dev/real-node"
TAINT = f"{LABEL}=true:NoSchedule"


def real_node_pod(name: str, image: str, args: list[str], *, node: str | None = None,
                  resources: dict[str, Any] | None = None, **container: Any) -> dict[str, Any]:  # fmt: skip
    """A one-container pod for the real nodes (restartPolicy Never)."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 2,
        "nodeSelector": {LABEL: "true", **({"kubernetes.io/hostname": node} if node else {})},
        "tolerations": [{"key": LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
        "containers": [{"name": "main", "image": image, "args": args, "imagePullPolicy": "IfNotPresent",
                        **({"resources": resources} if resources else {}), **container}],
    }  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


class RealNodes:
    def __init__(self, control_plane: ControlPlane, binaries: dict[str, Path], workdir: Path, cluster_dns: str,
                 count: int = 2, registries: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.cp, self.workdir = control_plane, workdir
        images = workdir / "images"
        self.pause: StaticImage = build_image(images, "pause")
        self.hello: StaticImage = build_image(images, "hello")
        self.nodes = {
            f"real-node-{i}": KubeletNode(control_plane, binaries, workdir / f"real-node-{i}", f"real-node-{i}",
                                          node_address(os.getpid(), i), cluster_dns, self.pause.name,
                                          {LABEL: "true"}, registries, (TAINT,))
            for i in range(count)
        }  # fmt: skip
        self.started_in = 0.0
        # Paths every kubelet or containerd uses whatever its root dir (the device-plugin socket
        # dir is a constant of the kubelet's API; container log links are /var/log/containers; the
        # shims' sockets /run/containerd/s): removed at the end where this session made them.
        self._made = [p for p in (DEVICE_PLUGINS.parent, CONTAINER_LOGS, SHIM_SOCKETS.parent) if not p.exists()]

    @property
    def names(self) -> list[str]:
        return list(self.nodes)

    @property
    def cluster_cidr(self) -> str:
        """The range every node's pod subnet lies in (10.<a>.<n>.0/24: node_address)."""
        first = next(iter(self.nodes.values())).address.pod_subnet
        return str(ipaddress.ip_network(first).supernet(new_prefix=16))

    def start(self) -> RealNodes:
        started = time.monotonic()
        for node in self.nodes.values():
            node.start(images=(self.pause.archive, self.hello.archive))
        for node in self.nodes.values():
            node.wait_ready()
        self.started_in = time.monotonic() - started
        return self

    def import_image(self, archive: Path) -> None:
        """Import an OCI (or docker) archive into every node's containerd, e.g. one buildah wrote."""
        for node in self.nodes.values():
            node.runtime.import_image(archive)

    def trust_registry(self, host: str) -> None:
        """Every node pulls from the plain-HTTP registry at `host` (e.g. 127.0.0.1:5000) from now on."""
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

    def stop_kubelet(self, node: str) -> None:
        self.nodes[node].stop_kubelet()

    def start_kubelet(self, node: str) -> None:
        self.nodes[node].start_kubelet()
        self.nodes[node].wait_ready()

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        return self.cp.admin.list("/api/v1/pods", fields=f"spec.nodeName={node}")

    def close(self) -> None:
        """Delete the pods bound to the real nodes and let their kubelets end them (the sandboxes'
        networks torn down by CNI), then stop every node; what is left is killed and unmounted."""
        for name, node in self.nodes.items():
            if node.kubelet is None:
                continue
            for pod in self.pods_on(name):
                meta = pod["metadata"]
                with contextlib.suppress(ApiError):
                    self.cp.admin.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", grace=1)
        for name, node in self.nodes.items():
            if node.kubelet is not None:
                with contextlib.suppress(ControlPlaneError):
                    wait_until(lambda n=name: not self.pods_on(n), 60, f"the pods of {name} gone", interval=0.5)
        for node in self.nodes.values():
            node.stop()
        for name in self.nodes:
            with contextlib.suppress(ApiError):
                self.cp.admin.delete(f"/api/v1/nodes/{name}")
        self._remove_shared_paths()

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
