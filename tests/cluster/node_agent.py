"""The node agent: a kubelet running pods as local processes (the retired emulator kubelet's successor).

It registers Node objects (cpu, memory, pods, `nvidia.com/gpu` or `google.com/tpu` on a node that
claims them, gke_tpu.py's TPU hosts, so the real scheduler's fit checks decide placement), renews
their Leases and Ready condition as the kubelet's heartbeat does (the node-lifecycle controller
then lifts the not-ready taint), and runs each pod the scheduler binds to one of its nodes:

    Pending (scheduled) -> Running (podIP, container running, PodScheduled/Initialized/
    ContainersReady/Ready True) -> Succeeded|Failed (exit code, 128+signal when killed, reason,
    termination message from the file or, with FallbackToLogsOnError, the log tail)

restarting the container under restartPolicy OnFailure/Always (restartCount). Deleting a pod sends
SIGTERM to its main process, SIGKILL to all of its processes after min(grace, 5 s), and then
completes the deletion (DELETE with gracePeriodSeconds=0), as the kubelet does.
The pod's network is network.py's: its own namespace and address with cluster DNS when root,
else a loopback address (said once in the log). `hold(prefix)` keeps matching pods Pending with
ContainerCreating (a slow image pull); `refuse(prefix)` leaves them waiting with ErrImagePull
(a broken image).

The pod runs as its securityContext's runAsUser/runAsGroup/fsGroup when the agent is root;
readOnlyRootFilesystem is not enforced (pod_identity.py). Limits: no images (`images` maps one to the
Python it carries), cgroups or mount namespaces (pod_runtime.py maps mount paths); one container per
pod (no init containers, sidecars or probes; ready = running); resources counted, not enforced.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import gke_tpu
from tests.cluster.api import Api, ApiError
from tests.cluster.network import PodNetwork
from tests.cluster.pod_runtime import ImageRuntime, PodFiles, PodStartError, pod_pids

log = logging.getLogger("node-agent")

MESSAGE_LIMIT = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048
MAX_GRACE_SECONDS, HEARTBEAT_SECONDS = 5.0, 5.0


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: str = "True", reason: str = "") -> dict[str, Any]:
    out = {"type": type_, "status": status, "lastTransitionTime": now(), "lastProbeTime": None}
    return out | ({"reason": reason} if reason else {})


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    tpus: int = 0  # google.com/tpu capacity: a GKE TPU host (gke_tpu.py)
    taints: tuple[dict[str, str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # the host's, over its pods' (gke_tpu.CPU_CHIPS)


@dataclass
class Container:
    pod: dict[str, Any]
    files: PodFiles
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: str
    restarts: int = 0
    kill_at: float | None = None


class NodeAgent:
    def __init__(
        self,
        api: Api,
        workdir: Path,
        nodes: list[NodeSpec],
        network: PodNetwork,
        stand_in: Callable[[dict[str, Any]], list[str] | None] | None = None,
        images: dict[str, ImageRuntime] | None = None,
    ) -> None:
        """`stand_in(pod)`, when given and not None for a pod, is the command run instead of the
        pod's: the control-plane bench's pods that finish at once, the tests' PodPlayers."""
        self.api, self.workdir, self.nodes, self.network = api, workdir, {n.name: n for n in nodes}, network
        self.stand_in, self.images = stand_in, images
        self.errors: list[BaseException] = []
        self.held: set[str] = set()
        self.refused: set[str] = set()
        self._running: dict[str, Container] = {}  # by pod uid
        self._seen: set[str] = set()
        self._logs: dict[str, Path] = {}  # pod name -> log file (latest pod of that name)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=t, name=f"node-agent-{t.__name__}", daemon=True)
                         for t in (self._watch_loop, self._reap_loop, self._heartbeat_loop)]  # fmt: skip

    # -- lifecycle and test verbs

    def __enter__(self) -> NodeAgent:
        for node in self.nodes.values():
            self._register(node)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        with self._lock:
            containers = list(self._running.values())
        for c in containers:
            self._signal(c, signal.SIGKILL, every_process=True)
        for c in containers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        for node in self.nodes:
            with contextlib.suppress(ApiError, OSError):
                self.api.delete(f"/api/v1/nodes/{node}")

    def check(self) -> None:
        if self.errors:
            raise AssertionError(f"the node agent failed: {self.errors[0]!r}") from self.errors[0]

    def hold(self, prefix: str) -> None:
        """Keep pods whose name starts with `prefix` in ContainerCreating until `release(prefix)`."""
        self.held.add(prefix)

    def release(self, prefix: str) -> None:
        self.held.discard(prefix)
        self._resync()

    def refuse(self, prefix: str) -> None:
        """Leave pods whose name starts with `prefix` waiting with ErrImagePull (a broken image)."""
        self.refused.add(prefix)

    def kill(self, pod_name: str, sig: int = signal.SIGKILL) -> None:
        with self._lock:
            found = [c for c in self._running.values() if c.pod["metadata"]["name"] == pod_name]
        if not found:
            raise AssertionError(f"pod {pod_name} is not running here")
        self._signal(found[0], sig, every_process=True)

    def log(self, pod_name: str) -> str:
        path = self._logs.get(pod_name)
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"----- pod {name} -----\n" + "\n".join(self.log(name).splitlines()[-lines:])
                         for name in list(self._logs))  # fmt: skip

    # -- nodes

    def _register(self, node: NodeSpec) -> None:
        capacity = {"cpu": node.cpu, "memory": node.memory, "pods": "110", "ephemeral-storage": "100Gi"}
        if node.gpus:
            capacity["nvidia.com/gpu"] = str(node.gpus)
        if node.tpus:
            capacity["google.com/tpu"] = str(node.tpus)
        labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  **node.labels}  # fmt: skip
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": labels},
                "spec": {"taints": list(node.taints)}}  # fmt: skip
        with contextlib.suppress(ApiError):
            self.api.create("/api/v1/nodes", body)
        self._node_status(node.name, capacity)
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": node.name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40}}  # fmt: skip
        with contextlib.suppress(ApiError):
            self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)

    def _node_status(self, name: str, capacity: dict[str, str] | None = None) -> None:
        status: dict[str, Any] = {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "node agent is posting ready",
                 "lastHeartbeatTime": now(), "lastTransitionTime": now()},
                *({"type": t, "status": "False", "reason": f"KubeletHas{r}", "lastHeartbeatTime": now(),
                   "lastTransitionTime": now()}
                  for t, r in (("MemoryPressure", "SufficientMemory"), ("DiskPressure", "NoDiskPressure"),
                               ("PIDPressure", "SufficientPID"))),
            ],
            "addresses": [{"type": "InternalIP", "address": self.network.host_ip},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.36.3-speedrun-node-agent", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://", "kernelVersion": "",
                         "osImage": "", "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""},
        }  # fmt: skip
        if capacity:
            status |= {"capacity": capacity, "allocatable": capacity}
        self.api.patch(f"/api/v1/nodes/{name}/status", {"status": status}, kind="strategic")

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            for name in self.nodes:
                try:
                    self._node_status(name)
                    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
                    renew = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    self.api.patch(path, {"spec": {"renewTime": renew}})
                except (ApiError, OSError) as err:
                    log.warning(f"heartbeat of {name} failed: {err}")

    # -- pods

    def _watch_loop(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listing = self.api.request("GET", "/api/v1/pods")
                    version = listing["metadata"]["resourceVersion"]
                    for pod in listing.get("items") or []:
                        self._on_pod(pod)
                for kind, pod in self.api.watch("/api/v1/pods", resource_version=version, timeout_seconds=30):
                    if self._stop.is_set():
                        return
                    if kind == "ERROR":
                        version = ""  # expired: list again
                        break
                    version = pod["metadata"]["resourceVersion"]
                    if kind != "DELETED":
                        self._on_pod(pod)
            except (ApiError, OSError) as err:
                if not self._stop.is_set():
                    log.warning(f"pod watch ended: {err}; listing again")
                version = ""
                self._stop.wait(0.5)
            except Exception as err:  # a bug here: kept for check(); the loop goes on
                log.exception("node agent")
                self.errors.append(err)
                version = ""

    def _resync(self) -> None:
        for pod in self.api.list("/api/v1/pods"):
            self._on_pod(pod)

    def _on_pod(self, pod: dict[str, Any]) -> None:
        with self._lock:  # the watch thread and release() may both get here
            self._on_pod_locked(pod)

    def _on_pod_locked(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("nodeName") not in self.nodes:
            return
        uid = meta["uid"]
        if meta.get("deletionTimestamp"):
            self._terminate(pod)
            return
        if uid in self._seen or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        name = meta["name"]
        if any(name.startswith(p) for p in self.refused):
            self._waiting(pod, "ErrImagePull", f"the node agent refuses to pull {spec['containers'][0].get('image')}")
            return
        if any(name.startswith(p) for p in self.held):
            self._waiting(pod, "ContainerCreating", "held by the test (a slow image pull)")
            return
        try:
            self._start(pod)
        except PodStartError as err:
            self._waiting(pod, err.reason, str(err))

    def _waiting(self, pod: dict[str, Any], reason: str, message: str) -> None:
        container = pod["spec"]["containers"][0]
        state = {"name": container["name"], "image": container.get("image", ""), "ready": False, "restartCount": 0,
                 "started": False, "state": {"waiting": {"reason": reason, "message": message}}}  # fmt: skip
        conditions = [condition("PodScheduled"), condition("Initialized"),
                      condition("ContainersReady", "False", "ContainersNotReady"),
                      condition("Ready", "False", "ContainersNotReady")]  # fmt: skip
        self._patch_status(pod, {"phase": "Pending", "hostIP": self.network.host_ip, "conditions": conditions,
                                 "containerStatuses": [state]})  # fmt: skip

    def _start(self, pod: dict[str, Any], restarts: int = 0) -> None:
        meta = pod["metadata"]
        root = self.workdir / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
        spec = pod["spec"]
        ip = self.network.attach(
            meta["uid"], spec.get("hostname") or meta["name"], meta["namespace"], spec.get("subdomain", "")
        )
        files = PodFiles(self.api, pod, root, ip, self.network.host_ip, self.images)
        argv, env, cwd = files.prepare()
        env |= gke_tpu.tpu_env(self.api, pod) | self.nodes[spec["nodeName"]].env  # GKE's TPU env; the host's
        argv = files.identity.wrap((self.stand_in(pod) if self.stand_in else None) or argv)
        log_path = root / "log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(self.network.wrap(meta["uid"], argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        started = now()
        with self._lock:
            self._seen.add(meta["uid"])
            self._running[meta["uid"]] = Container(pod, files, proc, log_path, started, restarts)
            self._logs[meta["name"]] = log_path
        container = pod["spec"]["containers"][0]
        state = {"name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": True,
                 "started": True, "restartCount": restarts, "containerID": f"process://{proc.pid}",
                 "state": {"running": {"startedAt": started}}}  # fmt: skip
        conditions = [condition(t) for t in ("PodReadyToStartContainers", "PodScheduled", "Initialized",
                                             "ContainersReady", "Ready")]  # fmt: skip
        log.info(f"pod {meta['namespace']}/{meta['name']} started at {ip}: {' '.join(argv)}")
        host = self.network.host_ip
        self._patch_status(pod, {"phase": "Running", "hostIP": host, "hostIPs": [{"ip": host}], "podIP": ip,
                                 "podIPs": [{"ip": ip}], "startTime": started, "conditions": conditions,
                                 "containerStatuses": [state]})  # fmt: skip

    def _reap_loop(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                containers = list(self._running.items())
            for uid, c in containers:
                if c.kill_at is not None and time.monotonic() > c.kill_at:
                    self._signal(c, signal.SIGKILL, every_process=True)
                code = c.proc.poll()
                if code is None:
                    continue
                self._signal(c, signal.SIGKILL, every_process=True)  # the container ends with its main process
                with self._lock:
                    del self._running[uid]
                try:
                    self._exited(c, code if code >= 0 else 128 - code)
                except (ApiError, OSError) as err:
                    log.warning(f"status of {c.pod['metadata']['name']} not written: {err}")
                except Exception as err:
                    log.exception("node agent")
                    self.errors.append(err)

    def _exited(self, c: Container, code: int) -> None:
        meta = c.pod["metadata"]
        if c.kill_at is not None:  # deleted: the deletion completes once every process is gone
            self.network.detach(meta["uid"])
            self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", grace=0)
            return
        policy = c.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            log.info(f"pod {meta['name']}: exited {code}, restarting ({policy})")
            self._start(c.pod, c.restarts + 1)
            return
        message = c.files.message_path.read_bytes()[-MESSAGE_LIMIT:].decode(errors="replace") \
            if c.files.message_path.exists() else ""  # fmt: skip
        container = c.pod["spec"]["containers"][0]
        if not message.strip() and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = c.log_path.read_bytes().splitlines()[-FALLBACK_LINES:]
            message = b"\n".join(tail)[-FALLBACK_BYTES:].decode(errors="replace")
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": c.started_at,
                      "finishedAt": now(), "containerID": f"process://{c.proc.pid}"}  # fmt: skip
        if message:
            terminated["message"] = message
        state = {"name": container["name"], "image": container.get("image", ""), "ready": False, "started": False,
                 "restartCount": c.restarts, "state": {"terminated": terminated}}  # fmt: skip
        conditions = [condition("PodReadyToStartContainers", "False"), condition("PodScheduled"),
                      condition("Initialized"), condition("ContainersReady", "False", "PodCompleted"),
                      condition("Ready", "False", "PodCompleted")]  # fmt: skip
        log.info(f"pod {meta['name']}: exited {code}")
        self._patch_status(c.pod, {"phase": "Succeeded" if code == 0 else "Failed", "conditions": conditions,
                                   "containerStatuses": [state]})  # fmt: skip
        self.network.detach(meta["uid"])

    def _terminate(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with self._lock:
            c = self._running.get(meta["uid"])
        if c is None:  # nothing runs: complete the deletion at once
            self.network.detach(meta["uid"])
            with contextlib.suppress(ApiError, OSError):
                self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", grace=0)
            return
        if c.kill_at is None:
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
            c.kill_at = time.monotonic() + min(grace, MAX_GRACE_SECONDS)
            self._signal(c, signal.SIGTERM)

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {"status": status})
        except ApiError as err:
            if err.status != 404:
                raise

    @staticmethod
    def _signal(c: Container, sig: int, every_process: bool = False) -> None:
        if c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(sig)
        for pid in pod_pids(c.pod["metadata"]["uid"]) if every_process else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
