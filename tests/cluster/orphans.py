"""Real nodes a dead test session left running, found and ended by the next session.

A session that is killed (a timeout, a crashed pytest) or whose teardown fails leaves its nodes
up: kubelets and containerds start in sessions of their own, so they outlive pytest, and their
containers outlive them (their shims hold them). They keep running pods against a control plane
that is gone, holding the trainer image's 6 GB per node, CPU and the machine's kube-proxy rules.
Only one session at a time may run real nodes (real_nodes.LOCK), so once a session holds the lock
every other `speedrun-nodes-*` directory that holds a node (not only the images a session waiting
for the lock has made), cgroup root `/speedrun-<pid>-*` and `srn*` bridge is such a leftover:
`reap(ours, bridges)` kills what runs there (containers through runc, then every process whose
command line names the directory), unmounts, removes the cgroups, the bridges and the directory,
and returns what it ended, one line each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.cluster.containerd_runtime import kill_runc_containers, unmount_under
from tests.cluster.kubelet_node import CGROUP_FS, remove_cgroup_tree

PREFIX = "speedrun-nodes-"


def processes_naming(marker: str) -> list[int]:
    """The pids whose command line holds `marker` (a node directory: kubelet, containerd, shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def kill_cgroup(root: Path) -> None:
    """SIGKILL every process left in a cgroup tree (a container runc no longer knows of)."""
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def reap(ours: Path, bridges: set[str]) -> list[str]:
    ended = []
    for directory in sorted(Path(tempfile.gettempdir()).glob(f"{PREFIX}*")):
        if directory.resolve() == ours.resolve() or not any(directory.glob("*/containerd")):
            continue  # ours, or a session that waits for the lock (its images are made, no node yet)
        for runc_root in directory.glob("*/containerd/state/runc"):
            kill_runc_containers(runc_root)
        for pid in processes_naming(str(directory) + "/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        unmount_under(directory)
        shutil.rmtree(directory, ignore_errors=True)
        ended.append(f"nodes of a dead session in {directory}")
    mine = f"speedrun-{os.getpid()}-"
    for hierarchy in sorted(CGROUP_FS.iterdir()) if CGROUP_FS.exists() else ():
        for root in hierarchy.glob("speedrun-*-*"):
            if root.is_dir() and not root.name.startswith(mine):
                kill_cgroup(root)
                remove_cgroup_tree(root)
                if not root.exists():
                    ended.append(f"cgroup {root}")
    links = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("srn") and name not in bridges:
            subprocess.run(["ip", "link", "delete", name], capture_output=True)
            ended.append(f"bridge {name}")
    return ended
