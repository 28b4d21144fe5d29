"""E2E on the real control plane: a TPU SpeedrunJob trains through the JAX backend and publishes.

A second node agent registers a GKE TPU node pool of two v5e hosts (a `2x4` slice of two hosts of
4 chips: the GKE labels, `google.com/tpu: 4`, the TPU taint; gke_tpu.py). The chart's operator
turns the tpu-v5e SpeedrunJob into its Indexed Job; the real scheduler puts one pod per TPU host,
and the node agent gives each pod what GKE would (`TPU_WORKER_ID`, `TPU_WORKER_HOSTNAMES`) and
what a TPU host has in place of chips here: 4 CPU devices (`gke_tpu.cpu_chips`). The pods run in
the TPU trainer image, which the node agent maps to the interpreter that image carries: the
Python 3.12 JAX venv (tests/support/jax_env.py, this checkout on its PYTHONPATH). So the
operator's command line, `python -m speedrun_trainer.train.jax_main`, trains for real: 2 processes
joined by jax.distributed through cluster DNS (worker 0's hostname, port 8482), 8 devices in all.
The eval pod (the torch trainer image, no TPU asked) evaluates the JAX checkpoint and publishes
speedrun_results.json to S3 (moto on the pod network).

Needs root (network namespaces) and the JAX venv; skips with one line otherwise.
Run: `pytest -m cluster tests/e2e/test_cluster_tpu_speedrun.py`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.gke_tpu import GKE_TPU_ACCELERATOR, GKE_TPU_TOPOLOGY, TPU_RESOURCE, TPU_TAINT, cpu_chips
from tests.cluster.network import PodNetwork
from tests.cluster.node_agent import NodeAgent, NodeSpec
from tests.cluster.pod_runtime import ImageRuntime
from tests.cluster.speedruns import BUCKET, Speedruns, s3_client, speedrun_env
from tests.support.jax_env import REPO, jax_python

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = "speedruns-tpu"
TPU_IMAGE_REPOSITORY, TPU_IMAGE_TAG = "registry.test/speedrun-trainer-tpu", "test"
TPU_IMAGE = f"{TPU_IMAGE_REPOSITORY}:{TPU_IMAGE_TAG}"
HOSTS, CHIPS = 2, 4
STEPS, BATCH, SEQ_LEN = 8, 8, 64  # one sequence per chip per step
LABELS = {GKE_TPU_ACCELERATOR: "tpu-v5-lite-podslice", GKE_TPU_TOPOLOGY: "2x4"}
TPU_NODES = [
    NodeSpec(f"tpu-2x4-host-{i}", tpus=CHIPS, labels=LABELS, taints=(TPU_TAINT,), env=cpu_chips(CHIPS))
    for i in range(HOSTS)
]
TIMEOUT = 600.0  # two jax imports and compiles on a shared machine; a wait on a condition, never a sleep


@pytest.fixture(scope="module")
def tpu_image() -> ImageRuntime:
    """The TPU trainer image as the node agent runs it: the JAX venv's Python on this checkout."""
    path = os.pathsep.join(str(REPO / d) for d in ("api", "trainer", "operator"))
    return ImageRuntime(jax_python(), {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"})


@pytest.fixture(scope="module")
def tpu_pool(
    control_plane: ControlPlane, pod_net: PodNetwork, pod_scratch: Path, tpu_image: ImageRuntime
) -> Iterator[NodeAgent]:
    workdir = pod_scratch / "tpu-speedrun-pods"
    with NodeAgent(control_plane.admin, workdir, TPU_NODES, pod_net, images={TPU_IMAGE: tpu_image}) as agent:
        yield agent
    agent.check()


@pytest.fixture(scope="module")
def runs(
    control_plane: ControlPlane, kube_nodes: NodeAgent, tpu_pool: NodeAgent, pod_net: PodNetwork,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Speedruns]:  # fmt: skip
    values = {"trainer.tpuImage.repository": TPU_IMAGE_REPOSITORY, "trainer.tpuImage.tag": TPU_IMAGE_TAG}
    with speedrun_env(control_plane, tpu_pool, pod_net, tmp_path_factory, NAMESPACE, values) as env:
        yield env


def test_a_tpu_slice_trains_on_jax_and_its_eval_pod_publishes(runs: Speedruns, kube_nodes: NodeAgent) -> None:
    name, tpu_pool = "slice", runs.nodes
    doc = runs.manifest(name, STEPS, STEPS // 2, **{
        "spec.resources": {"accelerator": "tpu-v5e", "topology": "2x4", "nodes": HOSTS, "procsPerNode": 1,
                           "cpu": "1", "memory": "2Gi",
                           "tolerations": [{"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]},
        "spec.train.batchSize": BATCH, "spec.train.deviceBatchSize": 1, "spec.train.logEvery": 1,
    })  # fmt: skip
    runs.create(doc)
    try:
        runs.follow(name, "Succeeded", TIMEOUT)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{kube_nodes.log_tails()}") from None

    # One pod per TPU host, in the TPU image, running the operator's JAX command line.
    train = runs.pods(f"{name}-train")
    assert sorted(p["spec"]["nodeName"] for p in train) == [n.name for n in TPU_NODES], "one pod per host"
    assert [p["status"]["phase"] for p in train] == ["Succeeded"] * HOSTS
    for pod in train:
        [container] = pod["spec"]["containers"]
        assert container["image"] == TPU_IMAGE
        assert container["command"][:3] == ["python", "-m", "speedrun_trainer.train.jax_main"]
        assert container["resources"]["limits"][TPU_RESOURCE] == str(CHIPS)
    logs = {int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]):
            tpu_pool.log(p["metadata"]["name"]) for p in train}  # fmt: skip
    for index, log in logs.items():  # joined through GKE's variables: 2 processes of 4 devices
        assert f"jax process {index}/{HOSTS} with {CHIPS} device(s)" in log, log[-3000:]
    assert "training the tpu-v5e manifest on this host's CPU devices in its place" in logs[0]
    assert f"jax backend: {HOSTS} process(es) x {CHIPS} cpu device(s)" in logs[0], logs[0][-3000:]
    assert re.search(rf"step\s+{STEPS}/{STEPS} \| loss \d", logs[0]), logs[0][-3000:]

    # The eval pod: the torch trainer image, no TPU asked, evaluating the JAX checkpoint. It carries
    # the manifest's tolerations, the TPU taint's included, so the scheduler may put it on a TPU
    # host's CPUs as well as on a CPU node: where it lands is not asserted.
    [evaluation] = runs.pods(f"{name}-eval")
    assert evaluation["spec"]["containers"][0]["image"] != TPU_IMAGE
    assert TPU_RESOURCE not in (evaluation["spec"]["containers"][0].get("resources") or {}).get("limits", {})

    published = s3_client(runs.s3).get_object(Bucket=BUCKET, Key=f"{name}/speedrun_results.json")["Body"].read()
    info = json.loads(published)["runs"][0]["run_info"]
    bpb = info["eval/builtin://pydoc-topics/val/bpb"]
    assert math.isfinite(bpb) and 0 < bpb < 9, bpb  # below the 8 bits of an untrained byte model, roughly
    assert runs.status(name)["results"]["bpb"] == bpb
    assert info["num_devices"] == HOSTS * CHIPS
    assert info["total_tokens"] == STEPS * BATCH * SEQ_LEN
