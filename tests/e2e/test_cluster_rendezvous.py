"""The c10d rendezvous under real start-up skew: rank 0's pod starts minutes after the others.

On a real cluster rank 0's pod can start minutes late (an image pull, a GPU node scaled up). The
node agent holds rank 0's pod in ContainerCreating while rank 1's torchrun agent waits for the
store at `<name>-train-0.<name>:29400`, a name that does not even resolve yet. The agents must
wait (`runPolicy.rendezvousTimeoutSeconds`, default 15 min), rank 0 must host the store because
it is completion index 0 (not because a DNS lookup happened to match), and no pod failure may be
counted: the Job's `status.failed` stays 0 and the SpeedrunJob's `status.restarts` 0.

The hold lasts SPEEDRUN_TEST_RENDEZVOUS_HOLD seconds (default 180: longer than torch's own
connect timeout, which made rank 1 give up before). Needs root; run:
`pytest -m cluster tests/e2e/test_cluster_rendezvous.py`.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.network import PodNetwork
from tests.cluster.node_agent import NodeAgent
from tests.cluster.speedruns import INDEX, Speedruns, speedrun_env

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

HOLD_SECONDS = float(os.environ.get("SPEEDRUN_TEST_RENDEZVOUS_HOLD", "180"))


@pytest.fixture(scope="module")
def runs(
    control_plane: ControlPlane, kube_nodes: NodeAgent, pod_net: PodNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Speedruns]:
    with speedrun_env(control_plane, kube_nodes, pod_net, tmp_path_factory, "speedruns-rdzv") as env:
        yield env


def started(pod: dict[str, object]) -> datetime.datetime:
    stamp = str(pod["status"]["startTime"])  # type: ignore[index]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_rank_0_starting_minutes_late_still_trains_and_counts_no_failure(
    runs: Speedruns, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "late"
    runs.nodes.hold(f"{name}-train-0-")  # rank 0's pod: ContainerCreating until released
    try:
        runs.create(runs.manifest(name, 20, 10))

        def rank_1_running() -> bool:
            pods = runs.pods(f"{name}-train")
            return any(p["metadata"]["labels"][INDEX] == "1" and p["status"].get("phase") == "Running" for p in pods)

        runs.wait_for(rank_1_running, "rank 1's agent running while rank 0 is held")
        hold_until = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < hold_until:  # the scenario itself is a duration: rank 0 stays late
            job = runs.job(f"{name}-train") or {}
            failed = (job.get("status") or {}).get("failed", 0)
            assert failed == 0, f"a pod failed while rank 0 was held: {job.get('status')}\n{runs.nodes.log_tails()}"
            assert runs.status(name).get("restarts", 0) == 0, runs.status(name)
            time.sleep(1)
    finally:
        runs.nodes.release(f"{name}-train-0-")

    runs.follow(name, "Succeeded")

    pods = runs.pods(f"{name}-train")
    by_index = {p["metadata"]["labels"][INDEX]: p for p in pods}
    assert len(pods) == 2 and sorted(by_index) == ["0", "1"], [p["metadata"]["name"] for p in pods]
    skew = (started(by_index["0"]) - started(by_index["1"])).total_seconds()
    with capsys.disabled():
        print(f"\nrank 0's pod started {skew:.0f} s after rank 1's; training formed and succeeded")
    job = runs.job(f"{name}-train") or {}
    assert (job["status"].get("failed", 0), job["status"].get("succeeded")) == (0, 2), job["status"]
    assert runs.status(name).get("restarts", 0) == 0
    rank0_log = runs.nodes.log(by_index["0"]["metadata"]["name"])
    assert "worker rank 0/2" in rank0_log, rank0_log[-2000:]
