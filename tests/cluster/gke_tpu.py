"""GKE's side of a TPU slice for the control-plane tier: its node pool, and its webhook, for real.

A GKE TPU node pool's nodes carry `cloud.google.com/gke-tpu-accelerator` and
`cloud.google.com/gke-tpu-topology`, `google.com/tpu` capacity (the host's chips) and the taint
`google.com/tpu=present:NoSchedule`: `tpu_hosts(...)` makes such nodes' NodeSpecs, which a module
adds to the session's real nodes (`kube_nodes.added(*tpu_hosts(...))`), the capacity advertised
by a node status patch. Scheduling stays the real scheduler's.

GKE sets `TPU_WORKER_ID` (the pod's completion index) and `TPU_WORKER_HOSTNAMES` (every index's
`<job>-<i>.<subdomain>`, comma-separated) in a pod that requests `google.com/tpu` in an Indexed
Job with a `subdomain` (the operator's training Job), and `jax.distributed.initialize()` reads
them. GKE does it at admission, with a mutating webhook; `GkeTpuWebhook` does the same here: an
HTTPS server (a certificate of the session CA) registered by a real
MutatingWebhookConfiguration for one namespace, so the apiserver asks it about every pod
created there and applies the JSONPatch it answers, before the scheduler or a kubelet sees the
pod. What a test reads in a container is what the trainer would on GKE.

A host that trains for real has no chips here: with `cpu_chips=n` the webhook also sets what such
a host stands in with (`cpu_chips(n)`): jax's platform forced to cpu over the operator's `tpu`
(which jax_main honours, saying so) and n host devices, so jax finds n CPU devices in the chips'
place. That part is the test's, not GKE's.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import ssl
import threading
from typing import Any

from speedrun_trainer.cli.launch import free_port
from tests.cluster.api import ApiError
from tests.cluster.control_plane import ControlPlane
from tests.cluster.real_nodes import NodeSpec

GKE_TPU_ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
GKE_TPU_TOPOLOGY = "cloud.google.com/gke-tpu-topology"
TPU_RESOURCE = "google.com/tpu"
TPU_TAINT = f"{TPU_RESOURCE}=present:NoSchedule"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def tpu_hosts(prefix: str, hosts: int, chips: int, accelerator: str, topology: str) -> list[NodeSpec]:
    """The nodes of one GKE TPU node pool: `hosts` hosts of `chips` chips each."""
    labels = {GKE_TPU_ACCELERATOR: accelerator, GKE_TPU_TOPOLOGY: topology}
    return [NodeSpec(f"{prefix}-{i}", labels, (TPU_TAINT,), {TPU_RESOURCE: chips}) for i in range(hosts)]


def cpu_chips(chips: int) -> dict[str, str]:
    """A TPU host played on CPU: jax's platform forced to cpu, with `chips` host devices."""
    return {"SPEEDRUN_JAX_PLATFORM": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={chips}"}


class GkeTpuWebhook:
    """GKE's TPU env injection as a real mutating admission webhook for pods of `namespace`."""

    def __init__(self, cp: ControlPlane, namespace: str, address: str, cpu_chips: int = 0) -> None:
        self.cp, self.namespace, self.address, self.cpu_chips = cp, namespace, address, cpu_chips
        self.name = f"gke-tpu-{namespace}"
        self.port = free_port()
        self.mutated: list[str] = []  # the pods it changed, by name
        self._server: http.server.ThreadingHTTPServer | None = None

    def __enter__(self) -> GkeTpuWebhook:
        pair = self.cp.pki.issue(self.name, self.name, server_ips=(self.address,))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pair.cert, pair.key)
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body = json.dumps(webhook.review(review)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((self.address, self.port), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True).start()
        self.cp.admin.create(WEBHOOKS, self._configuration())
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(ApiError):
            self.cp.admin.delete(f"{WEBHOOKS}/{self.name}")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _configuration(self) -> dict[str, Any]:
        ca = base64.b64encode(self.cp.pki.ca.cert.read_bytes()).decode()
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [{
                "name": "tpu.gke.speedrun.test",
                "clientConfig": {"url": f"https://{self.address}:{self.port}/mutate", "caBundle": ca},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        }  # fmt: skip

    def review(self, review: dict[str, Any]) -> dict[str, Any]:
        """The AdmissionReview answer: allowed, with a JSONPatch for a TPU slice's pod."""
        request = review["request"]
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        pod = request["object"]
        env = self.env(pod)
        if env:
            patch = self.patch(pod, env)
            response |= {"patchType": "JSONPatch", "patch": base64.b64encode(json.dumps(patch).encode()).decode()}
            self.mutated.append(pod["metadata"].get("name") or pod["metadata"].get("generateName", ""))
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}

    def env(self, pod: dict[str, Any]) -> dict[str, str]:
        """TPU_WORKER_ID and TPU_WORKER_HOSTNAMES as GKE sets them (and the CPU stand-in's), or {}."""
        meta, spec = pod["metadata"], pod["spec"]
        limits = (spec["containers"][0].get("resources") or {}).get("limits") or {}
        index = (meta.get("annotations") or {}).get(COMPLETION_INDEX)
        owner = next((o for o in meta.get("ownerReferences") or [] if o["kind"] == "Job"), None)
        if TPU_RESOURCE not in limits or index is None or owner is None or not spec.get("subdomain"):
            return {}
        job = self.cp.admin.get(f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{owner['name']}") or {}
        hosts = int((job.get("spec") or {}).get("completions") or 1)
        names = [f"{owner['name']}-{i}.{spec['subdomain']}" for i in range(hosts)]
        env = {"TPU_WORKER_ID": index, "TPU_WORKER_HOSTNAMES": ",".join(names)}
        return env | (cpu_chips(self.cpu_chips) if self.cpu_chips else {})

    @staticmethod
    def patch(pod: dict[str, Any], env: dict[str, str]) -> list[dict[str, Any]]:
        """Set each variable in the first container: replace an entry of that name, else append."""
        have = pod["spec"]["containers"][0].get("env")
        ops: list[dict[str, Any]] = [] if have else [{"op": "add", "path": "/spec/containers/0/env", "value": []}]
        names = [e["name"] for e in have or []]
        for name, value in env.items():
            entry = {"name": name, "value": value}
            if name in names:
                ops.append({"op": "replace", "path": f"/spec/containers/0/env/{names.index(name)}", "value": entry})
            else:
                ops.append({"op": "add", "path": "/spec/containers/0/env/-", "value": entry})
        return ops
