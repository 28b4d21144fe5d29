"""`make kind`'s script, run for real against the session's cluster: every step that needs no Docker.

scripts/kind-quickstart.sh makes a kind cluster, builds and `kind load`s the images, deploys
MinIO, installs the chart, runs `helm test`, applies the CPU-tiny job, waits for Succeeded and
prints the results. These machines have no Docker engine, so the script is run with the settings
it offers for a cluster one already has: `KUBE_CONTEXT` (the session's admin context; the images
built from the Dockerfile are put on every node first, as `kind load` would, since
deploy/kind/values.yaml never pulls) and `S3_ENDPOINT` (moto's S3 in place of MinIO, whose image
is on Docker Hub). The rest is the script's own: helm install with the kind values, `helm test`
against the operator's metrics Service, the kustomize overlay applied, the wait loop, the results.
Run: `pytest tests/e2e/test_quickstart_script.py` (root, the control-plane binaries, buildah).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kube_proxy import KubeProxy
from tests.cluster.kubectl import kubectl_binary
from tests.cluster.real_nodes import RealNodes
from tests.cluster.real_speedrun import pull_on_every_node
from tests.cluster.speedruns import s3_client
from tests.support import helm_tool, images
from tests.support.helpers import ROOT
from tests.support.s3 import S3_CREDENTIALS, GatedMotoServer

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = RELEASE = "quickstart"
BUCKET = "speedrun"  # the overlay's (deploy/kind/tiny-cpu: s3://speedrun/tiny-cpu)
TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def preloaded(control_plane: ControlPlane, kube_nodes: RealNodes, service_proxy: KubeProxy,
              built_images: dict[str, images.Image]) -> Iterator[dict[str, str]]:  # fmt: skip
    """Both images on every node (what `kind load docker-image` does), by the refs the script gets."""
    control_plane.namespace(NAMESPACE)
    refs = {name: built_images[name].ref for name in ("operator", "trainer")}
    for ref in refs.values():
        pull_on_every_node(control_plane, kube_nodes, NAMESPACE, ref)
    yield refs
    # The jobs while the operator runs (it removes their finalizer), then its Deployment (before the
    # nodes' teardown deletes its pod, which its ReplicaSet would re-create).
    srjs = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
    control_plane.admin.delete(srjs)
    wait_until(lambda: not control_plane.admin.list(srjs), 120, "the quickstart's jobs gone")
    deployments = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
    for item in control_plane.admin.list(deployments):
        control_plane.admin.delete(f"{deployments}/{item['metadata']['name']}")


def test_the_quickstart_script_runs_the_tiny_speedrun(
    control_plane: ControlPlane, preloaded: dict[str, str], s3: GatedMotoServer
) -> None:
    s3_client(s3.url).create_bucket(Bucket=BUCKET)
    env = {
        **os.environ,
        "PATH": f"{kubectl_binary().parent}:{os.environ['PATH']}",
        "KUBECONFIG": str(control_plane.kubeconfig),
        "KUBE_CONTEXT": "admin",  # control_plane.py's admin kubeconfig
        "NAMESPACE": NAMESPACE, "RELEASE": RELEASE, "TIMEOUT": str(TIMEOUT_S),
        "OPERATOR_IMAGE": preloaded["operator"], "TRAINER_IMAGE": preloaded["trainer"],
        "S3_ENDPOINT": s3.url, "HELM": str(helm_tool.helm_path()),
        **{k: S3_CREDENTIALS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    }  # fmt: skip
    proc = subprocess.run([str(ROOT / "scripts" / "kind-quickstart.sh")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_S + 600)  # fmt: skip
    out = proc.stdout + proc.stderr
    print(out[-4000:])
    assert proc.returncode == 0, out[-6000:]
    for step in range(1, 9):
        assert f"==> {step}/8 " in out, f"step {step} missing"
    assert "Phase: Succeeded" in out or "Succeeded" in out.split("==> 8/8")[1]
    assert "TEST SUITE:" in out and "Phase:" in out, "helm test ran"
    status = control_plane.admin.get(f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs/tiny-cpu")
    results = (status or {}).get("status", {}).get("results") or {}
    assert results.get("uri", "").startswith(f"s3://{BUCKET}/tiny-cpu"), results
    key = results["uri"].removeprefix(f"s3://{BUCKET}/")
    assert s3_client(s3.url).get_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0
