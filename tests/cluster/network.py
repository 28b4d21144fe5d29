"""Pod networking for the node agent: a network namespace per pod on a bridge, with cluster DNS.

As root (`NamespaceNetwork`): a Linux bridge with the host side's address (the node's InternalIP),
and for each pod a network namespace (`ip netns`) joined to the bridge by a veth pair, with its
own address, a default route through the bridge, `/etc/resolv.conf` naming CoreDNS (search
`<ns>.svc.cluster.local svc.cluster.local cluster.local`, ndots 5, as the kubelet writes it) and
`/etc/hosts` naming the pod's hostname; the pod's processes run under `ip netns exec` (which
bind-mounts those two files) in a UTS namespace of their own whose hostname is the pod's.
CoreDNS (its kubernetes plugin, reading the real Services and EndpointSlices) listens on the
bridge address. Nothing leaves the machine: the bridge has no uplink and nothing is forwarded.

Without root (`LoopbackNetwork`): each pod gets a 127.0.x.y address and the host's network; no
cluster names resolve. `pod_network()` picks one and says why in `reason`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import subprocess
import threading
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"


class PodNetwork:
    """The interface the node agent uses; LoopbackNetwork's addresses are all it does."""

    host_ip = "127.0.0.1"
    reason = ""

    def __init__(self) -> None:
        self._addresses: dict[str, str] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def attach(self, uid: str, hostname: str, namespace: str = "default", subdomain: str = "") -> str:
        with self._lock:
            if uid not in self._addresses:
                n = next(self._numbers)
                self._addresses[uid] = f"127.0.{n // 250 + 1}.{n % 250 + 2}"
            return self._addresses[uid]

    def wrap(self, uid: str, argv: list[str]) -> list[str]:
        return argv

    def detach(self, uid: str) -> None:
        pass

    def close(self) -> None:
        pass


class LoopbackNetwork(PodNetwork):
    reason = "not root: pods share the host's network on 127.0.x.y addresses, and cluster DNS names do not resolve"


class NamespaceNetwork(PodNetwork):
    def __init__(self, workdir: Path, coredns: Path, kubeconfig: Path, subnet: str) -> None:
        super().__init__()
        self.workdir = workdir
        self.net = ipaddress.ip_network(subnet)
        hosts = self.net.hosts()
        self.host_ip = str(next(hosts))
        self._free = [str(h) for h in hosts]
        self.tag = f"{os.getpid() % 100000:05d}"
        self.bridge = f"srbr{self.tag}"
        self._namespaces: dict[str, str] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        # A bridge without an address of its own takes the lowest MAC among its ports, so it changes
        # whenever a pod's veth joins or leaves; the running pods' ARP entries for the host (their
        # gateway: S3, CoreDNS) then point at the old MAC, and their connections time out until the
        # entry goes stale (~30 s). An address set by hand is kept (Linux: br_stp_recalculate_bridge_id).
        octets = [int(o) for o in self.host_ip.split(".")]
        _ip("link", "set", self.bridge, "address", "02:53:" + ":".join(f"{o:02x}" for o in octets))
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

    def attach(self, uid: str, hostname: str, namespace: str = "default", subdomain: str = "") -> str:
        with self._lock:
            if uid in self._addresses:
                return self._addresses[uid]
            ip = self._free.pop(0)
            self._addresses[uid] = ip
        ns, veth = f"sr{self.tag}-{uid[:8]}", f"sv{self.tag}{uid[:8]}"[:15]
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{ip}/{self.net.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.host_ip)
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
        (etc / "resolv.conf").write_text(f"search {search}\nnameserver {self.host_ip}\noptions ndots:5\n")
        names = f"{hostname}.{subdomain}.{namespace}.svc.{CLUSTER_DOMAIN}\t{hostname}" if subdomain else hostname
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{names}\n")
        with self._lock:
            self._namespaces[uid] = ns
        return ip

    def wrap(self, uid: str, argv: list[str]) -> list[str]:
        ns = self._namespaces[uid]
        hostname = (Path("/etc/netns") / ns / "hosts").read_text().splitlines()[-1].split("\t")[-1]
        return ["ip", "netns", "exec", ns, "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                hostname, *argv]  # fmt: skip

    def detach(self, uid: str) -> None:
        with self._lock:
            ns = self._namespaces.pop(uid, None)
            ip = self._addresses.pop(uid, None)
        if ns is None:
            return
        _ip("netns", "delete", ns, check=False)  # takes the veth pair with it
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        if ip:
            with self._lock:
                self._free.append(ip)

    def close(self) -> None:
        for uid in list(self._namespaces):
            self.detach(uid)
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


def namespaces_missing() -> str | None:
    """Why per-pod network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command"
    return None


def pod_network(workdir: Path, coredns: Path, kubeconfig: Path, subnet: str) -> PodNetwork:
    missing = namespaces_missing()
    if missing:
        network = LoopbackNetwork()
        network.reason = f"{missing}: {LoopbackNetwork.reason}"
        return network
    return NamespaceNetwork(workdir, coredns, kubeconfig, subnet)
