"""Start and stop a real Kubernetes control plane on this machine: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, as controller-runtime's envtest and kind run them.

- etcd: one member, client and peer URLs on free loopback ports, `--unsafe-no-fsync` (test data).
- kube-apiserver: secure port only, on every address (its advertise address, the `kubernetes`
  Service's endpoint, is this machine's primary one: host_address()), client-certificate
  authentication against the session CA, `--authorization-mode=Node,RBAC` with NodeRestriction
  (as kubeadm) and ExtendedResourceToleration (as GKE, EKS and AKS: a pod that requests
  `nvidia.com/gpu` tolerates the GPU nodes' taint), the kubelets' API reached at their
  InternalIP with a client certificate of the session CA, service-account issuer and signing keys
  (TokenRequest works), the default admission
  plugins (NamespaceLifecycle, ServiceAccount, TaintNodesByCondition, PodSecurity, Priority,
  ResourceQuota, ValidatingAdmissionPolicy, ... as the release enables them), and an audit log
  (Metadata level, one JSON line per request) for the API-request counts of the bench.
- kube-controller-manager: the controllers the operator's objects rely on (CONTROLLERS), each with
  its own service-account credentials (`--use-service-account-credentials`, as kind runs it).
- kube-scheduler: the default profile.
No serving ports for the controller-manager or the scheduler (`--secure-port=0`). `stop()` ends
every process (SIGTERM, then SIGKILL) and removes the data directories.

    with ControlPlane(binaries, workdir) as cp:
        cp.kubeconfig        # admin kubeconfig (system:masters)
        cp.admin             # tests.cluster.api.Api as admin
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from speedrun_trainer.cli.launch import free_port
from tests.cluster.api import Api, ApiError
from tests.cluster.pki import ClusterPKI, KeyPair

CONTROLLERS = (
    "job-controller",
    "deployment-controller",  # the chart's operator Deployment, run for real on the real nodes
    "replicaset-controller",
    "garbage-collector-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "ttl-after-finished-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "resourcequota-controller",
)
SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT = 120.0  # cold start on 2 busy cores takes ~10-20 s; the margin is for shared CPUs
GANG_GATES = "GenericWorkload=true,GangScheduling=true"  # apiserver and scheduler, alpha in 1.35/1.36
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class ControlPlaneError(RuntimeError):
    pass


def host_address() -> str:
    """This machine's primary IPv4 address (the source of its default route), as the apiserver picks
    its advertise address when not told one; 127.0.0.1 on a machine without a route. The
    `kubernetes` Service's endpoint is this address: pods in real containers reach it through
    kube-proxy's rules (kube_proxy.py), which cannot lead a pod's traffic to loopback."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # TEST-NET-3: picks the route's source, sends nothing
        return str(probe.getsockname()[0])
    return "127.0.0.1"


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds: how the tier ends each daemon it started."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, pair: KeyPair | None = None,
                     token: str | None = None, namespace: str = "default") -> Path:  # fmt: skip
    credentials: dict[str, str] = {"token": token} if token else {}
    if pair:
        credentials = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "test", "user": user, "namespace": namespace}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ControlPlane:
    def __init__(self, binaries: dict[str, Path], workdir: Path, controller_qps: int = 0) -> None:
        """`controller_qps`: the controller-manager's --kube-api-qps (burst twice as much) for each of
        its controllers' clients; 0 keeps Kubernetes' default of 20 (burst 30)."""
        self.binaries, self.workdir, self.controller_qps = binaries, workdir, controller_qps
        self.pki = ClusterPKI(workdir / "pki")
        self.etcd_port, self.port = free_port(), free_port()
        self.advertise_address = host_address()
        self.server = f"https://127.0.0.1:{self.port}"
        self.audit_log = workdir / "audit.log"
        self.processes: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self.admin_pair = self.pki.issue("admin", "speedrun-test-admin", "system:masters")
        self.kubeconfig = write_kubeconfig(workdir / "admin.kubeconfig", self.server, self.pki.ca.cert, "admin",
                                           self.admin_pair)  # fmt: skip
        self.admin = Api(self.server, self.pki.ca.cert, cert=self.admin_pair.cert, key=self.admin_pair.key)
        self.started_in = 0.0

    # -- processes

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        self.processes.append((name, proc, log))

    def _check_alive(self) -> None:
        for name, proc, _ in self.processes:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _component_kubeconfig(self, name: str, user: str, group: str | None = None) -> Path:
        pair = self.pki.issue(name, user, group)
        return write_kubeconfig(self.workdir / f"{name}.kubeconfig", self.server, self.pki.ca.cert, user, pair)

    def start(self) -> ControlPlane:
        started = time.monotonic()
        ca, sa, tls = self.pki.ca, self.pki.service_account, self.pki.apiserver
        peer = free_port()
        self._spawn("etcd", [
            str(self.binaries["etcd"]), f"--data-dir={self.workdir / 'etcd'}", "--name=default",
            f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--log-level=warn",
        ])  # fmt: skip
        kubelet_client = self.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self._spawn("kube-apiserver", [
            str(self.binaries["kube-apiserver"]), f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--secure-port={self.port}", "--bind-address=0.0.0.0", f"--advertise-address={self.advertise_address}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={tls.cert}", f"--tls-private-key-file={tls.key}", f"--client-ca-file={ca.cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={sa.cert}", f"--service-account-signing-key-file={sa.key}",
            # Node,RBAC and NodeRestriction as kubeadm sets them: the real nodes' kubelets
            # (kubelet_node.py) act as system:node:<name> on their own Node and pods only.
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction,ExtendedResourceToleration",
            "--allow-privileged=true",
            # `kubectl logs/exec` through the apiserver reach a real node's kubelet at its InternalIP,
            # which presents a serving certificate of the session CA and asks for one of ours.
            "--kubelet-preferred-address-types=InternalIP", f"--kubelet-certificate-authority={ca.cert}",
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
            "--audit-log-mode=batch", "--audit-log-batch-max-wait=1s",
            # Kubernetes' own gang scheduling (KEP-4671, alpha): the PodGroup API and its scheduler
            # plugin, which the operator uses when the cluster serves it (operator gang.py).
            f"--feature-gates={GANG_GATES}", "--runtime-config=scheduling.k8s.io/v1alpha2=true",
        ])  # fmt: skip
        wait_until(self._ready, START_TIMEOUT, "kube-apiserver /readyz")
        self._spawn("kube-controller-manager", [
            str(self.binaries["kube-controller-manager"]),
            f"--kubeconfig={self._component_kubeconfig('controller-manager', 'system:kube-controller-manager')}",
            "--secure-port=0", "--leader-elect=false", f"--controllers={','.join(CONTROLLERS)}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={sa.key}", f"--root-ca-file={ca.cert}",
            "--concurrent-job-syncs=20",
            # A stopped kubelet's node goes NotReady after 30 s (50 s by default); the kubelets'
            # heartbeat is 4 s (kubelet_node.py).
            "--node-monitor-grace-period=30s",
            *([f"--kube-api-qps={self.controller_qps}", f"--kube-api-burst={2 * self.controller_qps}"]
              if self.controller_qps else []),
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(self.binaries["kube-scheduler"]),
            f"--kubeconfig={self._component_kubeconfig('scheduler', 'system:kube-scheduler')}",
            "--secure-port=0", "--leader-elect=false", f"--feature-gates={GANG_GATES}",
        ])  # fmt: skip
        # The controller-manager is up when it has made the default ServiceAccount (pods need it).
        wait_until(self._default_service_account, START_TIMEOUT, "the default ServiceAccount")
        self.started_in = time.monotonic() - started
        return self

    def _ready(self) -> bool:
        self._check_alive()
        try:
            return self.admin.request("GET", "/readyz", timeout=5) == "ok"
        except (ApiError, OSError):
            return False

    def _default_service_account(self) -> bool:
        self._check_alive()
        return self.admin.get("/api/v1/namespaces/default/serviceaccounts/default") is not None

    def stop(self) -> None:
        for _, proc, _ in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in reversed(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.processes.clear()
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        shutil.rmtree(self.workdir / "apiserver-certs", ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for the tests

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """Create namespace `name` (idempotent) and wait for its default ServiceAccount."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
        try:
            self.admin.create("/api/v1/namespaces", body)
        except ApiError as err:
            if err.status != 409:
                raise
        path = f"/api/v1/namespaces/{name}/serviceaccounts/default"
        wait_until(lambda: self.admin.get(path), 60, f"ServiceAccount {name}/default")

    def drain(self, namespace: str, collection_path: str, timeout: float = 120.0) -> None:
        """Delete every object of a namespaced collection (its path, e.g. the namespace's
        speedrunjobs) and wait until the namespace has no pods: a module's runs must not outlive it
        (they would load the machine, and fail once the module's S3 server is gone)."""
        self.admin.delete(collection_path)
        wait_until(lambda: not self.admin.list(f"/api/v1/namespaces/{namespace}/pods"), timeout,
                   f"the pods of {namespace} gone")  # fmt: skip

    def token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A token for the ServiceAccount from the TokenRequest API (what a projected volume holds)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds}}  # fmt: skip
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
        return str(self.admin.create(path, body)["status"]["token"])
