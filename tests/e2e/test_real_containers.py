"""E2E in real containers: the mission's local test on real kubelets, with images built from the Dockerfile.

What a user does after `make image` on a kind cluster, with nothing played:
1. the operator and trainer images are built from the project's Dockerfile by `make image`
   (buildah) onto a base made here, and pushed to a real registry on loopback
   (tests/support/images.py: a second run with nothing changed finds them there);
2. the chart is installed by helm with those images; the operator runs in its own container on a
   real node (kubelet v1.36.3 on containerd 2.4), its in-cluster client reaching the apiserver
   through the `kubernetes` Service's ClusterIP (kube-proxy);
3. the CPU-tiny SpeedrunJob is applied with kubectl: the Indexed Job's 2 pods run the trainer
   image on the two real nodes, torchrun's rendezvous finds rank 0 through cluster DNS, the eval
   pod evaluates the checkpoint, `speedrun_results.json` lands in S3 (moto's server, on an address
   the pods reach), and `kubectl get srj` shows it Succeeded.
The operator pod's image digest is printed and checked against the one the registry holds.
The first run on a machine builds the images (~15-20 min: the trainer image holds PyPI's CUDA
build of torch, ~5.6 GB) and each node's containerd pulls it (a few minutes); the images are
cached by the hash of what goes into them, so later runs build nothing.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.api import ApiError
from tests.cluster.chart import install_chart
from tests.cluster.control_plane import ControlPlane
from tests.cluster.fixtures import Kubectl
from tests.cluster.kube_proxy import KubeProxy
from tests.cluster.network import PodNetwork
from tests.cluster.real_nodes import LABEL, RealNodes
from tests.cluster.speedruns import moto_s3, s3_client
from tests.support import images
from tests.support.helpers import tiny_manifest
from tests.support.image_registry import running_registry
from tests.support.s3 import S3_CREDENTIALS, GatedMotoServer

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = "speedruns-real"
RELEASE = "speedrun"
BUCKET = "real"
S3_SECRET = "speedrun-s3"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
STEPS, CHECKPOINT_EVERY, BATCH, SEQ_LEN = 20, 10, 8, 64
# Generous: the first pull of the trainer image into each node's containerd takes minutes.
OPERATOR_READY_TIMEOUT, RUN_TIMEOUT = 600.0, 1500.0
UNSEEN_TIMEOUT = 180.0  # a Ready operator sets a phase at once; none by then is a broken operator
ON_REAL_NODES = {
    "nodeSelector": {LABEL: "true"},
    "tolerations": [{"key": LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
}


@pytest.fixture(scope="module")
def built_images(real_nodes: RealNodes) -> Iterator[dict[str, images.Image]]:
    """The operator and trainer images in a loopback registry the real nodes pull from."""
    reason = images.missing_tools()
    if reason:
        pytest.skip(f"images: {reason}")
    with running_registry() as registry:
        built = images.ensure_images(registry, report=lambda line: print(f"\nimages: {line}", flush=True))
        real_nodes.trust_registry(registry.host)
        yield built


@pytest.fixture(scope="module")
def s3(pod_net: PodNetwork) -> Iterator[GatedMotoServer]:
    with moto_s3(pod_net, BUCKET) as server:
        yield server


def split(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


@pytest.fixture(scope="module")
def operator_pod(control_plane: ControlPlane, real_nodes: RealNodes, service_proxy: KubeProxy,
                 built_images: dict[str, images.Image], s3: GatedMotoServer) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The chart installed by helm with the built images; its operator pod Ready on a real node.
    At the end the Deployment goes first (else its ReplicaSet re-creates the pod the nodes' teardown deletes)."""
    cp = control_plane
    operator_repo, operator_tag = split(built_images["operator"].ref)
    trainer_repo, trainer_tag = split(built_images["trainer"].ref)
    values = {
        "replicaCount": "1",
        "image.repository": operator_repo, "image.tag": operator_tag,
        "trainer.image.repository": trainer_repo, "trainer.image.tag": trainer_tag,
        "operator.defaultStorageUri": f"s3://{BUCKET}/runs", "operator.defaultStorageEndpointUrl": s3.url,
        "operator.defaultStorageSecret": S3_SECRET,
        "operator.progressInterval": "1", "operator.resyncInterval": "5",
    }  # fmt: skip
    placement = [f"--set-json={key}={json.dumps(value)}" for key, value in ON_REAL_NODES.items()]
    install_chart(cp, RELEASE, NAMESPACE, values, *placement)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET}, "type": "Opaque",
              "data": {k: base64.b64encode(S3_CREDENTIALS[k].encode()).decode()
                       for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}  # fmt: skip
    cp.admin.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    try:
        yield wait_for_operator(cp)
    finally:
        for path in (SRJ_PATH, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"):
            for item in cp.admin.list(path):
                cp.admin.delete(f"{path}/{item['metadata']['name']}")


def wait_for_operator(cp: ControlPlane) -> dict[str, Any]:
    deadline = time.monotonic() + OPERATOR_READY_TIMEOUT
    while True:
        pods = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labels="app.kubernetes.io/component=operator")
        for pod in pods:
            if ready(pod):
                return pod
            crashed = [c for c in pod["status"].get("containerStatuses") or [] if c.get("restartCount", 0) >= 2]
            if crashed:
                raise AssertionError(f"the operator container keeps failing: {crashed}\n{pod_log(cp, pod, True)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the operator pod is not Ready after {OPERATOR_READY_TIMEOUT:.0f} s: "
                                 f"{[p.get('status') for p in pods]}")  # fmt: skip
        time.sleep(1)


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


