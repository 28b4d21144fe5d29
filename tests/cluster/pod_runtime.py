"""How the node agent turns a bound Pod into a local process: its env, volumes and command.

What a container runtime gives a container, as files and variables on this machine:
- env: `value` ($(VAR) expanded), `fieldRef` (downward API), `secretKeyRef`, `configMapKeyRef`,
  `envFrom`, read from the real apiserver; a missing Secret/ConfigMap/key is the kubelet's
  CreateContainerConfigError (the pod stays Pending and is retried);
- volumes: configMap, secret (items, optional), emptyDir, downwardAPI and projected (serviceAccount
  token from the TokenRequest API, the kube-root-ca.crt ConfigMap, downward-API files) become
  directories under the pod's scratch dir;
- securityContext: runAsUser/runAsGroup/fsGroup honoured when root, readOnlyRootFilesystem
  not enforced (pod_identity.py says what and why);
- the image's `python`/`torchrun` are this environment's (the agent puts its bin dir first on PATH),
  unless the agent maps the pod's image to another interpreter (`ImageRuntime`: the TPU trainer
  image's Python 3.12 JAX venv, tests/support/jax_env.py) with the ENV that image sets;
  the working directory is `workingDir` mapped like a mount path, else the pod's scratch dir.
There are no mount namespaces here: a path under a volume's mountPath in the command or the env is
mapped onto the volume's directory, and the termination-message path onto a file named by
`SPEEDRUN_TERMINATION_LOG`. Cluster DNS names are never rewritten: they resolve through CoreDNS
(network.py) or not at all.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.cluster.api import Api
from tests.cluster.pod_identity import IdentityError, PodIdentity, log, pod_identity

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_ENV = "SPEEDRUN_TERMINATION_LOG"
POD_MARKER = "SPEEDRUN_NODE_AGENT_POD_UID"  # in every process of a pod: which pod it belongs to (cgroup stand-in)


class PodStartError(Exception):
    """The pod cannot start (yet): the kubelet's waiting reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageRuntime:
    """What an image carries that its process needs: its `python` (the directory goes first on
    PATH, as the image's bin would) and the ENV the image sets (e.g. a PYTHONPATH)."""

    python: Path
    env: dict[str, str] = field(default_factory=dict)


