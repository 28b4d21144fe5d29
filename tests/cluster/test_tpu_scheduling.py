"""A TPU SpeedrunJob scheduled the GKE way: one pod per host of the slice, on the TPU nodes.

The module adds a GKE TPU node pool to the session's real nodes (gke_tpu.py): four v5e hosts of a
4x4 slice, real kubelets with the GKE labels, `google.com/tpu: 4` each (a node status patch) and
the TPU taint. GKE's TPU webhook, a real mutating admission webhook here, serves the module's
namespace. The chart's operator turns a tpu-v5e 4x4 SpeedrunJob into its Indexed Job; the real
scheduler must put its four pods one per TPU node (the selectors, the toleration and
`google.com/tpu` decide), and each container gets `TPU_WORKER_ID` and `TPU_WORKER_HOSTNAMES` as
GKE sets them, read from the container's PID 1 with `kubectl exec`. The pods run the player image
(tests/cluster/players.py) in the TPU image's place: scheduling is the point, not training (a TPU
job trains in tests/e2e/test_cluster_tpu_speedrun.py). Run:
`pytest -m cluster tests/cluster/test_tpu_scheduling.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.gke_tpu import TPU_RESOURCE, GkeTpuWebhook, tpu_hosts
from tests.cluster.kubectl import Kubectl
from tests.cluster.network import PodNetwork
from tests.cluster.operator_run import ServedNamespace, served_namespace
from tests.cluster.players import PlayerImage, PodPlayers
from tests.cluster.real_nodes import RealNodes

pytestmark = pytest.mark.cluster

NAMESPACE = "tpu-tests"
HOSTS, CHIPS = 4, 4
TPU_NODES = tpu_hosts("tpu-v5e-host", HOSTS, CHIPS, "tpu-v5-lite-podslice", "4x4")


@pytest.fixture(scope="module")
def served(
    control_plane: ControlPlane, kube_nodes: RealNodes, pod_net: PodNetwork, player_image: PlayerImage,
    pod_players: PodPlayers, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedNamespace]:  # fmt: skip
    values = {**player_image.chart_values(pod_players), "trainer.tpuImage.repository": player_image.repository,
              "trainer.tpuImage.tag": player_image.tag}  # fmt: skip
    control_plane.namespace(NAMESPACE)
    with (
        kube_nodes.added(*TPU_NODES),
        GkeTpuWebhook(control_plane, NAMESPACE, pod_net.host_ip) as webhook,
        served_namespace(control_plane, NAMESPACE, tmp_path_factory.mktemp("operator"), **values) as served,
    ):
        yield served
        assert webhook.mutated, "the apiserver never asked the webhook"


def container_env(kubectl: Kubectl, pod: dict[str, Any]) -> dict[str, str]:
    """The environment of the container's PID 1, as the trainer would read it."""
    out = kubectl.run("exec", "-n", NAMESPACE, pod["metadata"]["name"], "--", "cat", "/proc/1/environ").stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def running(served: ServedNamespace, name: str) -> list[dict[str, Any]] | None:
    pods = [p for p in served.pods(name) if p["metadata"]["labels"].get("speedrun.dev/role") == "train"]
    ok = len(pods) == HOSTS and all((p.get("status") or {}).get("phase") == "Running" for p in pods)
    return pods if ok else None


def test_a_tpu_slice_runs_one_pod_per_tpu_host_with_gkes_worker_env(
    served: ServedNamespace, pod_players: PodPlayers, kubectl: Kubectl
) -> None:
    name = "slice"
    doc = served.manifest(name, **{
        "spec.resources": {"accelerator": "tpu-v5e", "topology": "4x4", "nodes": HOSTS, "procsPerNode": 1,
                           "cpu": "100m", "memory": "128Mi",
                           "tolerations": [{"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]},
        "spec.train.batchSize": 64, "spec.train.deviceBatchSize": 4,
    })  # fmt: skip
    try:
        served.apply(kubectl, doc)
        pods = wait_until(lambda: running(served, name), 300, "four training pods running", interval=0.5)
        by_index = {int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): p for p in pods}
        assert sorted(by_index) == list(range(HOSTS))
        assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(n.name for n in TPU_NODES), "one pod per host"
        hostnames = ",".join(f"{name}-train-{i}.{name}" for i in range(HOSTS))
        for index, pod in by_index.items():
            env = container_env(kubectl, pod)
            assert (env["TPU_WORKER_ID"], env["TPU_WORKER_HOSTNAMES"]) == (str(index), hostnames), env
            assert env["JOB_COMPLETION_INDEX"] == str(index), env  # the Job controller's own
            [container] = pod["spec"]["containers"]
            assert container["resources"]["limits"][TPU_RESOURCE] == str(CHIPS)
            assert container["command"][:3] == ["python", "-m", "speedrun_trainer.train.jax_main"]
    finally:  # deleted while training: no eval pod
        served.delete(kubectl, name)
