"""One node's container runtime: its own containerd 2.x (built from tests/cluster/go/containerd),
runc and the CNI plugins, set up as a kubeadm node has them but private to the node, so that
several nodes live on one machine and leave nothing behind.

Per node, under its directory: containerd's root and state, its socket, the runc root and the
pods' network namespaces (`netns_mounts_under_state_dir`), a CNI config (bridge `srn<tag><n>`
with the node's pod subnet from host-local IPAM, portmap; the loopback plugin containerd's CRI
adds by itself, from the same plugin dir) and a registry config dir
(`hosts.toml` per host) that trusts each plain-HTTP registry named in `registries` (loopback
registries such as `127.0.0.1:5000` that the image builds push to). The sandbox image is the
static pause image (static_images.py), imported before the kubelet starts.

Two settings this machine needs: `restrict_oom_score_adj` (no CAP_SYS_RESOURCE: runc fails
"can't get final child's PID from pipe" when asked to lower a container's oom_score_adj) and NRI
off (its socket is one path for the whole machine, /var/run/nri/nri.sock).

`stop()` ends containerd, then kills what it leaves (each runc container, each shim that serves
this node's socket), unmounts everything under the node's directories, and deletes the bridge.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.cluster.control_plane import ControlPlaneError, terminate, wait_until

CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")  # Debian's containernetworking-plugins, upstream's
RUNC = shutil.which("runc", path="/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin") or "/usr/sbin/runc"
NAMESPACE = "k8s.io"  # containerd's namespace for CRI (kubelet) images and containers
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 2.x's shims' sockets, whatever the daemon's state dir


def cni_bin_dir() -> Path | None:
    return next((Path(d) for d in CNI_BIN_DIRS if (Path(d) / "bridge").exists()), None)


def runtime_missing() -> str | None:
    """Why a real node's runtime cannot run here (one line), or None."""
    if os.geteuid() != 0:
        return "not root"
    if not Path(RUNC).exists():
        return "no runc in /usr/sbin, /usr/bin or /usr/local (apt: runc)"
    if cni_bin_dir() is None:
        return f"no CNI plugins in {' or '.join(CNI_BIN_DIRS)} (apt: containernetworking-plugins)"
    return None


def _toml(value: object) -> str:
    return json.dumps(value)  # TOML's basic strings, arrays of strings and booleans read as JSON's


