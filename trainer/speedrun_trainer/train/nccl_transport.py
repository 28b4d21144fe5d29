"""Which network NCCL will use between nodes, said once at start-up, and a warning on sockets.

NCCL picks its inter-node transport silently, and the slowest choice (TCP sockets over the pod's
one virtual NIC) still works, only several times slower: at GPT-2 124M each step all-reduces
~0.5 GB of fp32 gradients (docs/trainer.md "Multi-node"), seconds per step over sockets against
milliseconds over RDMA. This module predicts NCCL's choice from what NCCL itself reads, in its
order (NCCL's src/init.cc `ncclNetInit`, src/transport/net_ib.cc, net_socket.cc; the NCCL_*
variables as its environment-variable docs describe them):

1. a network plugin: `NCCL_NET_PLUGIN` (`libnccl-net-<name>.so`; "none" disables plugins), else
   `libnccl-net.so` on the library path: GKE's gIB and GPUDirect-TCPX/TCPXO, AWS's OFI plugin
   for EFA. NCCL tries it first and falls back to its own transports when it fails to load;
2. InfiniBand verbs (InfiniBand or RoCE), unless `NCCL_IB_DISABLE=1`: the devices under
   /sys/class/infiniband with an ACTIVE port, filtered by `NCCL_IB_HCA`;
3. sockets over `NCCL_SOCKET_IFNAME`, else the first interface that is not loopback or docker.
`NCCL_NET` forces one by name ("IB", "Socket", or a plugin's name).

Pure functions of an environment mapping and a filesystem root, so tests give a fake sysfs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Where images put NCCL's net plugins besides LD_LIBRARY_PATH: the distro's library directories,
# NVIDIA's (GKE mounts the driver's libraries there) and GKE's gIB / TCPXO installs.
LIBRARY_DIRS = (
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/local/nvidia/lib64",
    "/usr/local/gib/lib64",
    "/usr/local/tcpxo/lib64",
    "/opt/amazon/ofi-nccl/lib",
)
DEFAULT_PLUGIN = "libnccl-net.so"
# NCCL_SOCKET_IFNAME's default: every interface but these prefixes (net_socket.cc, "^docker,lo").
SKIPPED_INTERFACES = ("lo", "docker")
WHAT_TO_SET = (
    "for RDMA set spec.resources.hostNetwork: true and spec.resources.extraResources (e.g. rdma/ib: 1),"
    " or the NCCL settings of your network in spec.env (the chart's trainer.env); or halve the traffic"
    " with train.gradReduceDtype: bf16 (docs/trainer.md, Multi-node)"
)


@dataclass(frozen=True)
class Transport:
    kind: str  # "plugin" | "IB" | "RoCE" | "sockets"
    detail: str  # the plugin, the devices, or the interface

    @property
    def sockets(self) -> bool:
        return self.kind == "sockets"

    def line(self) -> str:
        if self.kind == "plugin":
            return f"NCCL transport: net plugin {self.detail} (NCCL falls back to IB or sockets if it fails to load)"
        if self.sockets:
            return f"NCCL transport: sockets over {self.detail}"
        return f"NCCL transport: {self.kind} ({self.detail})"


def spans_nodes(env: Mapping[str, str]) -> bool:
    """More processes in the run than on this node (torchrun's WORLD_SIZE and LOCAL_WORLD_SIZE), on
    more than one machine: `speedrun run` starts its "nodes" on this one, with a loopback master
    (`--local-addr=127.0.0.1`), where NCCL moves data through shared memory and NVLink, no network."""
    world = int(env.get("WORLD_SIZE", "1") or 1)
    master = env.get("MASTER_ADDR", "")
    loopback = master == "localhost" or master.startswith("127.") or master == "::1"
    return world > int(env.get("LOCAL_WORLD_SIZE", str(world)) or world) and not loopback


def _plugin(env: Mapping[str, str], root: Path) -> str | None:
    name = env.get("NCCL_NET_PLUGIN", "").strip()
    if name.lower() == "none":
        return None
    if name:
        return name if name.endswith(".so") else f"libnccl-net-{name}.so"
    dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d] + list(LIBRARY_DIRS)
    for d in dirs:
        path = root / d.lstrip("/") / DEFAULT_PLUGIN
        if path.exists():
            return str(Path("/") / path.relative_to(root))
    return None


def _hca_filter(spec: str) -> Callable[[str, str], bool]:
    """`NCCL_IB_HCA`: comma-separated device[:port] prefixes; a leading `^` excludes them, a leading
    `=` matches names exactly."""
    spec = spec.strip()
    exclude = spec.startswith("^")
    spec = spec.lstrip("^")
    exact = spec.startswith("=")
    spec = spec.lstrip("=")
    wanted = [part.strip() for part in spec.split(",") if part.strip()]

    def matches(device: str, port: str) -> bool:
        if not wanted:
            return True
        for part in wanted:
            name, _, want_port = part.partition(":")
            hit = (device == name if exact else device.startswith(name)) and (not want_port or want_port == port)
            if hit:
                return not exclude
        return exclude

    return matches


def ib_devices(env: Mapping[str, str], root: Path) -> list[tuple[str, str]]:
    """(device, link layer) of each InfiniBand/RoCE device with an ACTIVE port that NCCL_IB_HCA keeps."""
    base = root / "sys/class/infiniband"
    keep = _hca_filter(env.get("NCCL_IB_HCA", ""))
    found = []
    for dev in sorted(base.iterdir()) if base.is_dir() else []:
        for port in sorted((dev / "ports").iterdir()) if (dev / "ports").is_dir() else []:
            state = _read(port / "state")
            if "ACTIVE" in state and keep(dev.name, port.name):
                found.append((dev.name, _read(port / "link_layer") or "InfiniBand"))
                break
    return found


def socket_interface(env: Mapping[str, str], root: Path) -> str:
    """NCCL_SOCKET_IFNAME as given, else the first interface NCCL's default filter keeps."""
    if env.get("NCCL_SOCKET_IFNAME", "").strip():
        return env["NCCL_SOCKET_IFNAME"].strip()
    net = root / "sys/class/net"
    names = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
    kept = [n for n in names if not n.startswith(SKIPPED_INTERFACES)]
    ib_first = [n for n in kept if n.startswith("ib")] + [n for n in kept if not n.startswith("ib")]
    return ib_first[0] if ib_first else "the first non-loopback interface"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def predict(env: Mapping[str, str], root: Path = Path("/")) -> Transport:
    """The transport NCCL will pick between nodes, read from `env` and the filesystem under `root`."""
    forced = env.get("NCCL_NET", "").strip()
    sockets = Transport("sockets", socket_interface(env, root))
    if forced.lower() == "socket":
        return sockets
    plugin = _plugin(env, root)
    if forced and forced.lower() != "ib":
        return Transport("plugin", f"{forced!r}" + (f" ({plugin})" if plugin else ""))
    if plugin is not None and not forced:
        return Transport("plugin", plugin)
    if env.get("NCCL_IB_DISABLE", "0").strip() not in ("1", "true", "True"):
        devices = ib_devices(env, root)
        if devices:
            kind = "RoCE" if all(layer == "Ethernet" for _, layer in devices) else "IB"
            return Transport(kind, ", ".join(dev for dev, _ in devices))
    return sockets


def report(
    backend: str,
    env: Mapping[str, str] | None = None,
    root: Path = Path("/"),
    log: Callable[[str], None] = print,
) -> Transport | None:
    """On a multi-node NCCL run: log the transport; on sockets also a warning naming what to set.

    `log` is the trainer's rank-0 log, so each line appears once per run. None where NCCL moves
    nothing between nodes (gloo, one node)."""
    env = os.environ if env is None else env
    if backend != "nccl" or not spans_nodes(env):
        return None
    transport = predict(env, root)
    log(transport.line())
    if transport.sockets:
        log(
            "warning: this multi-node GPU run all-reduces its gradients over TCP sockets, several times"
            f" slower than RDMA: {WHAT_TO_SET}"
        )
    return transport
