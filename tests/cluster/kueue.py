"""Real Kueue beside the control plane: its CRDs, its manager as a process, its webhooks.

    with running_kueue(control_plane, workdir) as kueue:   # a module fixture (tests/cluster/test_kueue*.py)
        kueue.log()                                        # what the manager printed

The manager is sigs.k8s.io/kueue v0.17.0's `cmd/kueue`, built by `make cluster-bin`
(binaries.py), its CRDs and webhook manifests copied from the same module (`kueue_config_dir`).
It runs as `kueue-manager` of group system:masters (a cluster gives it the ClusterRole of Kueue's
manifests; the tests here check the operator's RBAC, not Kueue's; the user name tells Kueue's
requests apart in the audit log) with a
Configuration file: leader election off, `internalCertManagement` off (nothing to rotate: the
session's CA signs its serving certificate, as cert-manager would), the `batch/job` integration
only, metrics, health and webhook ports free on loopback, and the feature gates at their v0.17
defaults (TopologyAwareScheduling is beta and on) except VisibilityOnDemand and MultiKueue, which
start servers and controllers no test here uses.

Two things a Deployment gives the manager are made here:
- its metrics certificate: without internal cert management it reads `/etc/kueue/metrics/certs`,
  a path fixed in cmd/kueue (a Secret mounted there in a cluster). It runs in a mount namespace of
  its own (`unshare --mount`) whose /etc is an overlay of the host's with that directory added
  on a tmpfs: the host's /etc is not touched, and the mounts go with the process.
- its webhooks: the apiserver calls them at `https://127.0.0.1:<port>/<path>` (the serving
  certificate has that IP; caBundle is the session CA). Registered are those of Kueue's
  manifests for its own kinds and for batch/v1 Job (WEBHOOK_GROUPS), as a cluster runs them: a
  queued Job is suspended at creation and its queue and topology annotations validated (the
  operator creates queued Jobs suspended itself); Workload updates, the operator's
  `spec.active` included, pass Kueue's validation.

On exit, in this order: the webhook configurations go (nothing calls a manager that is gone),
the manager is stopped, and Kueue's CRDs are deleted, their objects' finalizers cleared first
(the Workloads and queues whose finalizers the manager would have removed), so the next module
starts from a cluster without Kueue.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_trainer.cli.launch import free_port
from tests.cluster.api import ApiError
from tests.cluster.binaries import KUEUE_BINARIES, BinariesMissing, kueue_config_dir, locate
from tests.cluster.control_plane import ControlPlane, terminate, wait_until, write_kubeconfig

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
WEBHOOK_KINDS = {
    "MutatingWebhookConfiguration": "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
}
USER = "kueue-manager"  # its client certificate's CN (O=system:masters): its requests in the audit log
# The webhooks registered: Kueue's own kinds and the one integration enabled (batch/v1 Job). The
# manager also serves the others' paths (no-op handlers for integrations not enabled), which a
# cluster registers too; left out here, so that every pod, Deployment ... does not call Kueue.
WEBHOOK_GROUPS = {"kueue.x-k8s.io", "batch"}
FEATURE_GATES = {"VisibilityOnDemand": False, "MultiKueue": False}
# In the manager's own mount namespace: $1 a directory for the tmpfs, $2 the certificate's directory.
OVERLAY_ETC = """set -e
mount -t tmpfs -o size=1m,mode=0700 kueue-etc "$1"
mkdir -p "$1/upper/kueue/metrics/certs" "$1/work"
cp "$2/tls.crt" "$2/tls.key" "$1/upper/kueue/metrics/certs/"
mount -t overlay kueue-etc -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc
shift 2
exec "$@"
"""


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a manager outliving a killed pytest would run on against nothing."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class Kueue:
    def __init__(self, cp: ControlPlane, workdir: Path) -> None:
        self.cp, self.workdir = cp, workdir
        self.binary = locate(KUEUE_BINARIES)["kueue"]
        self.config = kueue_config_dir()
        self.webhook_port, self.health_port = free_port(), free_port()
        self.log_path = workdir / "kueue.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.crds: list[str] = []
        self.webhooks: list[str] = []  # API paths of the webhook configurations registered

    def start(self) -> Kueue:
        self._install_crds()
        self.proc = self._spawn()
        wait_until(self._ready, 120, "Kueue's manager ready (/readyz)", interval=0.5)
        self._register_webhooks()
        return self

    def _install_crds(self) -> None:
        for path in sorted((self.config / "components" / "crd" / "bases").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            with contextlib.suppress(ApiError):  # 409: still there from a module that was killed
                self.cp.admin.create(CRDS, crd)
            self.crds.append(crd["metadata"]["name"])
        for name in self.crds:
            wait_until(lambda n=name: self._served(n), 60, f"CRD {name} established and served")

    def _served(self, name: str) -> bool:
        """Established, and its storage answers: a new CRD's list is 404, then 429 ("storage is
        (re)initializing") for a moment after Established."""
        crd = self.cp.admin.get(f"{CRDS}/{name}") or {}
        conditions = (crd.get("status") or {}).get("conditions") or []
        if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return False
        try:
            self.cp.admin.list(collection_of(crd))
        except ApiError as err:
            if err.status in (404, 429):
                return False
            raise
        return True

    def _spawn(self) -> subprocess.Popen[bytes]:
        certs = self.workdir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        pair = self.cp.pki.issue("kueue-webhook", "kueue-webhook", server_ips=("127.0.0.1",))
        (certs / "tls.crt").write_bytes(pair.cert.read_bytes())
        (certs / "tls.key").write_bytes(pair.key.read_bytes())
        (certs / "tls.key").chmod(0o600)
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": "kueue-system",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": ["batch/job"]},
            "featureGates": FEATURE_GATES,
        }
        config_path = self.workdir / "kueue-config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        etc = self.workdir / "etc"
        etc.mkdir(exist_ok=True)
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", OVERLAY_ETC, "kueue-etc", str(etc),
                str(certs), str(self.binary), f"--config={config_path}", "--zap-log-level=2"]  # fmt: skip
        identity = self.cp.pki.issue("kueue-manager", USER, "system:masters")
        kubeconfig = write_kubeconfig(self.workdir / "kueue.kubeconfig", self.cp.server, self.cp.pki.ca.cert, USER,
                                      identity)  # fmt: skip
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KUBECONFIG": str(kubeconfig)}
        with self.log_path.open("ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"kueue exited with {self.proc.returncode}: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=5) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _register_webhooks(self) -> None:
        ca = base64.b64encode(self.cp.pki.ca.cert.read_bytes()).decode()
        manifests = (self.config / "components" / "webhook" / "manifests.yaml").read_text()
        for doc in yaml.safe_load_all(manifests):
            if not doc or doc.get("kind") not in WEBHOOK_KINDS:
                continue
            served = []
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                if {g for rule in hook["rules"] for g in rule["apiGroups"]} <= WEBHOOK_GROUPS:
                    hook["clientConfig"] = {"url": f"https://127.0.0.1:{self.webhook_port}{path}", "caBundle": ca}
                    served.append(hook)
            body = {**doc, "metadata": {"name": f"kueue-{doc['metadata']['name']}"}, "webhooks": served}
            collection = WEBHOOK_KINDS[doc["kind"]]
            with contextlib.suppress(ApiError):  # 409: left by a killed module; replaced below
                self.cp.admin.delete(f"{collection}/{body['metadata']['name']}")
            self.cp.admin.create(collection, body)
            self.webhooks.append(f"{collection}/{body['metadata']['name']}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        for path in self.webhooks:
            with contextlib.suppress(ApiError):
                self.cp.admin.delete(path)
        terminate(self.proc)
        for name in self.crds:
            self._delete_crd(name)

    def _delete_crd(self, name: str) -> None:
        crd = self.cp.admin.get(f"{CRDS}/{name}")
        if crd is None:
            return
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
        for item in self.cp.admin.list(collection_of(crd)):
            meta = item["metadata"]
            if meta.get("finalizers"):
                where = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
                with contextlib.suppress(ApiError):
                    self.cp.admin.patch(f"/apis/{group}/{storage}{where}/{plural}/{meta['name']}",
                                        {"metadata": {"finalizers": None}})  # fmt: skip
        self.cp.admin.delete(f"{CRDS}/{name}")
        wait_until(lambda: self.cp.admin.get(f"{CRDS}/{name}") is None, 120, f"CRD {name} deleted")


def collection_of(crd: dict[str, Any]) -> str:
    """The CRD's objects in its storage version, every namespace's for a namespaced kind."""
    storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    return f"/apis/{crd['spec']['group']}/{storage}/{crd['spec']['names']['plural']}"


@contextlib.contextmanager
def running_kueue(cp: ControlPlane, workdir: Path) -> Iterator[Kueue]:
    """Kueue up for the block, gone after it; skips the test when its binary or config is not built,
    or when not root (the mount namespace for its metrics certificate)."""
    if os.geteuid() != 0:
        pytest.skip("Kueue: needs root (its manager's /etc/kueue/metrics/certs is made in a mount namespace)")
    try:
        kueue = Kueue(cp, workdir)
    except BinariesMissing as err:
        pytest.skip(f"Kueue: {err}")
    try:
        yield kueue.start()
    finally:
        kueue.stop()
