"""A TPU SpeedrunJob scheduled the GKE way: one pod per host of the slice, on the TPU nodes.

A second node agent registers a GKE TPU node pool (gke_tpu.py): four v5e hosts of a 4x4 slice,
with the GKE labels, `google.com/tpu: 4` each and the TPU taint. The chart's operator turns a
tpu-v5e 4x4 SpeedrunJob into its Indexed Job; the real scheduler must put its four pods one per
TPU node (the selectors, the toleration and `google.com/tpu` decide), and each pod's process gets
`TPU_WORKER_ID` and `TPU_WORKER_HOSTNAMES` as GKE would set them. The pods are played
(players.py): scheduling is the point, not training. Run:
`pytest -m cluster tests/cluster/test_tpu_scheduling.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.gke_tpu import GKE_TPU_ACCELERATOR, GKE_TPU_TOPOLOGY, TPU_TAINT
from tests.cluster.network import PodNetwork
from tests.cluster.node_agent import NodeAgent, NodeSpec
from tests.cluster.operator_run import ServedNamespace, served_namespace
from tests.cluster.players import PodPlayers
from tests.cluster.pod_runtime import POD_MARKER, pod_pids

pytestmark = pytest.mark.cluster

NAMESPACE = "tpu-tests"
HOSTS, CHIPS = 4, 4
LABELS = {GKE_TPU_ACCELERATOR: "tpu-v5-lite-podslice", GKE_TPU_TOPOLOGY: "4x4"}
TPU_NODES = [NodeSpec(f"tpu-v5e-host-{i}", tpus=CHIPS, labels=LABELS, taints=(TPU_TAINT,)) for i in range(HOSTS)]


@pytest.fixture(scope="module")
def tpu_pool(
    control_plane: ControlPlane, pod_net: PodNetwork, pod_players: PodPlayers, pod_scratch: Path
) -> Iterator[NodeAgent]:
    with NodeAgent(control_plane.admin, pod_scratch / "tpu-pods", TPU_NODES, pod_net, stand_in=pod_players) as agent:
        yield agent
    agent.check()


@pytest.fixture(scope="module")
def served(
    control_plane: ControlPlane, tpu_pool: NodeAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedNamespace]:
    with served_namespace(control_plane, NAMESPACE, tmp_path_factory.mktemp("operator")) as served:
        yield served


def process_env(pod: dict[str, Any]) -> dict[str, str]:
    """The environment the pod's process runs with (read from /proc, as the trainer would see it)."""
    for pid in pod_pids(pod["metadata"]["uid"]):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        if env.get(POD_MARKER) == pod["metadata"]["uid"]:
            return env
    return {}


def running(served: ServedNamespace, name: str) -> list[dict[str, Any]] | None:
    pods = [p for p in served.pods(name) if p["metadata"]["labels"].get("speedrun.dev/role") == "train"]
    ok = len(pods) == HOSTS and all((p.get("status") or {}).get("phase") == "Running" for p in pods)
    return pods if ok and all(process_env(p) for p in pods) else None


def test_a_tpu_slice_runs_one_pod_per_tpu_host_with_gkes_worker_env(
    served: ServedNamespace, pod_players: PodPlayers, kubectl: Kubectl
) -> None:
    name = "slice"
    pod_players.play(f"{name}-train", namespace=NAMESPACE)
    doc = served.manifest(name, **{
        "spec.resources": {"accelerator": "tpu-v5e", "topology": "4x4", "nodes": HOSTS, "procsPerNode": 1,
                           "cpu": "1", "memory": "1Gi",
                           "tolerations": [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "spec.train.batchSize": 64, "spec.train.deviceBatchSize": 4,
    })  # fmt: skip
    try:
        served.apply(kubectl, doc)
        pods = wait_until(lambda: running(served, name), 120, "four training pods running", interval=0.5)
        by_index = {int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): p for p in pods}
        assert sorted(by_index) == list(range(HOSTS))
        assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(n.name for n in TPU_NODES), "one pod per host"
        hostnames = ",".join(f"{name}-train-{i}.{name}" for i in range(HOSTS))
        for index, pod in by_index.items():
            env = process_env(pod)
            assert (env["TPU_WORKER_ID"], env["TPU_WORKER_HOSTNAMES"]) == (str(index), hostnames), env
            [container] = pod["spec"]["containers"]
            assert container["resources"]["limits"]["google.com/tpu"] == str(CHIPS)
            assert container["command"][:3] == ["python", "-m", "speedrun_trainer.train.jax_main"]
    finally:  # deleted while training: no eval pod, which would run the real evaluation
        served.delete(kubectl, name)
        pod_players.stop_playing(f"{name}-train", namespace=NAMESPACE)
        pod_players.finish(f"{name}-train")
