"""`speedrun operator` itself, as a separate process, on the real control plane under the chart's RBAC.

The other operator tests run the same kopf argv in-process (tests/cluster/chart.py); this one checks
the command's own wiring: flags -> environment -> kopf, its metrics port, and a clean stop on
SIGINT, with a kubeconfig holding the chart's ServiceAccount token (so a call the chart's Role does
not grant is refused). The training pods go to the session's real kubelets
(tests/cluster/real_nodes.py) with the `--image` the command was given, under `.test` (a name
that never resolves): each kubelet tries that image and fails the pull, so the pods stay Pending
and nothing trains. Needs root; run: `pytest -m cluster tests/cluster/test_operator_command.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from speedrun_trainer.cli.launch import free_port
from tests.cluster.chart import CHART_VALUES, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until, write_kubeconfig
from tests.cluster.kubectl import Kubectl
from tests.cluster.real_nodes import RealNodes
from tests.support.helpers import ROOT, tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-cmd"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
IMAGE = "example.test/trainer:flag"
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff")  # the kubelet alternates between them


def metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def pulls_refused(cp: ControlPlane) -> list[str]:
    """The nodes whose kubelets tried to pull the flag's image for a training pod and could not."""
    pods = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labels="speedrun.dev/job=cmd")
    refused = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if status.get("image") == IMAGE and waiting.get("reason") in PULL_REASONS:
                refused.append(pod["spec"]["nodeName"])
    return refused


def test_speedrun_operator_command_runs_kopf_with_its_flags(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, tmp_path: Path
) -> None:
    cp = control_plane
    release = install_chart(cp, "speedrun-cmd", NAMESPACE, CHART_VALUES)
    cp.namespace(NAMESPACE)
    kubeconfig = write_kubeconfig(tmp_path / "operator.kubeconfig", cp.server, cp.pki.ca.cert, "operator",
                                  token=cp.token(NAMESPACE, release.service_account))  # fmt: skip
    port = free_port()
    command = [sys.executable, "-m", "speedrun_operator.operator_commands", "operator", "--namespace", NAMESPACE,
               "--image", IMAGE, "--metrics-port", str(port)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_") and k != "KUBERNETES_SERVICE_HOST"}
    env |= {"KUBECONFIG": str(kubeconfig), "SPEEDRUN_OPERATOR_DEFAULT_STORAGE_URI": "s3://b/p",
            "SPEEDRUN_OPERATOR_STANDALONE": "1", "SPEEDRUN_OPERATOR_LIVENESS": ""}  # fmt: skip
    doc = tiny_manifest()
    doc["metadata"] = {"name": "cmd", "namespace": NAMESPACE}
    with (tmp_path / "operator.log").open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))
            path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/cmd-train"
            job = wait_until(lambda: cp.admin.get(path), 60, "the training Job", interval=0.2)
            [container] = job["spec"]["template"]["spec"]["containers"]
            assert container["image"] == IMAGE
            pending = 'speedrun_operator_jobs{phase="Pending"} 1.0'
            wait_until(lambda: pending in metrics(port), 60, "the Pending job in the operator's metrics")
            refused = wait_until(lambda: len(found := pulls_refused(cp)) == 2 and found, 120,
                                 "both kubelets to try the flag's image", interval=0.5)  # fmt: skip
            assert set(refused) <= set(kube_nodes.names), refused
            cp.drain(NAMESPACE, SRJ_PATH)  # while the operator runs: it releases its finalizer
            wait_until(lambda: not cp.admin.list(SRJ_PATH), 60, "the SpeedrunJob gone")
        finally:
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=30)
    output = (tmp_path / "operator.log").read_text()
    assert code == 0, output[-3000:]
    assert f"speedrun-operator: image {IMAGE}" in output
    user = f'User "system:serviceaccount:{NAMESPACE}:{release.service_account}" cannot'
    assert user not in output, "the chart's RBAC refused the operator: " + output[-3000:]
