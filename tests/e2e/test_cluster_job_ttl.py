"""A short TTL must not re-run training: `runPolicy.ttlSecondsAfterFinished: 0` on the control plane.

The real TTL-after-finished controller deletes a finished Job at once. With the operator down
when training ends, a Job it had not yet seen finish must still be there when it comes back (the
operator gives the Job its TTL only after recording the outcome), and it must never create a
second training Job.

The training and eval pods run the trainer image built from the Dockerfile on the real kubelets
(tests/cluster/speedruns.py); the operator is a process of the test, so that it can be stopped.
Needs root (real nodes); run: `pytest -m cluster tests/e2e/test_cluster_job_ttl.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.network import PodNetwork
from tests.cluster.real_nodes import RealNodes
from tests.cluster.speedruns import JobRecorder, Speedruns, speedrun_env, true_conditions
from tests.support import images

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


@pytest.fixture(scope="module")
def runs(
    control_plane: ControlPlane, kube_nodes: RealNodes, pod_net: PodNetwork,
    built_images: dict[str, images.Image], tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Speedruns]:  # fmt: skip
    with speedrun_env(control_plane, kube_nodes, pod_net, tmp_path_factory, "speedruns-ttl",
                      built_images=built_images) as env:  # fmt: skip
        yield env


def test_ttl_zero_never_reruns_training_even_when_the_operator_missed_the_end(runs: Speedruns) -> None:
    name, train = "ephemeral", "ephemeral-train"
    with JobRecorder(runs.cp, runs.namespace) as jobs:
        # Rank 0 waits at its first checkpoint until the operator is down: training cannot end
        # before the operator has seen it start, however fast the machine trains.
        runs.gate.hold(rf"/{name}/checkpoints/model_000010\.pt$")
        try:
            runs.create(runs.manifest(name, 30, 10, **{"spec.runPolicy.ttlSecondsAfterFinished": 0}))
            runs.follow(name, "Training")
            runs.operator.stop()
        finally:
            runs.gate.release()
        try:  # training ends while nobody records it; the TTL controller is running
            runs.wait_for(lambda: any("Complete" in true_conditions(j) for _, j in jobs.versions(train)),
                          "the training Job Complete without the operator")  # fmt: skip
        finally:
            runs.operator.start()

        def settled() -> bool:
            return len(jobs.uids(train)) > 1 or runs.status(name).get("phase") in ("Evaluating", "Succeeded")

        runs.wait_for(settled, "the operator to record the training's end")
        assert len(jobs.uids(train)) == 1, f"training Job re-created: {jobs.uids(train)}"
        runs.follow(name, "Succeeded")
        runs.wait_for(lambda: runs.job(train) is None, "the TTL controller deleting the recorded training Job")
        runs.wait_for(lambda: runs.job(f"{name}-eval") is None, "the TTL controller deleting the eval Job")
        assert len(jobs.uids(train)) == 1 and len(jobs.uids(f"{name}-eval")) == 1
    assert runs.status(name)["phase"] == "Succeeded"