def pod_log(cp: ControlPlane, pod: dict[str, Any], previous: bool = False) -> str:
    """The container's log through the apiserver (the kubelet's API), its last lines."""
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/log"
    query = {"tailLines": "40", **({"previous": "true"} if previous else {})}
    try:
        return str(cp.admin.request("GET", path, query=query))
    except ApiError as err:  # the log is a diagnostic: its absence must not hide the failure
        return f"(no log: {err})"


def manifest(name: str) -> dict[str, Any]:
    doc = tiny_manifest(**{"spec.train.steps": STEPS, "spec.train.checkpointEvery": CHECKPOINT_EVERY,
                           "spec.train.evalEvery": 50})  # fmt: skip
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    doc["spec"]["resources"].update(ON_REAL_NODES)
    return doc


def test_tiny_speedrun_in_real_containers(control_plane: ControlPlane, real_nodes: RealNodes, kubectl: Kubectl,
                                          built_images: dict[str, images.Image], operator_pod: dict[str, Any],
                                          s3: GatedMotoServer) -> None:  # fmt: skip
    cp = control_plane
    # The operator runs the image built in this run (or the one an earlier run built from the same inputs).
    status = operator_pod["status"]["containerStatuses"][0]
    print(f"\noperator pod {operator_pod['metadata']['name']} on {operator_pod['spec']['nodeName']}: "
          f"{status['image']} {status['imageID']}")  # fmt: skip
    assert operator_pod["spec"]["nodeName"] in real_nodes.names
    assert status["imageID"].endswith(built_images["operator"].digest), (status["imageID"], built_images["operator"])

    kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest("tiny")))
    deadline, seen = time.monotonic() + RUN_TIMEOUT, []
    while True:
        srj = cp.admin.get(f"{SRJ_PATH}/tiny") or {}
        phase = (srj.get("status") or {}).get("phase")
        if not seen or seen[-1] != phase:
            seen.append(phase)
        if phase in ("Succeeded", "Failed") or time.monotonic() > deadline:
            break
        if phase is None and time.monotonic() > deadline - RUN_TIMEOUT + UNSEEN_TIMEOUT:
            break  # the operator never took the job up: its log says why
        time.sleep(1)
    pods = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods")
    where = {p["metadata"]["name"]: (p["spec"].get("nodeName"), p["status"].get("phase")) for p in pods}
    assert phase == "Succeeded", (
        f"tiny ended {phase} (seen {seen}); pods {where}; status {srj.get('status')}\n"
        f"operator log:\n{pod_log(cp, operator_pod)}"
    )
    assert seen[-3:] == ["Training", "Evaluating", "Succeeded"], seen

    # Both ranks ran in the trainer image on the real nodes; the eval pod in it too.
    print(f"pods: {where}")
    train = [p for p in pods if p["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name") == "tiny-train"]
    assert len(train) == 2 and {p["spec"]["nodeName"] for p in train} <= set(real_nodes.names), where
    trainer_ref = built_images["trainer"].ref
    assert {c["image"] for p in pods if p["metadata"]["name"].startswith("tiny-") for c in p["spec"]["containers"]} == {
        trainer_ref
    }, where

    # What a user sees: kubectl's table, and the results the eval pod published.
    row = kubectl.run("get", "srj", "tiny", "-n", NAMESPACE, "--no-headers").stdout.split()
    assert row[:3] == ["tiny", "Succeeded", "2"], row
    body = (
        s3_client(s3.url).get_object(Bucket=BUCKET, Key=f"runs/{NAMESPACE}/tiny/speedrun_results.json")["Body"].read()
    )
    info = json.loads(body)["runs"][0]["run_info"]
    assert info["num_devices"] == 2 and info["total_tokens"] == STEPS * BATCH * SEQ_LEN
    assert srj["status"]["results"]["bpb"] == info["eval/builtin://pydoc-topics/val/bpb"]
