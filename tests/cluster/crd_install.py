"""Install the generated CRD on the test control plane and wait until SpeedrunJobs can be created.

`kubectl wait --for=condition=Established` fails at once (".status.conditions accessor error")
when it reads the CRD before the apiextensions controller first wrote its status, which a large
schema (Kubernetes' own types under spec.podOverrides, whose CEL rules it compiles) makes likely:
poll the condition instead, then discovery, which lags it by a moment. `dry_run` then sends a
manifest through the whole of admission without storing it (test_crd, test_admission,
test_pod_overrides).
"""

from __future__ import annotations

import json
from typing import Any

from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.support.helpers import ROOT

CRD_NAME = "speedrunjobs.speedrun.dev"


def install_crd(control_plane: ControlPlane, kubectl: Kubectl, namespace: str) -> Kubectl:
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "speedrunjob.yaml"))

    def established() -> bool:
        crd = control_plane.admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}") or {}
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_until(established, 60, f"crd/{CRD_NAME} Established", interval=0.2)
    control_plane.namespace(namespace)
    wait_until(lambda: kubectl.run("get", "srj", "-n", namespace, check=False).returncode == 0, 60, "discovery")
    return kubectl


def dry_run(
    kubectl: Kubectl, doc: dict[str, Any], namespace: str, *flags: str
) -> tuple[int, str, dict[str, Any] | None]:
    """`kubectl create --dry-run=server` of `doc` in `namespace`: admission runs in full (schema,
    CEL rules, defaults, webhooks) and nothing is stored. (exit code, stderr, the object the
    apiserver would have stored, None when refused)."""
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    args = ("create", "--dry-run=server", "-o", "json", *flags, "-f", "-")
    proc = kubectl.run(*args, stdin=json.dumps(doc), check=False)
    return proc.returncode, proc.stderr.strip(), json.loads(proc.stdout) if proc.returncode == 0 else None
