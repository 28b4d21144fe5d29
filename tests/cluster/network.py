"""The session's own address on the pod network, and cluster DNS there.

Real nodes route their pods' traffic to the host through each node's bridge (kubelet_node.py), so
the host's own servers that pods must reach (CoreDNS, moto's S3, the players' and the webhooks'
servers) listen on an address of their own: `PodNetwork` makes a Linux bridge without ports
holding `host_ip` (the first address of the session's subnet, 10.200-249.x.1) and starts CoreDNS
on it (its kubernetes plugin reading the real Services and EndpointSlices): every node's
`clusterDNS`. Nothing leaves the machine: the bridge has no uplink.

Without root there is no bridge (and no real node either): `pod_network()` returns a network on
127.0.0.1 whose `reason` says so, and what needs the real nodes skips with that line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"


class PodNetwork:
    host_ip = "127.0.0.1"
    reason = "not root: no address of its own for the host's servers, and no cluster DNS"

    def close(self) -> None:
        pass


class HostBridge(PodNetwork):
    reason = ""

    def __init__(self, workdir: Path, coredns: Path, kubeconfig: Path, subnet: str) -> None:
        self.net = ipaddress.ip_network(subnet)
        self.host_ip = str(next(self.net.hosts()))
        self.bridge = f"srbr{os.getpid() % 100000:05d}"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_ip}/{self.net.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        corefile = workdir / "Corefile"
        corefile.write_text(
            f".:53 {{\n  bind {self.host_ip}\n  errors\n"
            f"  kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n    kubeconfig {kubeconfig}\n"
            "    pods insecure\n    fallthrough in-addr.arpa ip6.arpa\n  }\n}\n"
        )
        self.dns_log = (workdir / "coredns.log").open("wb")
        self.dns = subprocess.Popen([str(coredns), "-conf", str(corefile)], stdout=self.dns_log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)  # fmt: skip

    def close(self) -> None:
        self.dns.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.dns.wait(timeout=10)
        if self.dns.poll() is None:
            self.dns.kill()
        self.dns_log.close()
        _ip("link", "delete", self.bridge, check=False)


def _ip(*args: str, check: bool = True) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def pod_network(workdir: Path, coredns: Path, kubeconfig: Path, subnet: str) -> PodNetwork:
    return HostBridge(workdir, coredns, kubeconfig, subnet) if os.geteuid() == 0 else PodNetwork()
