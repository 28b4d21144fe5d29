"""Who a pod's process runs as: the node agent's reading of the pod's securityContext.

What the kubelet and the container runtime do with `securityContext` (the container's fields
override the pod's), and what a process on this machine can be given of it:
- runAsUser / runAsGroup / fsGroup / supplementalGroups: honoured when the agent runs as root.
  The process is started through util-linux's `setpriv` (after the network namespace and the
  hostname are set up as root) with that uid, gid and groups; the pod's scratch directory
  (volumes, working directory, termination-log file, HOME) is handed over to that uid and the
  fsGroup, as the kubelet chowns volumes to fsGroup, and its parent directories are made
  searchable (o+x) so the uid can reach it. Without root nothing can switch users: the process
  runs as the agent's user, and the agent says so in its log.
- runAsNonRoot: true with no runAsUser, or runAsUser 0, is refused with the kubelet's
  CreateContainerConfigError: the "image" here is this machine's Python, whose user is root.
- allowPrivilegeEscalation: false -> no_new_privs; capabilities.drop [ALL] -> an empty bounding
  and inheritable set (setpriv), when root. One exception, said in the log: where this
  environment's Python lies out of other users' reach (a pyenv under /root, mode 0700), the
  process keeps CAP_DAC_READ_SEARCH alone so that it can run the "image's" Python at all; it
  reads and searches anywhere but writes only where its uid may.
- readOnlyRootFilesystem: NOT enforced: without mount namespaces and images there is no root
  filesystem of the pod's own to make read-only. What holds writes back is the uid: a pod run as
  a non-root user can write its own volumes and directories, and elsewhere only where this
  machine's permissions let any user write (such as /tmp and /dev/shm). The agent logs this for
  each pod that asks for it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("node-agent")

NOT_ENFORCED_READ_ONLY_ROOT = (
    "readOnlyRootFilesystem is not enforced by the node agent (no mount namespaces); writes outside the "
    "pod's volumes are held back only by its uid's file permissions"
)


class IdentityError(Exception):
    """The pod's securityContext cannot be met: the kubelet's CreateContainerConfigError."""


@dataclass(frozen=True)
class PodIdentity:
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    no_new_privs: bool = False
    drop_all_caps: bool = False
    read_only_root: bool = False
    python: str = sys.executable  # the image's interpreter (pod_runtime.ImageRuntime)

    @property
    def switches_user(self) -> bool:
        return self.uid is not None and os.geteuid() == 0 and self.uid != 0

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run as this identity (setpriv), when the agent can switch users; else argv."""
        if not self.switches_user:
            return argv
        gid = self.gid if self.gid is not None else self.uid
        groups = f"--groups={','.join(map(str, self.groups))}" if self.groups else "--clear-groups"
        prefix = ["setpriv", f"--reuid={self.uid}", f"--regid={gid}", groups]
        if self.no_new_privs:
            prefix.append("--no-new-privs")
        if interpreter_hidden(self.python):  # read and search anywhere, write nothing more (see notes())
            keep = "+dac_read_search"
            prefix += [f"--inh-caps=-all,{keep}", f"--ambient-caps={keep}", f"--bounding-set=-all,{keep}"]
        elif self.drop_all_caps:
            prefix += ["--inh-caps=-all", "--bounding-set=-all"]
        return [*prefix, "--", *argv]

    def hand_over(self, root: Path) -> None:
        """Give the pod's scratch directory to its uid (and fsGroup) and let that uid reach it."""
        if not self.switches_user:
            return
        group = self.groups[0] if self.groups else (self.gid if self.gid is not None else self.uid)
        for path in [root, *root.rglob("*")]:
            os.chown(path, self.uid, group, follow_symlinks=False)
        for parent in root.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def notes(self) -> list[str]:
        """What of the securityContext this machine does not enforce, one line each."""
        found = [NOT_ENFORCED_READ_ONLY_ROOT] if self.read_only_root else []
        if self.switches_user and (hidden := interpreter_hidden(self.python)):
            found.append(f"runs as uid {self.uid} keeping CAP_DAC_READ_SEARCH (reads anywhere, writes nothing more): "
                         f"the image's Python ({hidden}) is out of others' reach")  # fmt: skip
        if self.uid is not None and os.geteuid() != 0 and self.uid != os.geteuid():
            found.append(f"runAsUser {self.uid} is not honoured: the node agent is not root and runs the pod "
                         f"as uid {os.geteuid()}")  # fmt: skip
        return found


@functools.cache
def interpreter_hidden(python: str = sys.executable) -> str:
    """The first path on the way to `python` (interpreter, environment) that other users cannot
    search or read, or "" (a pyenv under /root, mode 0700, is the usual one)."""
    prefix = sys.prefix if python == sys.executable else str(Path(python).parent.parent)
    for target in (Path(os.path.realpath(python)), Path(prefix)):
        for path in [*reversed(target.parents), target]:
            mode = path.stat().st_mode
            needed = stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH | stat.S_IXOTH
            if mode & needed != needed:
                return str(path)
    return ""


def pod_identity(pod: dict[str, Any]) -> PodIdentity:
    """The identity of the pod's (first) container; IdentityError when it cannot be met."""
    pod_context = pod["spec"].get("securityContext") or {}
    container = pod["spec"]["containers"][0].get("securityContext") or {}

    def pick(key: str) -> Any:
        return container[key] if key in container else pod_context.get(key)

    uid, gid, non_root = pick("runAsUser"), pick("runAsGroup"), pick("runAsNonRoot")
    if non_root and uid is None and os.geteuid() == 0:
        raise IdentityError("container has runAsNonRoot and image will run as root (the node agent's user)")
    if non_root and uid == 0:
        raise IdentityError("container's runAsUser breaks non-root policy")
    groups = [pod_context["fsGroup"]] if pod_context.get("fsGroup") is not None else []
    groups += [g for g in pod_context.get("supplementalGroups") or [] if g not in groups]
    if uid is not None and uid != 0 and os.geteuid() == 0 and shutil.which("setpriv") is None:
        raise IdentityError(f"runAsUser {uid}: the node agent needs util-linux's setpriv to switch users")
    dropped = [c.upper() for c in (container.get("capabilities") or {}).get("drop") or []]
    return PodIdentity(
        uid=uid,
        gid=gid,
        groups=tuple(groups),
        no_new_privs=container.get("allowPrivilegeEscalation") is False,
        drop_all_caps="ALL" in dropped,
        read_only_root=bool(container.get("readOnlyRootFilesystem")),
    )
