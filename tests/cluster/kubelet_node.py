"""A real Kubernetes node: the kubelet v1.36.3 (built with the control plane) on its own containerd.

Each node is what kubeadm joins, made private so that several share one machine:
- an address of its own, 10.<a>.<n>.1, the gateway of its pods' bridge `srn<tag><n>` (made
  here; CNI's bridge plugin then uses it): the kubelet refuses a loopback node IP, and the
  apiserver reaches the kubelet's API there (`--kubelet-preferred-address-types=InternalIP`) for
  `kubectl logs/exec`;
- a client certificate as the Node authorizer expects (CN `system:node:<name>`, O
  `system:nodes`), and a serving certificate for that address signed by the session CA (the
  apiserver checks it with `--kubelet-certificate-authority`); the kubelet API accepts only
  certificates of that CA (the apiserver's `--kubelet-client-certificate`);
- its own root dir, pod log dir, ports (API, healthz) and cgroup root (`/speedrun-<pid>-<name>`
  in each cgroup v1 hierarchy: two kubelets under one `kubepods` would fight over it);
- `failCgroupV1: false` and `cgroupDriver: cgroupfs` (these machines run cgroup v1 without
  systemd), `clusterDNS` the CoreDNS address network.py serves, eviction and image GC thresholds
  low enough that a busy build disk does not evict test pods.

`stop_kubelet()` stops the kubelet alone (its containers run on; the node goes NotReady when the
node-lifecycle controller's grace period passes); `start_kubelet()` brings it back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from speedrun_trainer.cli.launch import free_port
from tests.cluster.containerd_runtime import Containerd, unmount_under
from tests.cluster.control_plane import ControlPlane, ControlPlaneError, terminate, wait_until, write_kubeconfig
from tests.cluster.network import CLUSTER_DOMAIN

CGROUP_FS = Path("/sys/fs/cgroup")
# The kubelet's heartbeat: a Lease renewed every quarter of its duration, status every 4 s, so the
# node-lifecycle controller's grace period (control_plane.py) sees a stopped kubelet soon.
LEASE_SECONDS = 10
STATUS_SECONDS = "4s"


@dataclass(frozen=True)
class NodeAddress:
    ip: str  # the node's InternalIP: the gateway address on its pods' bridge
    pod_subnet: str
    bridge: str  # the CNI bridge of the node's pods, made here before CNI sees it


def node_address(session: int, index: int) -> NodeAddress:
    """The node's address and pod subnet, one per session and node index (off network.py's pod
    subnet 10.200-249.x and the Service range 10.0.0.0/24)."""
    a = 100 + session % 50
    return NodeAddress(f"10.{a}.{index}.1", f"10.{a}.{index}.0/24", f"srn{session % 100000:05d}{index}")


class KubeletNode:
    def __init__(self, control_plane: ControlPlane, binaries: dict[str, Path], directory: Path, name: str,
                 address: NodeAddress, cluster_dns: str, sandbox_image: str, labels: dict[str, str] | None = None,
                 registries: tuple[str, ...] = (), taints: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.cp, self.binaries, self.dir, self.name = control_plane, binaries, directory, name
        self.address, self.cluster_dns, self.labels, self.taints = address, cluster_dns, labels or {}, taints
        self.runtime = Containerd(binaries, directory / "containerd", address.bridge, address.pod_subnet,
                                  sandbox_image, registries)  # fmt: skip
        self.port, self.healthz_port = free_port(), free_port()
        self.cgroup_root = f"/speedrun-{os.getpid()}-{name}"
        self.kubelet: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "kubelet.log"

    # -- set-up

    def _add_address(self) -> None:
        """The node's bridge with its address, before CNI's bridge plugin finds and keeps it. Its MAC
        is set by hand: a bridge without one takes the lowest among its ports, which changes as pods
        come and go and leaves the pods' ARP entry for their gateway stale (as network.py says)."""
        bridge, ip = self.address.bridge, self.address.ip
        octets = [int(o) for o in ip.split(".")]
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
        for args in (("link", "add", bridge, "type", "bridge"),
                     ("link", "set", bridge, "address", "02:54:" + ":".join(f"{o:02x}" for o in octets)),
                     ("addr", "add", f"{ip}/{self.address.pod_subnet.split('/')[1]}", "dev", bridge),
                     ("link", "set", bridge, "up")):  # fmt: skip
            proc = subprocess.run(["ip", *args], capture_output=True, text=True)
            if proc.returncode != 0:
                raise ControlPlaneError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def _cgroup_dirs(self, unified: bool = False) -> list[Path]:
        """The node's cgroup root in each v1 hierarchy (and, for teardown, in the hybrid layout's
        cgroup2 mount, where the kubelet mirrors its tree)."""
        return [d / self.cgroup_root.lstrip("/") for d in sorted(CGROUP_FS.iterdir())
                if d.is_dir() and not d.is_symlink() and (unified or d.name != "unified")]  # fmt: skip

    def _config(self) -> Path:
        pki = self.cp.pki
        serving = pki.issue(f"kubelet-{self.name}", f"system:node:{self.name}", "system:nodes",
                            server_names=(self.name,), server_ips=(self.address.ip,))  # fmt: skip
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.address.ip,
            "port": self.port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki.ca.cert)}},
            "authorization": {"mode": "AlwaysAllow"},  # only the session CA's certificates get in
            "containerRuntimeEndpoint": self.runtime.endpoint,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDNS": [self.cluster_dns],
            "clusterDomain": CLUSTER_DOMAIN,
            "podLogsDir": str(self.dir / "pod-logs"),
            "nodeLeaseDurationSeconds": LEASE_SECONDS,
            "nodeStatusUpdateFrequency": STATUS_SECONDS,
            "nodeStatusReportFrequency": STATUS_SECONDS,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "oomScoreAdj": 0,  # lowering it needs CAP_SYS_RESOURCE, which these machines lack
            "serializeImagePulls": False,
            "registerNode": True,
        }  # fmt: skip
        path = self.dir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, images: tuple[Path, ...] = ()) -> KubeletNode:
        """Start containerd, import `images` (OCI archives: the pause image first), then the kubelet."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._add_address()
        for directory in self._cgroup_dirs():
            directory.mkdir(exist_ok=True)
        self.runtime.start()
        for archive in images:
            self.runtime.import_image(archive)
        self.start_kubelet()
        return self

    def start_kubelet(self) -> None:
        pair = self.cp.pki.issue(f"node-{self.name}", f"system:node:{self.name}", "system:nodes")
        kubeconfig = write_kubeconfig(self.dir / "kubelet.kubeconfig", self.cp.server, self.cp.pki.ca.cert,
                                      f"system:node:{self.name}", pair)  # fmt: skip
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        argv = [str(self.binaries["kubelet"]), f"--config={self._config()}", f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.dir / 'kubelet'}", f"--hostname-override={self.name}",
                f"--node-ip={self.address.ip}", "--v=1", *([f"--node-labels={labels}"] if labels else []),
                *([f"--register-with-taints={','.join(self.taints)}"] if self.taints else [])]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.kubelet = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_until(self.ready, timeout, f"node {self.name} Ready", interval=0.2)

    def ready(self) -> bool:
        if self.kubelet is not None and self.kubelet.poll() is not None:
            raise ControlPlaneError(f"kubelet {self.name} exited with {self.kubelet.returncode}: {self.log_tail()}")
        node = self.cp.admin.get(f"/api/v1/nodes/{self.name}")
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- teardown

    def stop_kubelet(self) -> None:
        """Stop the kubelet as a crashed or powered-off node's would: its pods are not told."""
        if self.kubelet is None:
            return
        terminate(self.kubelet)
        self.kubelet = None

    def stop(self) -> None:
        self.stop_kubelet()
        self.runtime.stop()
        unmount_under(self.dir)
        for directory in self._cgroup_dirs(unified=True):
            remove_cgroup_tree(directory)
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What stop() should have ended or removed and did not (empty when clean)."""
        left = [f"kubelet {self.name}"] if self.kubelet is not None else []
        left += [f"{self.name}: {item}" for item in self.runtime.leftovers()]
        left += [f"cgroup {d}" for d in self._cgroup_dirs(unified=True) if d.exists()]
        return left + ([f"directory {self.dir}"] if self.dir.exists() else [])


def remove_cgroup_tree(directory: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroupfs refuses rm -r: its files are not files)."""
    deadline = time.monotonic() + 10  # a killed container's cgroup is busy until the kernel reaps it
    while directory.exists() and time.monotonic() < deadline:
        for path, _, _ in sorted(os.walk(directory), key=lambda entry: len(entry[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        if directory.exists():
            time.sleep(0.2)
