"""A "process kubelet" for the e2e tests: the Job controller and the kubelet, played with local processes.

No kube-apiserver, Docker or kind runs on these machines (DESIGN.md, "Testing here"), so the e2e
tests run the real operator against `KubeApiEmulator` (tests/kube_emulator.py), and this module
plays the two cluster components the operator relies on, through the same HTTP API:

- the Job controller (batch/v1, in tests/job_controller.py): creates a Job's pods -- for Indexed
  Jobs one per completion index, with the index label and annotation, `JOB_COMPLETION_INDEX` in
  the env, hostname `<job>-<index>` and the template's subdomain -- replaces failed pods after a
  back-off until `backoffLimit`, applies `podFailurePolicy` (FailJob, Ignore, Count on exit
  codes and pod conditions), honours `suspend` and `activeDeadlineSeconds`, deletes the running
  pods of a Job that failed, and writes active/ready/succeeded/failed/completedIndexes and the
  SuccessCriteriaMet+Complete or FailureTarget+Failed conditions;
- the kubelet: runs each pod's container command as local processes and writes the pod's status
  back: Running with `podIP`, then Succeeded/Failed with the exit code (128+signal when killed)
  and the termination message (the file, or with FallbackToLogsOnError the log tail). Every
  process of a pod carries `PROCESS_KUBELET_POD_UID=<pod uid>` in its environment, which stands
  in for the container's cgroup: deleting the pod sends SIGTERM to the main process and later
  SIGKILL to all of them, and when the main process exits the rest are killed, as a container
  runtime does (torchrun starts its workers in sessions of their own, so process groups would
  not reach them).

How a pod maps onto this machine (in a cluster -> here):
- the image's `torchrun` / `python` -> this interpreter (`python -m torch.distributed.run`).
  `torchrun` and `python -m <one of TORCHRUN_MODULES>` count as torchrun launchers (below).
- pod IP -> 127.0.0.x, one per Job and completion index (a replacement pod keeps its
  predecessor's address, as if the DNS name had followed it).
- DNS `<hostname>.<subdomain>[.<ns>.svc[.cluster.local]]:<port>` -> there is no resolver: such
  tokens in the command are rewritten to `<pod IP>:<host port>` while a Service named
  `<subdomain>` exists; each (pod IP, port) gets its own free host port, as each pod has its
  own port space in a cluster. This is how `--rdzv-endpoint=<name>-train-0.<name>:29400` reaches
  the index-0 pod.
- a torchrun launcher finds its own address by hostname -> `--local-addr=<pod IP>` is added, and
  `--rdzv-conf=is_host=true` only where the endpoint is the pod's own address (torch would take
  any loopback endpoint for its own and every agent would try to host the store).
- env `value` ($(VAR) expanded), `fieldRef`, `secretKeyRef`, `configMapKeyRef`, `envFrom` ->
  resolved through the API; a missing Secret or ConfigMap keeps the pod Pending
  (CreateContainerConfigError) until it exists.
- configMap, secret and emptyDir volumes -> directories under the pod's scratch dir; mount paths
  in the arguments and env values are mapped onto them (e.g. /etc/speedrun/run.json, /tmp).
- /dev/termination-log (terminationMessagePath) -> a file per pod, and `SPEEDRUN_TERMINATION_LOG`
  is set to it: nothing here can write /dev, where the kubelet bind-mounts the file in a pod.

Limits -- what a real cluster does that this does not:
- no images, containers, network namespaces or cgroups: every pod runs this interpreter as the
  test's user, on the host's filesystem and network. securityContext (non-root, read-only root
  filesystem, dropped capabilities), resources, nodeSelector, tolerations, affinity, priority and
  image pull policy are ignored; nothing is scheduled (all pods start at once on one "node") and
  nothing waits for capacity; OMP_NUM_THREADS=1 stands in for CPU limits.
- one port space: servers that bind 0.0.0.0 or * clash across pods on the same port (the
  trainer's metrics endpoint, torch's TCPStore). The host-port mapping covers only ports named in
  the command, so the tests give each SpeedrunJob a free `spec.metrics.port`; gloo and torchrun's
  worker store use the host's addresses and free ports, as on any host.
- DNS is not real: only the command line is rewritten; a name resolved inside a program is not.
  Services get no ClusterIP, endpoints or proxying; a headless one only makes names resolvable.
- two variables a real pod would not have: `SPEEDRUN_TERMINATION_LOG` (see above) and
  `PROCESS_KUBELET_POD_UID`.
- one container per pod (the first): no init containers, sidecars, probes (ready = running),
  lifecycle hooks or container restarts (restartPolicy is treated as Never, which the operator
  uses); no pods/log endpoint (the logs are files: `ProcessKubelet.log`).
- the Job controller: back-off is `backoff_seconds` x 2^(failures-1) (Kubernetes: 10 s, capped at
  6 min); no successPolicy, FailIndex, backoffLimitPerIndex, podReplacementPolicy,
  ttlSecondsAfterFinished, finalizer-based pod tracking or Events.
- one namespace per kubelet, and only the pods its own Job controller created are run.
- no eviction, preemption or node failure, so the DisruptionTarget condition (an Ignore rule) never
  appears; deletion is SIGTERM to the main process, then SIGKILL to all after
  min(terminationGracePeriodSeconds, 5 s).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.job_controller import (
    CONTROLLER_UID_KEYS,
    INDEX_KEY,
    JOB_NAME_KEYS,
    NODE_NAME,
    JobController,
    condition,
    label,
    now,
    phase,
)
from tests.kube_emulator import ApiError, EmulatedCluster

log = logging.getLogger("process-kubelet")

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_ENV = "SPEEDRUN_TERMINATION_LOG"
POD_MARKER = "PROCESS_KUBELET_POD_UID"  # in every pod process's environment: which pod it belongs to
MESSAGE_LIMIT = 4096  # bytes of a termination message the kubelet keeps
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # FallbackToLogsOnError: the log tail it takes instead
MAX_GRACE_SECONDS = 5.0
# Modules that take torchrun's arguments: torchrun itself, and the trainer's exit-code-keeping wrapper.
TORCHRUN_MODULES = ("torch.distributed.run", "speedrun_trainer.train.torchrun")
HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9][-A-Za-z0-9.]*):(?P<port>\d+)$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PodStartError(Exception):
    """The pod cannot start yet (a Secret or ConfigMap is missing, an unsupported volume)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PodProcess:
    """A running pod: its main process and where its files are."""

    namespace: str
    name: str
    uid: str
    container: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    message_path: Path
    fallback_to_logs: bool
    started_at: str
    grace: float
    running_status: dict[str, Any]
    kill_at: float | None = None


