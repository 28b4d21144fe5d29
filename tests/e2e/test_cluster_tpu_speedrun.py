"""E2E on the real control plane: a TPU SpeedrunJob trains through the JAX backend and publishes.

The module adds a GKE TPU node pool of two v5e hosts to the session's real nodes (a `2x4` slice
of two hosts of 4 chips: real kubelets with the GKE labels, `google.com/tpu: 4` by a node status
patch, the TPU taint; gke_tpu.py). The TPU trainer image is built from the Dockerfile's
`trainer-tpu` target (on a Python 3.12 base made here: tests/support/images.py) and pulled by the
TPU hosts. The chart's operator turns the tpu-v5e SpeedrunJob into its Indexed Job; the real
scheduler puts one pod per TPU host, and GKE's TPU webhook (a real mutating admission webhook
here) gives each pod what GKE would (`TPU_WORKER_ID`, `TPU_WORKER_HOSTNAMES`) and what a TPU host
has in place of chips here: 4 CPU devices (`gke_tpu.cpu_chips`). So the operator's command line,
`python -m speedrun_trainer.train.jax_main`, trains for real in the image: 2 processes joined by
jax.distributed through cluster DNS (worker 0's hostname, port 8482), 8 devices in all. The eval
pod (the torch trainer image, no TPU asked, so off the TPU hosts) evaluates the JAX checkpoint and
publishes speedrun_results.json to S3 (moto on the pod network).

Needs root, buildah, a CPython 3.12 (the TPU image's base) and the TPU image built for this checkout
(see the `tpu_image` fixture); skips with one line otherwise.
Run: `pytest -m cluster tests/e2e/test_cluster_tpu_speedrun.py`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.gke_tpu import TPU_RESOURCE, GkeTpuWebhook, tpu_hosts
from tests.cluster.network import PodNetwork
from tests.cluster.real_nodes import RealNodes
from tests.cluster.real_speedrun import pull_on_every_node, split
from tests.cluster.speedruns import BUCKET, Speedruns, s3_client, speedrun_env
from tests.support import images
from tests.support.image_registry import running_registry

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = "speedruns-tpu"
HOSTS, CHIPS = 2, 4
STEPS, BATCH, SEQ_LEN = 8, 8, 64  # one sequence per chip per step
TPU_NODES = tpu_hosts("tpu-2x4-host", HOSTS, CHIPS, "tpu-v5-lite-podslice", "2x4")
BUILD_ENV = "SPEEDRUN_TEST_BUILD_TPU_IMAGE"
TIMEOUT = 900.0  # the TPU image's pull, two jax imports and compiles on a shared machine


@pytest.fixture(scope="module")
def tpu_image(kube_nodes: RealNodes) -> Iterator[str]:
    """The Dockerfile's trainer-tpu image of this checkout, found in the loopback registry the nodes
    trust (built there first when $SPEEDRUN_TEST_BUILD_TPU_IMAGE is 1). Its build needs ~25 GB of
    scratch disk and the image 6.7 GB on each TPU host, more than CI's machines spare beside the
    trainer image, so `make test` does not build it: without it the test skips, saying how to build."""
    reason = images.missing_tools(("trainer-tpu",))
    if reason:
        pytest.skip(f"TPU image: {reason}")
    build = os.environ.get(BUILD_ENV) == "1"
    with running_registry() as registry:
        try:
            built = images.ensure_images(registry, ("trainer-tpu",), report=lambda line: print(f"\nimages: {line}"),
                                         build=build)  # fmt: skip
        except images.NotBuilt as err:
            pytest.skip(f"TPU image: {err}; build it with `python -m tests.support.images build --images "
                        f"trainer-tpu` (~25 GB free disk) or set {BUILD_ENV}=1")  # fmt: skip
        kube_nodes.trust_registry(registry.host)
        yield built["trainer-tpu"].ref


@pytest.fixture(scope="module")
def runs(
    control_plane: ControlPlane, kube_nodes: RealNodes, pod_net: PodNetwork, built_images: dict[str, images.Image],
    tpu_image: str, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Speedruns]:  # fmt: skip
    repository, tag = split(tpu_image)
    values = {"trainer.tpuImage.repository": repository, "trainer.tpuImage.tag": tag}
    with (
        kube_nodes.added(*TPU_NODES),
        GkeTpuWebhook(control_plane, NAMESPACE, pod_net.host_ip, cpu_chips=CHIPS) as webhook,
        speedrun_env(control_plane, kube_nodes, pod_net, tmp_path_factory, NAMESPACE, values,
                     built_images=built_images) as env,
    ):  # fmt: skip
        # On the TPU hosts before the job: two 3.4 GB pulls ending minutes apart would make the
        # first JAX process give up on the second before training starts (a restart, counted).
        pull_on_every_node(control_plane, kube_nodes, NAMESPACE, tpu_image, on=[n.name for n in TPU_NODES])
        yield env
        assert webhook.mutated, "the apiserver never asked the webhook"


def test_a_tpu_slice_trains_on_jax_and_its_eval_pod_publishes(runs: Speedruns, kube_nodes: RealNodes,
                                                             tpu_image: str) -> None:  # fmt: skip
    name = "slice"
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
        assert container["image"] == tpu_image
        assert container["command"][:3] == ["python", "-m", "speedrun_trainer.train.jax_main"]
        assert container["resources"]["limits"][TPU_RESOURCE] == str(CHIPS)
    logs = {int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): runs.log(p)
            for p in train}  # fmt: skip
    for index, log in logs.items():  # joined through GKE's variables: 2 processes of 4 devices
        assert f"jax process {index}/{HOSTS} with {CHIPS} device(s)" in log, log[-3000:]
    assert "training the tpu-v5e manifest on this host's CPU devices in its place" in logs[0]
    assert f"jax backend: {HOSTS} process(es) x {CHIPS} cpu device(s)" in logs[0], logs[0][-3000:]
    assert re.search(rf"step\s+{STEPS}/{STEPS} \| loss \d", logs[0]), logs[0][-3000:]

    # The eval pod: the torch trainer image, no TPU asked, evaluating the JAX checkpoint; without the
    # TPU taint's toleration it runs off the slice's hosts.
    [evaluation] = runs.pods(f"{name}-eval")
    assert evaluation["spec"]["containers"][0]["image"] != tpu_image
    assert evaluation["spec"]["nodeName"] not in {n.name for n in TPU_NODES}
    assert TPU_RESOURCE not in (evaluation["spec"]["containers"][0].get("resources") or {}).get("limits", {})

    published = s3_client(runs.s3).get_object(Bucket=BUCKET, Key=f"{name}/speedrun_results.json")["Body"].read()
    info = json.loads(published)["runs"][0]["run_info"]
    bpb = info["eval/builtin://pydoc-topics/val/bpb"]
    assert math.isfinite(bpb) and 0 < bpb < 9, bpb  # below the 8 bits of an untrained byte model, roughly
    assert runs.status(name)["results"]["bpb"] == bpb
    assert info["num_devices"] == HOSTS * CHIPS
    assert info["total_tokens"] == STEPS * BATCH * SEQ_LEN
