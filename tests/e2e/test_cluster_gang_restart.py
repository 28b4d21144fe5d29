"""Gang restart on the control plane: one failure restarts the whole group, counted once.

A Job's backoffLimit counts pod failures, and when rank 0 dies every torchrun agent fails, so
one event used to cost N failures. Here rank 0's container is SIGKILLed mid-training in a 3-node
job (`kube_nodes.kill`: containerd kills the task on its real node, the kubelet reports exit 137):
the operator must re-create the training Job as the next attempt (label `speedrun.dev/attempt`),
count ONE restart in `status.restarts`, post a `GangRestart` Event, and the new pods resume from
the last checkpoint and finish. The kill lands mid-training however fast the machine trains:
the second checkpoint's upload is held in S3 until it is done. A job whose failures exceed
`runPolicy.maxRestarts` ends Failed with a message that says so. The pods run the trainer image
built from the Dockerfile (tests/cluster/speedruns.py). Needs root; run:
`pytest -m cluster tests/e2e/test_cluster_gang_restart.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.network import PodNetwork
from tests.cluster.real_nodes import RealNodes
from tests.cluster.speedruns import INDEX, Speedruns, speedrun_env
from tests.support import images

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

ATTEMPT = "speedrun.dev/attempt"
RESUMED = re.compile(r"resumed from \S+/checkpoints/meta_\d+\.json at step (\d+)")


@pytest.fixture(scope="module")
def runs(
    control_plane: ControlPlane, kube_nodes: RealNodes, pod_net: PodNetwork,
    built_images: dict[str, images.Image], tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Speedruns]:  # fmt: skip
    with speedrun_env(control_plane, kube_nodes, pod_net, tmp_path_factory, "speedruns-gang",
                      built_images=built_images) as env:  # fmt: skip
        yield env


def running_rank_0(runs: Speedruns, name: str, attempt: int) -> dict[str, Any] | None:
    for pod in runs.pods(f"{name}-train"):
        labels = pod["metadata"]["labels"]
        if (
            labels[INDEX] == "0"
            and labels.get(ATTEMPT, "0") == str(attempt)
            and pod["status"].get("phase") == "Running"
        ):
            return pod
    return None


def training(runs: Speedruns, name: str, attempt: int) -> bool:
    status = runs.status(name)
    return status.get("phase") == "Training" and status.get("attempt", 0) == attempt


def test_rank_0_killed_in_a_3_node_job_restarts_the_group_once_and_resumes(
    runs: Speedruns, capsys: pytest.CaptureFixture[str]
) -> None:
    name, steps, every = "gang", 150, 20
    changes = {"spec.resources.nodes": 3, "spec.train.batchSize": 12, "spec.runPolicy.maxRestarts": 2}
    runs.gate.hold(rf"/{name}/checkpoints/model_{2 * every:06d}\.pt$")  # rank 0 waits at the second
    try:
        runs.create(runs.manifest(name, steps, every, **changes))
        runs.wait_for(lambda: runs.saved_steps(name), "the first checkpoint")
        victim = runs.wait_for(lambda: running_rank_0(runs, name, 0), "rank 0 of attempt 0 running")
        runs.nodes.kill(victim)
        before = runs.saved_steps(name)
    finally:
        runs.gate.release()
    assert before[-1] < steps, "training finished before the kill: make it longer"

    runs.follow(name, "Succeeded")

    status = runs.status(name)
    with capsys.disabled():
        print(f"\nrestarts after killing rank 0 of a 3-node job: {status.get('restarts')}")
    assert status.get("restarts") == 1, status
    reasons = [e["reason"] for e in runs.events(name)]
    assert reasons.count("GangRestart") == 1, reasons
    job = runs.job(f"{name}-train") or {}
    assert job["metadata"]["labels"][ATTEMPT] == "1", job["metadata"]["labels"]
    assert (job["status"].get("succeeded"), job["status"].get("failed", 0)) == (3, 0), job["status"]
    pods = runs.pods(f"{name}-train")  # attempt 0's pods went with their Job
    assert sorted(p["metadata"]["labels"][ATTEMPT] for p in pods) == ["1", "1", "1"]
    logs = "\n".join(runs.log(p) for p in pods)
    resumed = [int(s) for s in RESUMED.findall(logs)]
    assert resumed and resumed[0] in before, (resumed, before)


def test_failures_beyond_max_restarts_fail_the_job_saying_so(runs: Speedruns) -> None:
    name = "fragile"
    runs.create(runs.manifest(name, 400, 100, **{"spec.runPolicy.maxRestarts": 1}))
    for attempt in (0, 1):
        # Once the attempt trains (all ranks joined): a failure before that is start-up trouble, not counted.
        victim = runs.wait_for(lambda a=attempt: training(runs, name, a) and running_rank_0(runs, name, a),
                               f"rank 0 of attempt {attempt}, training")  # fmt: skip
        runs.nodes.kill(victim)

    status = runs.follow(name, "Failed")

    assert status.get("restarts") == 1, status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "MaxRestartsExceeded", failed
    assert "runPolicy.maxRestarts is 1" in failed["message"], failed