class ProcessKubelet:
    """Plays the Job controller and the kubelet for one namespace of an `EmulatedCluster`.

    with ProcessKubelet(cluster, "speedruns", tmp_path / "pods") as kubelet:
        ...                                   # create Jobs; their pods run as local processes
        kubelet.kill(pod_name)                # the container dies with SIGKILL (exit code 137)
        print(kubelet.log(pod_name))
    """

    def __init__(
        self,
        cluster: EmulatedCluster,
        namespace: str,
        workdir: Path,
        *,
        interval: float = 0.2,
        backoff_seconds: float = 1.0,
    ) -> None:
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.interval = interval
        self.jobs = JobController(cluster, namespace, backoff_seconds)
        self.errors: list[BaseException] = []
        self._running: dict[str, PodProcess] = {}  # by pod name
        self._started: set[str] = set()  # pod uids, so nothing runs twice
        self._waiting: dict[str, str] = {}  # pod name -> why it cannot start (logged once)
        self._logs: dict[str, Path] = {}
        self._addresses: dict[tuple[str, str], str] = {}
        self._address_numbers = itertools.count()
        self._host_ports: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-kubelet", daemon=True)

    # ---- lifecycle and test verbs -------------------------------------------------------------

    def __enter__(self) -> ProcessKubelet:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            procs = list(self._running.values())
        for sig, wait in ((signal.SIGTERM, MAX_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
            for p in procs:
                self._signal(p, sig, every_process=sig == signal.SIGKILL)
            deadline = time.monotonic() + wait
            while any(p.proc.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.05)

    def check(self) -> None:
        """Raise the first error the background loop hit (call it in test teardown)."""
        if self.errors:
            raise AssertionError(f"the process kubelet failed: {self.errors[0]!r}") from self.errors[0]

    def pods(self, job_name: str) -> list[dict[str, Any]]:
        """The Job's pods in creation order."""
        pods = self.cluster.list("v1", "pods", self.namespace, {JOB_NAME_KEYS[0]: job_name})
        return sorted(pods, key=lambda p: self.jobs.creation_order.get(p["metadata"]["name"], -1))

    def kill(self, pod_name: str, sig: int = signal.SIGKILL) -> None:
        """Signal every process of the pod's container, as a crash or a cgroup OOM kill would."""
        with self._lock:
            running = self._running.get(pod_name)
        if running is None:
            raise AssertionError(f"pod {pod_name} is not running")
        self._signal(running, sig, every_process=True)

    def log(self, pod_name: str) -> str:
        """The container's stdout and stderr so far (`kubectl logs`)."""
        path = self._logs.get(pod_name)
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"----- pod {name} (last {lines} lines) -----\n" + "\n".join(self.log(name).splitlines()[-lines:])
            for name in self._logs
        )

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except OSError as err:  # the API timed out or refused: a controller retries on its next pass
                log.warning(f"sync failed, retrying: {err!r}")
            except Exception as err:  # a bug here: kept for check(), and the loop goes on
                log.exception("sync failed")
                self.errors.append(err)
            self._stop.wait(self.interval)

    def sync_once(self) -> None:
        """One pass of the kubelet (reap, then start pods) and the Job controller."""
        pods = self.cluster.list("v1", "pods", self.namespace)
        self._reap(pods)
        self._start_pods(pods)
        pods = self.cluster.list("v1", "pods", self.namespace)
        for job in self.cluster.list("batch/v1", "jobs", self.namespace):
            uid = job["metadata"]["uid"]
            self.jobs.sync(job, [p for p in pods if label(p, CONTROLLER_UID_KEYS) == uid])

    # ---- the kubelet --------------------------------------------------------------------------

    def _reap(self, pods: list[dict[str, Any]]) -> None:
        """Exited processes -> pod status; deleted pods -> their processes stopped."""
        live = {p["metadata"]["name"]: p for p in pods}
        with self._lock:
            running = list(self._running.values())
        for p in running:
            pod = live.get(p.name)
            gone = pod is None or pod["metadata"]["uid"] != p.uid or bool(pod["metadata"].get("deletionTimestamp"))
            if gone and p.kill_at is None:
                self._signal(p, signal.SIGTERM)
                p.kill_at = time.monotonic() + p.grace
            code = p.proc.poll()
            if code is None:
                if p.kill_at is not None and time.monotonic() > p.kill_at:
                    self._signal(p, signal.SIGKILL, every_process=True)
                elif not gone and phase(pod) == "Pending":  # the Running write was lost: write it again
                    self._patch_status("v1", "pods", p.name, p.running_status)
                continue
            # The container ends with its main process: what it left behind goes with it.
            self._signal(p, signal.SIGKILL, every_process=True)
            if not gone:
                self._write_terminated(p, code if code >= 0 else 128 - code)
            with self._lock:  # only now: a failed status write is retried on the next pass
                del self._running[p.name]

    def _write_terminated(self, p: PodProcess, code: int) -> None:
        message = ""
        if p.message_path.exists():
            message = p.message_path.read_bytes()[-MESSAGE_LIMIT:].decode(errors="replace")
        if not message.strip() and code != 0 and p.fallback_to_logs:
            tail = p.log_path.read_bytes().splitlines()[-FALLBACK_LINES:]
            message = b"\n".join(tail)[-FALLBACK_BYTES:].decode(errors="replace")
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": p.started_at,
            "finishedAt": now(),
            "containerID": f"process://{p.proc.pid}",
        }
        if message:
            terminated["message"] = message
        log.info(f"pod {p.name}: exited {code}")
        container = {"name": p.container, "ready": False, "started": False, "restartCount": 0,
                     "state": {"terminated": terminated}}
        not_ready = [condition(t, "PodCompleted", status="False") for t in ("ContainersReady", "Ready")]
        status = {"phase": "Succeeded" if code == 0 else "Failed", "conditions": not_ready,
                  "containerStatuses": [container]}
        self._patch_status("v1", "pods", p.name, status)

    def _start_pods(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            meta = pod["metadata"]
            mine = pod["spec"].get("nodeName") == NODE_NAME and phase(pod) == "Pending"
            if not mine or meta["uid"] in self._started or meta.get("deletionTimestamp"):
                continue
            try:
                self._start(pod, pods)
            except PodStartError as err:
                if self._waiting.get(meta["name"]) != str(err):
                    self._waiting[meta["name"]] = str(err)
                    log.info(f"pod {meta['name']}: cannot start: {err}")
                    waiting = {"name": pod["spec"]["containers"][0]["name"], "ready": False, "restartCount": 0,
                               "state": {"waiting": {"reason": err.reason, "message": str(err)}}}
                    self._patch_status("v1", "pods", meta["name"], {"phase": "Pending",
                                                                     "containerStatuses": [waiting]})

    def _start(self, pod: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]
        root = self.workdir / meta["name"]
        root.mkdir(parents=True, exist_ok=True)
        ip = self._address(pod)
        mounts = self._materialize_volumes(pod, container, root)
        message_path = root / "termination-log"
        mounts[container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH] = message_path
        env = self._env(pod, container, ip, mounts)
        env[TERMINATION_ENV] = str(message_path)
        env[POD_MARKER] = meta["uid"]
        env.setdefault("HOME", str(root))
        argv = self._argv(pod, container, ip, mounts, pods)
        log_path = root / "log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        started = now()
        ready = [condition(t) for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        state = {"name": container["name"], "image": container.get("image", ""), "ready": True, "started": True,
                 "restartCount": 0, "containerID": f"process://{proc.pid}",
                 "state": {"running": {"startedAt": started}}}
        status = {"phase": "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}],
                  "startTime": started, "conditions": ready, "containerStatuses": [state]}
        grace = min(float(spec.get("terminationGracePeriodSeconds", 30)), MAX_GRACE_SECONDS)
        running = PodProcess(meta["namespace"], meta["name"], meta["uid"], container["name"], proc, log_path,
                             message_path, container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
                             started, grace, status)
        with self._lock:
            self._running[meta["name"]] = running
            self._started.add(meta["uid"])
            self._logs[meta["name"]] = log_path
        log.info(f"pod {meta['name']}: started at {ip}: {' '.join(argv)}")
        self._patch_status("v1", "pods", meta["name"], status)

    def _materialize_volumes(self, pod: dict[str, Any], container: dict[str, Any], root: Path) -> dict[str, Path]:
        """Volumes as directories under the pod's scratch dir; returns mountPath -> directory."""
        dirs: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            target = root / "volumes" / volume["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume or "secret" in volume:
                kind = "configMap" if "configMap" in volume else "secret"
                source = volume[kind]
                name = source.get("name") or source.get("secretName")
                files = self._data(kind, name, optional=bool(source.get("optional")))
                items = source.get("items") or [{"key": k, "path": k} for k in files]
                for item in items:
                    (target / item["path"]).write_bytes(files[item["key"]])
            elif "emptyDir" not in volume:
                raise PodStartError("Unsupported", f"volume {volume['name']}: only configMap, secret and emptyDir")
            dirs[volume["name"]] = target
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            mounts[mount["mountPath"]] = dirs[mount["name"]] / mount.get("subPath", "")
        return mounts

    def _data(self, kind: str, name: str, optional: bool = False) -> dict[str, bytes]:
        """A ConfigMap's or Secret's keys as bytes (Secret data is base64; stringData as the apiserver would)."""
        plural = "configmaps" if kind.startswith("configMap") else "secrets"
        obj = self.cluster.get("v1", plural, self.namespace, name)
        if obj is None:
            if optional:
                return {}
            raise PodStartError("CreateContainerConfigError", f'{plural[:-1]} "{name}" not found')
        if plural == "secrets":
            out = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            return out | {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
        return {k: v.encode() for k, v in (obj.get("data") or {}).items()}

    def _env(self, pod: dict[str, Any], container: dict[str, Any], ip: str, mounts: dict[str, Path]) -> dict[str, str]:
        # The "image's" environment: nothing of the test process leaks in (no AWS_* in particular).
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"]}
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        for source in container.get("envFrom") or []:
            kind = "configMap" if "configMapRef" in source else "secret"
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            for key, value in self._data(kind, ref["name"], bool(ref.get("optional"))).items():
                env[source.get("prefix", "") + key] = value.decode()
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var.get("value", ""))
                continue
            ref = var["valueFrom"]
            if "fieldRef" in ref:
                env[var["name"]] = _field(pod, ref["fieldRef"]["fieldPath"], ip)
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "secret" if "secretKeyRef" in ref else "configMap"
                key_ref = ref.get("secretKeyRef") or ref["configMapKeyRef"]
                data = self._data(kind, key_ref["name"], bool(key_ref.get("optional")))
                if key_ref["key"] in data:
                    env[var["name"]] = data[key_ref["key"]].decode()
                elif not key_ref.get("optional"):
                    raise PodStartError("CreateContainerConfigError",
                                        f"couldn't find key {key_ref['key']} in {kind} {key_ref['name']}")
        return {k: _map_path(v, mounts) for k, v in env.items()}

    def _argv(
        self, pod: dict[str, Any], container: dict[str, Any], ip: str, mounts: dict[str, Path],
        pods: list[dict[str, Any]],
    ) -> list[str]:
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        if not command:
            raise PodStartError("Unsupported", "the container has no command (no image entrypoints here)")
        return local_command([self._rewrite(_map_arg(arg, mounts), pods) for arg in command], ip)

    def _rewrite(self, arg: str, pods: list[dict[str, Any]]) -> str:
        """`<hostname>.<subdomain>[...]:<port>` -> `<pod IP>:<host port>` (the DNS a cluster would do)."""
        prefix, _, value = arg.rpartition("=") if arg.startswith("-") else ("", "", arg)
        match = HOST_PORT.match(value)
        ip = self._resolve(match["host"], pods) if match else None
        if match is None or ip is None:
            return arg
        port = self._host_port(ip, int(match["port"]))
        return f"{prefix}{'=' if prefix else ''}{ip}:{port}"

    def _resolve(self, name: str, pods: list[dict[str, Any]]) -> str | None:
        parts = name.split(".")
        suffixes = ([], [self.namespace, "svc"], [self.namespace, "svc", "cluster", "local"])
        if len(parts) < 2 or parts[2:] not in suffixes:
            return None
        hostname, subdomain = parts[0], parts[1]
        if self.cluster.get("v1", "services", self.namespace, subdomain) is None:
            return None  # pod DNS records exist only under a headless Service of that name
        for pod in pods:
            spec = pod["spec"]
            if spec.get("hostname") == hostname and spec.get("subdomain") == subdomain:
                return self._address(pod)
        return None

    def _address(self, pod: dict[str, Any]) -> str:
        """127.0.0.x: one per Job and completion index (indexed pods), else one per pod."""
        index = label(pod, INDEX_KEY)
        key = (label(pod, CONTROLLER_UID_KEYS) or "", index) if index is not None else (pod["metadata"]["uid"], "")
        with self._lock:
            if key not in self._addresses:
                n = next(self._address_numbers)
                self._addresses[key] = f"127.0.{n // 250}.{n % 250 + 2}"
            return self._addresses[key]

    def _host_port(self, ip: str, port: int) -> int:
        with self._lock:
            return self._host_ports.setdefault((ip, port), _free_port())

    # ---- helpers ------------------------------------------------------------------------------

    def _patch_status(self, api_version: str, plural: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.cluster.patch(api_version, plural, self.namespace, name, {"status": status}, status=True)
        except ApiError as err:
            if err.status != 404:  # deleted meanwhile: nothing to report on
                raise

    @staticmethod
    def _signal(p: PodProcess, sig: int, every_process: bool = False) -> None:
        """The container's main process (what the runtime's stop signal reaches), or all of them."""
        if p.proc.poll() is None:
            p.proc.send_signal(sig)
        for pid in _pod_pids(p.uid) if every_process else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def local_command(argv: list[str], ip: str) -> list[str]:
    """The image's command as this machine runs it: `python` is this interpreter, and a torchrun
    launcher also learns the pod's address and whether it hosts the rendezvous (module doc)."""
    python = argv[0] in ("python", "python3")
    if argv[0] == "torchrun":
        head, options = [sys.executable, "-m", "torch.distributed.run"], argv[1:]
    elif python and argv[1:2] == ["-m"] and argv[2:3] and argv[2] in TORCHRUN_MODULES:
        head, options = [sys.executable, "-m", argv[2]], argv[3:]
    else:
        return [sys.executable, *argv[1:]] if python else argv
    endpoints = [o.split("=", 1)[1] for o in options if o.startswith(("--rdzv-endpoint=", "--rdzv_endpoint="))]
    if endpoints and "--standalone" not in options:
        is_host = endpoints[0].rsplit(":", 1)[0] == ip
        conf = [o for o in options if o.startswith("--rdzv-conf=")]
        joined = ",".join([*(c.split("=", 1)[1] for c in conf), f"is_host={str(is_host).lower()}"])
        options = [f"--rdzv-conf={joined}", *(o for o in options if o not in conf)]
    return [*head, f"--local-addr={ip}", *options]


def _pod_pids(uid: str) -> list[int]:
    """The pod's processes: those carrying its marker in their environment (a cgroup stands in).

    Process groups would not do: torchrun starts its workers in sessions of their own."""
    marker = f"\0{POD_MARKER}={uid}\0".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, ValueError):
            if marker in b"\0" + environ.read_bytes():
                pids.append(int(environ.parent.name))
    return pids


def _field(pod: dict[str, Any], path: str, ip: str) -> str:
    """The downward API: the fieldRef paths pods commonly use."""
    meta, spec = pod["metadata"], pod["spec"]
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if keyed:
        return str((meta.get(keyed[1]) or {}).get(keyed[2], ""))
    simple = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
        "spec.nodeName": NODE_NAME, "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": ip, "status.podIPs": ip, "status.hostIP": "127.0.0.1",
    }
    if path not in simple:
        raise PodStartError("CreateContainerConfigError", f"unsupported fieldRef {path}")
    return simple[path]


def _map_path(value: str, mounts: dict[str, Path]) -> str:
    """A path inside the pod -> where it lives here (longest mount path first)."""
    for mount in sorted(mounts, key=len, reverse=True):
        base = mount.rstrip("/")
        if value in (mount, base):
            return str(mounts[mount])
        if value.startswith(base + "/"):
            return str(mounts[mount]) + value[len(base):]
    return value


def _map_arg(arg: str, mounts: dict[str, Path]) -> str:
    if arg.startswith("-") and "=" in arg:
        flag, value = arg.split("=", 1)
        return f"{flag}={_map_path(value, mounts)}"
    return _map_path(arg, mounts)