class Containerd:
    def __init__(self, binaries: dict[str, Path], directory: Path, bridge: str, subnet: str,
                 sandbox_image: str, registries: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.binaries, self.dir, self.bridge, self.subnet = binaries, directory, bridge, subnet
        self.sandbox_image, self.registries = sandbox_image, registries
        self.root, self.state = directory / "root", directory / "state"
        self.socket = directory / "containerd.sock"
        self.runc_root = self.state / "runc"
        self.cni_conf_dir, self.certs_dir = directory / "cni", directory / "certs.d"
        self.log_path = directory / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    # -- configuration

    def _config(self) -> str:
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        return "\n".join([
            "version = 4",  # containerd 2.4's (`containerd config default`); 3 is migrated with a warning
            f"root = {_toml(str(self.root))}",
            f"state = {_toml(str(self.state))}",
            "[plugins.'io.containerd.server.v1.grpc']",
            f"  address = {_toml(str(self.socket))}",
            "[plugins.'io.containerd.server.v1.ttrpc']",
            f"  address = {_toml(str(self.socket) + '.ttrpc')}",
            "[plugins.'io.containerd.nri.v1.nri']",
            "  disable = true",
            "[plugins.'io.containerd.internal.v1.opt']",  # /opt/containerd by default
            f"  path = {_toml(str(self.dir / 'opt'))}",
            f"[{runtime}]",
            "  restrict_oom_score_adj = true",
            "  netns_mounts_under_state_dir = true",
            f"[{runtime}.cni]",
            f"  bin_dirs = {_toml([str(cni_bin_dir())])}",
            f"  conf_dir = {_toml(str(self.cni_conf_dir))}",
            "  max_conf_num = 1",
            f"[{runtime}.containerd]",
            "  default_runtime_name = 'runc'",
            f"[{runtime}.containerd.runtimes.runc]",
            "  runtime_type = 'io.containerd.runc.v2'",
            f"[{runtime}.containerd.runtimes.runc.options]",
            f"  BinaryName = {_toml(RUNC)}",
            f"  Root = {_toml(str(self.runc_root))}",
            "  SystemdCgroup = false",
            "[plugins.'io.containerd.cri.v1.images']",
            # Keep the unpacked snapshots only, not the compressed layers too: the trainer image is
            # 3.3 GB pulled, 6.3 GB unpacked, and every node that runs a trainer pod holds it.
            "  discard_unpacked_layers = true",
            "[plugins.'io.containerd.cri.v1.images'.pinned_images]",
            f"  sandbox = {_toml(self.sandbox_image)}",
            "[plugins.'io.containerd.cri.v1.images'.registry]",
            f"  config_path = {_toml(str(self.certs_dir))}",
            "[plugins.'io.containerd.transfer.v1.local']",  # what `ctr` and the transfer service pull with
            f"  config_path = {_toml(str(self.certs_dir))}",
            "",
        ])  # fmt: skip

    def _cni_config(self) -> dict[str, object]:
        return {
            "cniVersion": "1.0.0",
            "name": self.bridge,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                          "dataDir": str(self.dir / "ipam"), "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }  # fmt: skip

    def trust_registry(self, host: str) -> None:
        """containerd pulls from `host` (e.g. 127.0.0.1:5000) over plain HTTP (docs/hosts.md)."""
        directory = self.certs_dir / host
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts.toml").write_text(
            f'server = "http://{host}"\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n'
            "  skip_verify = true\n"
        )

    # -- lifecycle

    def start(self, timeout: float = 60.0) -> Containerd:
        for path in (self.root, self.state, self.cni_conf_dir, self.certs_dir):
            path.mkdir(parents=True, exist_ok=True)
        (self.cni_conf_dir / "10-speedrun.conflist").write_text(json.dumps(self._cni_config(), indent=1))
        for host in self.registries:
            self.trust_registry(host)
        config = self.dir / "containerd.toml"
        config.write_text(self._config())
        # The daemon finds containerd-shim-runc-v2 on its PATH: ours first, not Debian's 1.6 shim.
        env = {**os.environ, "PATH": f"{self.binaries['containerd'].parent}:{os.environ.get('PATH', '')}"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(self.binaries["containerd"]), "--config", str(config)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # fmt: skip
        wait_until(self._serving, timeout, f"containerd on {self.socket}")
        return self

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ControlPlaneError(f"containerd exited with {self.proc.returncode}: {self.log_tail()}")
        return self.socket.exists() and self.ctr("version", check=False).returncode == 0

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binaries["ctr"]), "--address", str(self.socket), "--namespace", NAMESPACE, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def import_image(self, archive: Path) -> None:
        """Import an OCI archive and unpack it (the kubelet then finds it present: no pull)."""
        self.ctr("images", "import", "--platform", "linux/amd64", str(archive), timeout=1800)  # a trainer image: GBs

    def version(self) -> str:
        return self.ctr("version").stdout

    # -- teardown

    def stop(self) -> None:
        terminate(self.proc)
        self._kill_containers()
        self._kill_shims()
        unmount_under(self.dir)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)

    def leftovers(self) -> list[str]:
        """What stop() should have ended and did not (empty when clean)."""
        left = [f"containerd pid {self.proc.pid}"] if self.proc is not None and self.proc.poll() is None else []
        left += [f"shim pid {pid}" for pid in shims_of(str(self.socket).encode())]
        prefix = str(self.dir.resolve()) + "/"
        left += [f"mount {m}" for m in mount_points() if m.startswith(prefix)]
        if Path(f"/sys/class/net/{self.bridge}").exists():
            left.append(f"bridge {self.bridge}")
        return left

    def _kill_containers(self) -> None:
        kill_runc_containers(self.runc_root)

    def _kill_shims(self) -> None:
        """The shims this node's containerd started: they carry its socket in their command line.
        A killed shim leaves its socket in /run/containerd/s, named as containerd 2.x names it
        (pkg/shim/util_unix.go: sha256 of <address>/<namespace>/<id>); those are removed too."""
        marker = str(self.socket).encode()
        sockets = []
        for pid in shims_of(marker):
            with contextlib.suppress(OSError):
                argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
                flags = dict(zip(argv[1::2], argv[2::2], strict=False))
                key = os.path.join(flags["-address"], flags["-namespace"], flags["-id"])
                sockets.append(SHIM_SOCKETS / hashlib.sha256(key.encode()).hexdigest())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ControlPlaneError):
            wait_until(lambda: not shims_of(marker), 10, "the shims gone")
        for socket in sockets:
            socket.unlink(missing_ok=True)


def kill_runc_containers(runc_root: Path) -> None:
    """Containers outlive containerd (their shims hold them): kill each through runc."""
    if not runc_root.exists():
        return
    for namespace_root in runc_root.iterdir():
        listing = subprocess.run([RUNC, "--root", str(namespace_root), "list", "-q"], capture_output=True, text=True)
        for container in listing.stdout.split():
            subprocess.run([RUNC, "--root", str(namespace_root), "kill", container, "KILL"], capture_output=True)
            subprocess.run([RUNC, "--root", str(namespace_root), "delete", "-f", container], capture_output=True)


def shims_of(marker: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"containerd-shim" in cmdline and marker in cmdline:
                pids.append(int(entry.name))
    return pids


def mount_points() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def unmount_under(directory: Path) -> None:
    """Unmount every mount point under `directory`, deepest first (overlay rootfs, shm, netns,
    the kubelet's volume tmpfs), lazily so that a busy one does not block the rest."""
    prefix = str(directory.resolve()) + "/"
    for _ in range(3):
        ours = sorted({m for m in mount_points() if m.startswith(prefix)}, key=len, reverse=True)
        if not ours:
            return
        for mount in ours:
            subprocess.run(["umount", "-l", mount], capture_output=True)
        time.sleep(0.2)
