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

import json
from collections.abc import Iterator

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.kube_proxy import KubeProxy
from tests.cluster.kubectl import Kubectl
from tests.cluster.real_nodes import RealNodes
from tests.cluster.real_speedrun import BUCKET, Served, chart_operator
from tests.cluster.speedruns import s3_client
from tests.support import images
from tests.support.s3 import GatedMotoServer

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = "speedruns-real"
STEPS, CHECKPOINT_EVERY, BATCH, SEQ_LEN = 20, 10, 8, 64


@pytest.fixture(scope="module")
def served(control_plane: ControlPlane, kubectl: Kubectl, service_proxy: KubeProxy,
           built_images: dict[str, images.Image], s3: GatedMotoServer) -> Iterator[Served]:  # fmt: skip
    with chart_operator(control_plane, kubectl, NAMESPACE, "speedrun", built_images, s3) as served:
        yield served


def test_tiny_speedrun_in_real_containers(control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl,
                                          built_images: dict[str, images.Image],
                                          served: Served, s3: GatedMotoServer) -> None:  # fmt: skip
    runs, operator_pod = served
    # The operator runs the image built in this run (or the one an earlier run built from the same inputs).
    status = operator_pod["status"]["containerStatuses"][0]
    print(f"\noperator pod {operator_pod['metadata']['name']} on {operator_pod['spec']['nodeName']}: "
          f"{status['image']} {status['imageID']}")  # fmt: skip
    assert operator_pod["spec"]["nodeName"] in kube_nodes.names
    assert status["imageID"].endswith(built_images["operator"].digest), (status["imageID"], built_images["operator"])

    runs.apply(runs.manifest("tiny", **{"spec.train.steps": STEPS, "spec.train.checkpointEvery": CHECKPOINT_EVERY}))
    srj = {"status": runs.follow("tiny", "Succeeded")}
    assert runs.seen["tiny"][-3:] == ["Training", "Evaluating", "Succeeded"], runs.seen
    pods = control_plane.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods")
    where = {p["metadata"]["name"]: (p["spec"].get("nodeName"), p["status"].get("phase")) for p in pods}

    # Both ranks ran in the trainer image on the real nodes; the eval pod in it too.
    print(f"pods: {where}")
    train = [p for p in pods if p["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name") == "tiny-train"]
    assert len(train) == 2 and {p["spec"]["nodeName"] for p in train} <= set(kube_nodes.names), where
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