class PodFiles:
    """Resolves one pod's env, volumes and command against the apiserver; `images` maps an image
    reference to the interpreter it carries (any other image: this environment's Python)."""

    def __init__(
        self, api: Api, pod: dict[str, Any], root: Path, pod_ip: str, host_ip: str,
        images: dict[str, ImageRuntime] | None = None,
    ) -> None:  # fmt: skip
        self.api, self.pod, self.root, self.ip, self.host_ip = api, pod, root, pod_ip, host_ip
        self.namespace = pod["metadata"]["namespace"]
        self.container = pod["spec"]["containers"][0]
        self.runtime = (images or {}).get(self.container.get("image", ""))
        self.python = self.runtime.python if self.runtime else Path(sys.executable)
        self.mounts: dict[str, Path] = {}
        self.identity = PodIdentity()

    def prepare(self) -> tuple[list[str], dict[str, str], Path]:
        """(argv, env, cwd) of the container's main process; PodStartError when it cannot start.
        Run argv through `self.identity.wrap` (after any stand-in) for the pod's securityContext."""
        try:
            self.identity = replace(pod_identity(self.pod), python=str(self.python))
        except IdentityError as err:
            raise PodStartError("CreateContainerConfigError", str(err)) from None
        self.root.mkdir(parents=True, exist_ok=True)
        self._volumes()
        self.mounts[self.container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH] = self.message_path
        env = self._env()
        argv = [*(self.container.get("command") or []), *(self.container.get("args") or [])]
        if not argv:
            raise PodStartError("CreateContainerError", "the container has no command (no image entrypoints here)")
        argv = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in argv]
        argv = [self._map_arg(a) for a in argv]
        working_dir = self.container.get("workingDir")
        cwd = Path(self.map_path(working_dir)) if working_dir else self.root
        cwd.mkdir(parents=True, exist_ok=True)
        self.identity.hand_over(self.root)
        for note in self.identity.notes():
            log.info(f"pod {self.namespace}/{self.pod['metadata']['name']}: {note}")
        return argv, env, cwd

    @property
    def message_path(self) -> Path:
        return self.root / "termination-log"

    # -- data sources

    def data(self, kind: str, name: str, optional: bool = False) -> dict[str, bytes]:
        plural = "configmaps" if kind.lower().startswith("configmap") else "secrets"
        obj = self.api.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        if obj is None:
            if optional:
                return {}
            raise PodStartError("CreateContainerConfigError", f'{plural[:-1]} "{name}" not found')
        if plural == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        binary = {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
        return {k: v.encode() for k, v in (obj.get("data") or {}).items()} | binary

    def field(self, path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        keyed = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if keyed:
            return str((meta.get(keyed[1]) or {}).get(keyed[2], ""))
        simple = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": self.ip, "status.podIPs": self.ip, "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }  # fmt: skip
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))
        if path not in simple:
            raise PodStartError("CreateContainerConfigError", f"unsupported fieldRef {path}")
        return simple[path]

    # -- env

    def _env(self) -> dict[str, str]:
        # The "image's" environment: nothing of the test process leaks in (no AWS_* in particular).
        bin_dir = str(self.python.parent)
        image = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                 "HOME": str(self.root), "HOSTNAME": self.pod["spec"].get("hostname") or self.pod["metadata"]["name"],
                 "KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443",
                 **(self.runtime.env if self.runtime else {})}  # fmt: skip
        env = dict(image)
        for source in self.container.get("envFrom") or []:
            kind = "configMap" if "configMapRef" in source else "secret"
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            for key, value in self.data(kind, ref["name"], bool(ref.get("optional"))).items():
                env[source.get("prefix", "") + key] = value.decode()
        for var in self.container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var.get("value", ""))
                continue
            ref = var["valueFrom"]
            if "fieldRef" in ref:
                env[var["name"]] = self.field(ref["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "secret" if "secretKeyRef" in ref else "configMap"
                key_ref = ref.get("secretKeyRef") or ref["configMapKeyRef"]
                values = self.data(kind, key_ref["name"], bool(key_ref.get("optional")))
                if key_ref["key"] in values:
                    env[var["name"]] = values[key_ref["key"]].decode()
                elif not key_ref.get("optional"):
                    raise PodStartError("CreateContainerConfigError",
                                        f"couldn't find key {key_ref['key']} in {kind} {key_ref['name']}")  # fmt: skip
            elif "resourceFieldRef" in ref:
                env[var["name"]] = "1"  # limits are not enforced here: a divisor-free stand-in
        # Only the pod's own values name paths inside the pod; the "image's" PATH names this
        # machine's (a checkout under /tmp must not be mapped onto the pod's /tmp emptyDir).
        env = {k: v if image.get(k) == v else self.map_path(v) for k, v in env.items()}
        env[TERMINATION_ENV] = str(self.message_path)
        env[POD_MARKER] = self.pod["metadata"]["uid"]
        return env

    # -- volumes

    def _volumes(self) -> None:
        dirs: dict[str, Path] = {}
        for volume in self.pod["spec"].get("volumes") or []:
            target = self.root / "volumes" / volume["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume or "secret" in volume:
                self._write_source(target, volume)
            elif "downwardAPI" in volume:
                self._write_downward(target, volume["downwardAPI"].get("items") or [])
            elif "projected" in volume:
                for source in volume["projected"].get("sources") or []:
                    if "serviceAccountToken" in source:
                        self._write_token(target, source["serviceAccountToken"])
                    elif "downwardAPI" in source:
                        self._write_downward(target, source["downwardAPI"].get("items") or [])
                    else:
                        self._write_source(target, source)
            elif "emptyDir" not in volume:
                kinds = [k for k in volume if k != "name"]
                raise PodStartError("CreateContainerConfigError",
                                    f"volume {volume['name']}: {kinds} is not supported by the node agent")  # fmt: skip
            dirs[volume["name"]] = target
        for mount in self.container.get("volumeMounts") or []:
            self.mounts[mount["mountPath"]] = dirs[mount["name"]] / mount.get("subPath", "")

    def _write_source(self, target: Path, volume: dict[str, Any]) -> None:
        kind = "configMap" if "configMap" in volume else "secret"
        source = volume[kind]
        files = self.data(kind, source.get("name") or source.get("secretName"), bool(source.get("optional")))
        for item in source.get("items") or [{"key": k, "path": k} for k in files]:
            if item["key"] not in files:
                raise PodStartError("CreateContainerConfigError", f"{kind} has no key {item['key']}")
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[item["key"]])

    def _write_downward(self, target: Path, items: list[dict[str, Any]]) -> None:
        for item in items:
            if "fieldRef" in item:
                (target / item["path"]).write_text(self.field(item["fieldRef"]["fieldPath"]))

    def _write_token(self, target: Path, source: dict[str, Any]) -> None:
        meta = self.pod["metadata"]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": int(source.get("expirationSeconds", 3600)),
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                                            "uid": meta["uid"]}}}  # fmt: skip
        if source.get("audience"):
            body["spec"]["audiences"] = [source["audience"]]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        (target / source.get("path", "token")).write_text(self.api.create(path, body)["status"]["token"])

    # -- paths

    def map_path(self, value: str) -> str:
        """A path inside the pod -> where it lives here (longest mount path first)."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            base = mount.rstrip("/")
            if value in (mount, base):
                return str(self.mounts[mount])
            if value.startswith(base + "/"):
                return str(self.mounts[mount]) + value[len(base) :]
        return value

    def _map_arg(self, arg: str) -> str:
        if arg.startswith("-") and "=" in arg:
            flag, value = arg.split("=", 1)
            return f"{flag}={self.map_path(value)}"
        return self.map_path(arg)


def pod_pids(uid: str) -> list[int]:
    """The pod's processes: those carrying its marker in their environment (a cgroup stands in;
    process groups would not do: torchrun starts its workers in sessions of their own)."""
    marker = f"\0{POD_MARKER}={uid}\0".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in b"\0" + environ.read_bytes():
                pids.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue
    return pids
