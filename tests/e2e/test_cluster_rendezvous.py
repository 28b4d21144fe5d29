"""The c10d rendezvous under real start-up skew: rank 0's pod starts minutes after the others.

On a real cluster rank 0's pod can start minutes late (an image pull, a node that is down or
being scaled up). Here rank 0's pod is bound to a real node whose kubelet is stopped (a node
that went down: nothing starts the pod until it is back), while rank 1's pod runs on another
node and its torchrun agent waits for the store at `<name>-train-0.<name>:29400`, a name that
does not even resolve yet (rank 0's pod has no address). The agents must wait
(`runPolicy.rendezvousTimeoutSeconds`, default 15 min), rank 0 must host the store because it is
completion index 0 (not because a DNS lookup happened to match), and no pod failure may be
counted: the Job's `status.failed` stays 0 and the SpeedrunJob's `status.restarts` 0.

Placement is made deterministic with what a user has: the job's `resources.nodeSelector` names a
label the test gives the late node first (the Job controller creates index 0 first, so the
scheduler binds it first), a CPU request of more than half a node keeps rank 1 off that node
until the label is given to a second one, and `resources.tolerations` for the not-ready and
unreachable taints let the scheduler bind to the down node whenever its NotReady shows.

The node stays down SPEEDRUN_TEST_RENDEZVOUS_HOLD seconds (default 180: longer than torch's own
connect timeout, which made rank 1 give up before). The pods run the trainer image built from
the Dockerfile (tests/cluster/speedruns.py). The operator starts no gang (`gangScheduling: none`):
the test binds rank 0 before rank 1 can fit, which a gang forbids. Needs root; run:
`pytest -m cluster tests/e2e/test_cluster_rendezvous.py`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.network import PodNetwork
from tests.cluster.real_nodes import CPU_NODES, RealNodes
from tests.cluster.speedruns import INDEX, Speedruns, labelled, speedrun_env
from tests.support import images

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

HOLD_SECONDS = float(os.environ.get("SPEEDRUN_TEST_RENDEZVOUS_HOLD", "180"))
LABEL = "speedrun.test/rendezvous"
LATE_NODE, EARLY_NODE = CPU_NODES[1], CPU_NODES[0]
DOWN_TAINTS = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
               {"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]  # fmt: skip


@pytest.fixture(scope="module")
def runs(
    control_plane: ControlPlane, kube_nodes: RealNodes, pod_net: PodNetwork,
    built_images: dict[str, images.Image], tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Speedruns]:  # fmt: skip
    # No gang (builders/placement.py): the skew is made by binding rank 0 before rank 1 can fit,
    # which a gang scheduler refuses by design (all pods bind together or none does).
    with speedrun_env(control_plane, kube_nodes, pod_net, tmp_path_factory, "speedruns-rdzv",
                      {"operator.gangScheduling": "none"}, built_images=built_images) as env:  # fmt: skip
        yield env


def started(pod: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(str(pod["status"]["startTime"]).replace("Z", "+00:00"))


def more_than_half_a_node(cp: ControlPlane, node: str) -> str:
    """A CPU request two of which do not fit on `node` (its allocatable CPU, read back)."""
    cpu = str((cp.admin.get(f"/api/v1/nodes/{node}") or {})["status"]["allocatable"]["cpu"])
    millis = int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)
    return f"{millis // 2 + 100}m"


def rank(runs: Speedruns, name: str, index: str) -> dict[str, Any] | None:
    return next((p for p in runs.pods(f"{name}-train") if p["metadata"]["labels"][INDEX] == index), None)


@contextlib.contextmanager
def kubelet_stopped(nodes: RealNodes, node: str) -> Iterator[None]:
    """The node down (its kubelet stopped, as a crashed machine's) inside the block; back and Ready after it."""
    nodes.stop_kubelet(node)
    try:
        yield
    finally:
        nodes.start_kubelet(node)


def test_rank_0_starting_minutes_late_still_trains_and_counts_no_failure(
    runs: Speedruns, capsys: pytest.CaptureFixture[str]
) -> None:
    name, chosen = "late", {LABEL: "yes"}
    changes = {"spec.resources.cpu": more_than_half_a_node(runs.cp, LATE_NODE),
               "spec.resources.nodeSelector": {**runs.node_selector, **chosen},
               "spec.resources.tolerations": DOWN_TAINTS}  # fmt: skip
    with contextlib.ExitStack() as labels:
        labels.enter_context(labelled(runs.cp, (LATE_NODE,), chosen))
        with kubelet_stopped(runs.nodes, LATE_NODE):
            runs.create(runs.manifest(name, 20, 10, **changes))
            rank_0 = runs.wait_for(lambda: (p := rank(runs, name, "0")) and p["spec"].get("nodeName") and p,
                                   "rank 0's pod bound")  # fmt: skip
            assert rank_0["spec"]["nodeName"] == LATE_NODE, rank_0["spec"]
            labels.enter_context(labelled(runs.cp, (EARLY_NODE,), chosen))  # now rank 1 has a node

            def rank_1_running() -> bool:
                pod = rank(runs, name, "1")
                return pod is not None and pod["status"].get("phase") == "Running"

            runs.wait_for(rank_1_running, "rank 1's agent running while rank 0's node is down")
            hold_until = time.monotonic() + HOLD_SECONDS
            while time.monotonic() < hold_until:  # the scenario itself is a duration: rank 0 stays late
                job = runs.job(f"{name}-train") or {}
                failed = (job.get("status") or {}).get("failed", 0)
                assert failed == 0, f"a pod failed while rank 0 was held: {job.get('status')}\n{runs.nodes.log_tails()}"
                assert runs.status(name).get("restarts", 0) == 0, runs.status(name)
                phase = (rank(runs, name, "0") or {}).get("status", {}).get("phase")
                assert phase == "Pending", f"rank 0's pod {phase} while its node is down"
                time.sleep(1)

        runs.follow(name, "Succeeded")  # the eval pod, too, needs a node with the label

    pods = runs.pods(f"{name}-train")
    by_index = {p["metadata"]["labels"][INDEX]: p for p in pods}
    assert len(pods) == 2 and sorted(by_index) == ["0", "1"], [p["metadata"]["name"] for p in pods]
    assert [by_index[i]["spec"]["nodeName"] for i in ("0", "1")] == [LATE_NODE, EARLY_NODE]
    skew = (started(by_index["0"]) - started(by_index["1"])).total_seconds()
    with capsys.disabled():
        print(f"\nrank 0's pod started {skew:.0f} s after rank 1's; training formed and succeeded")
    assert skew >= HOLD_SECONDS - 2, skew  # its kubelet started it only once back (timestamps are in s)
    job = runs.job(f"{name}-train") or {}
    assert (job["status"].get("failed", 0), job["status"].get("succeeded")) == (0, 2), job["status"]
    assert runs.status(name).get("restarts", 0) == 0
    rank0_log = runs.log(by_index["0"])
    assert "worker rank 0/2" in rank0_log, rank0_log[-2000:]
