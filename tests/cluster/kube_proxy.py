"""kube-proxy v1.36.3 for the real nodes: Service IPs that pods in real containers can reach.

A pod's in-cluster client (the operator's kopf, a trainer's kubernetes client) dials
`KUBERNETES_SERVICE_HOST`, the `kubernetes` Service's ClusterIP 10.0.0.1: without a proxy that
address leads nowhere. kube-proxy, built with the other binaries, programs the host's iptables
(NAT rules from the Services and EndpointSlices the apiserver holds) exactly as on a kind node.

The real nodes share this machine's network namespace, so one kube-proxy serves them all (two
would rewrite each other's chains); it runs under the first node's name, with the pod CIDR
covering every node's bridge. The `kubernetes` Service's endpoint is the apiserver's advertise
address (control_plane.py: this machine's primary address, as the apiserver picks by default,
since a pod's traffic cannot be turned towards loopback). `stop()` ends it and runs
`kube-proxy --cleanup`, which removes every rule it made.

    with KubeProxy(control_plane, binary, workdir, "real-node-0", "10.101.0.0/16") as proxy: ...

Conntrack limits and timeouts are left as the machine has them (the flags set to 0): a test
machine's sysctls are not this tier's to change.
"""

from __future__ import annotations

import contextlib
import subprocess
import urllib.request
from pathlib import Path

from speedrun_trainer.cli.launch import free_port
from tests.cluster.control_plane import ControlPlane, ControlPlaneError, terminate, wait_until

START_TIMEOUT = 60.0


class KubeProxy:
    def __init__(self, control_plane: ControlPlane, binary: Path, workdir: Path, node: str, cluster_cidr: str) -> None:
        self.cp, self.binary, self.dir, self.node, self.cidr = control_plane, binary, workdir, node, cluster_cidr
        self.healthz_port, self.metrics_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "kube-proxy.log"

    def __enter__(self) -> KubeProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> KubeProxy:
        self.dir.mkdir(parents=True, exist_ok=True)
        # system:kube-proxy is bound to the bootstrap ClusterRole system:node-proxier, as kubeadm does.
        kubeconfig = self.cp._component_kubeconfig("kube-proxy", "system:kube-proxy")
        argv = [
            str(self.binary), f"--kubeconfig={kubeconfig}", f"--hostname-override={self.node}",
            "--proxy-mode=iptables", f"--cluster-cidr={self.cidr}",
            f"--healthz-bind-address=127.0.0.1:{self.healthz_port}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0", "--iptables-sync-period=5s", "--v=2",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # fmt: skip
        try:
            wait_until(self._synced, START_TIMEOUT, "kube-proxy's first sync of the Service rules", interval=0.5)
        except ControlPlaneError as err:
            self.stop()
            raise ControlPlaneError(f"{err}: {self.log_tail()}") from None
        return self

    def _synced(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ControlPlaneError(f"kube-proxy exited with {self.proc.returncode}: {self.log_tail()}")
        # /healthz answers 200 once the rules were written after the last Service change.
        url = f"http://127.0.0.1:{self.healthz_port}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
        return False

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        terminate(self.proc, timeout=10)
        self.proc = None
        # Remove the chains and rules it wrote (iptables and the other modes'), as a node's teardown does.
        with (self.dir / "kube-proxy-cleanup.log").open("wb") as log:
            subprocess.run([str(self.binary), "--cleanup", "--v=1"], stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=60, check=False)  # fmt: skip

    def leftovers(self) -> list[str]:
        """Rules of a kube-proxy still in the NAT table after stop() (empty when clean)."""
        out = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=False).stdout
        return [f"iptables: {line}" for line in out.splitlines() if "KUBE-SVC" in line or "KUBE-SERVICES" in line]
