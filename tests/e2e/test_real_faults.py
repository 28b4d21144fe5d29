"""Faults in real containers: what the operator does when real kubelets kill, fail to pull, or fail to start.

The faults of tests/e2e/test_cluster_gang_restart.py and tests/cluster/test_pending.py, here with
the operator in its own pod: the chart's operator and the trainer run the images built from
the Dockerfile on real kubelets (tests/cluster/real_speedrun.py), and each fault is made the way
a user or the cluster makes it:
- `kubectl delete pod` of a training pod: the kubelet sends the container SIGTERM, the Job
  controller counts the failure, the operator restarts the gang once (`status.restarts`, a
  `GangRestart` Event) and the new attempt resumes from the last checkpoint in S3 and succeeds;
- `kubectl delete pod` of the operator's pod mid-training: its Deployment makes a new one, which
  takes the job up where it was (no second training Job, no restart) and it succeeds;
- `spec.image` naming a tag the registry does not hold: the kubelet's ErrImagePull/ImagePullBackOff
  is shown, then the start-up deadline fails the job;
- `spec.storage.secretRef` naming a Secret that does not exist: the kubelet's
  CreateContainerConfigError is shown, then the start-up deadline fails the job.
The operator's log must hold no traceback. The trainer image is pulled on both nodes first, so that
no start-up deadline races a session's first 3.3 GB pull. Needs root; run:
`pytest -m cluster tests/e2e/test_real_faults.py` (a few minutes once the images are built).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.kube_proxy import KubeProxy
from tests.cluster.kubectl import Kubectl
from tests.cluster.real_nodes import RealNodes
from tests.cluster.real_speedrun import (
    BUCKET,
    RealSpeedruns,
    Served,
    chart_operator,
    pod_log,
    pull_on_every_node,
    split,
    wait_for_operator,
)
from tests.cluster.speedruns import INDEX
from tests.support import images
from tests.support.s3 import GatedMotoServer

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = "speedruns-faults"
ATTEMPT = "speedrun.dev/attempt"
JOB_NAME = "batch.kubernetes.io/job-name"
RESUMED = re.compile(r"resumed from \S+/checkpoints/meta_\d+\.json at step (\d+)")
# Long enough that a kill after the first checkpoint lands mid-training (tiny steps take milliseconds).
STEPS, EVERY = 600, 50
DEADLINE = 45  # runPolicy.startupDeadlineSeconds of the jobs whose pods never start
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff")  # the kubelet alternates between them


@pytest.fixture(scope="module")
def faults(control_plane: ControlPlane, kubectl: Kubectl, kube_nodes: RealNodes, service_proxy: KubeProxy,
           built_images: dict[str, images.Image], s3: GatedMotoServer) -> Iterator[Served]:  # fmt: skip
    with chart_operator(control_plane, kubectl, NAMESPACE, "speedrun-faults", built_images, s3) as served:
        pull_on_every_node(control_plane, kube_nodes, NAMESPACE, built_images["trainer"].ref)
        yield served


def long_run(runs: RealSpeedruns, name: str) -> dict[str, Any]:
    return runs.manifest(name, **{"spec.train.steps": STEPS, "spec.train.checkpointEvery": EVERY,
                                  "spec.train.evalEvery": STEPS, "spec.runPolicy.maxRestarts": 2})  # fmt: skip


def running_rank_0(runs: RealSpeedruns, name: str, attempt: int) -> dict[str, Any] | None:
    for pod in runs.pods(name):
        labels = pod["metadata"]["labels"]
        if (labels.get(JOB_NAME) == f"{name}-train" and labels.get(INDEX) == "0"
                and labels.get(ATTEMPT, "0") == str(attempt) and pod["status"].get("phase") == "Running"):  # fmt: skip
            return pod
    return None


def operator_logs(runs: RealSpeedruns) -> str:
    return "\n".join(pod_log(runs.cp, p, lines=None) for p in runs.operator_pods())


def assert_no_traceback(runs: RealSpeedruns) -> None:
    logs = operator_logs(runs)
    assert "Traceback" not in logs, logs[-6000:]


def test_a_deleted_training_pod_restarts_the_gang_once_and_the_job_succeeds(faults: Served, kubectl: Kubectl) -> None:
    runs, _ = faults
    name = "killed"
    runs.apply(long_run(runs, name))
    runs.wait_for(lambda: runs.saved_steps(name), "the first checkpoint in S3")
    victim = runs.wait_for(lambda: running_rank_0(runs, name, 0), "rank 0 of attempt 0 running")
    before = runs.saved_steps(name)
    kubectl.run("delete", "pod", victim["metadata"]["name"], "-n", NAMESPACE, "--wait=false")

    status = runs.follow(name, "Succeeded")

    print(f"\nafter deleting rank 0: restarts {status.get('restarts')}, checkpoints before the kill {before}")
    assert status.get("restarts") == 1, status
    reasons = runs.reasons(name)
    assert reasons.count("GangRestart") == 1, reasons
    train = [j for j in runs.jobs(name) if j["metadata"]["name"] == f"{name}-train"]
    assert len(train) == 1 and train[0]["metadata"]["labels"][ATTEMPT] == "1", [j["metadata"] for j in train]
    assert (train[0]["status"].get("succeeded"), train[0]["status"].get("failed", 0)) == (2, 0), train[0]["status"]
    pods = [p for p in runs.pods(name) if p["metadata"]["labels"].get(JOB_NAME) == f"{name}-train"]
    assert sorted(p["metadata"]["labels"][ATTEMPT] for p in pods) == ["1", "1"], [p["metadata"]["name"] for p in pods]
    logs = "\n".join(pod_log(runs.cp, p, lines=None) for p in pods)
    resumed = [int(s) for s in RESUMED.findall(logs)]
    assert resumed and resumed[0] >= before[0], (resumed, before, logs[-3000:])
    assert_no_traceback(runs)
    runs.delete(name)


def test_the_operator_pod_deleted_mid_training_the_new_one_finishes_the_job(faults: Served, kubectl: Kubectl) -> None:
    runs, _ = faults
    name = "orphaned"
    runs.apply(long_run(runs, name))
    runs.wait_for(lambda: runs.phase(name) == "Training" and runs.saved_steps(name), "Training, a checkpoint in S3")
    old = runs.operator_pods()
    assert len(old) == 1, [p["metadata"]["name"] for p in old]
    kubectl.run("delete", "pod", old[0]["metadata"]["name"], "-n", NAMESPACE, "--wait=false")
    new = wait_for_operator(runs.cp, NAMESPACE, not_named=old[0]["metadata"]["name"])
    print(f"\noperator pod {old[0]['metadata']['name']} deleted, {new['metadata']['name']} Ready "
          f"on {new['spec']['nodeName']}; checkpoints so far {runs.saved_steps(name)}")  # fmt: skip

    status = runs.follow(name, "Succeeded")

    assert not status.get("restarts"), status
    assert "GangRestart" not in runs.reasons(name), runs.reasons(name)
    jobs = sorted(j["metadata"]["name"] for j in runs.jobs(name))
    assert jobs == [f"{name}-eval", f"{name}-train"], jobs
    train = next(j for j in runs.jobs(name) if j["metadata"]["name"] == f"{name}-train")
    assert train["metadata"]["labels"].get(ATTEMPT, "0") == "0", train["metadata"]["labels"]
    assert (train["status"].get("succeeded"), train["status"].get("failed", 0)) == (2, 0), train["status"]
    assert_no_traceback(runs)
    runs.delete(name)


def never_starts(runs: RealSpeedruns, name: str, reasons: tuple[str, ...], detail: str) -> None:
    """The Training condition shows one of the kubelet's `reasons` (its Event posted), the phase stays
    Pending; at the start-up deadline the job fails saying why, and its pods go."""

    def shown() -> dict[str, Any] | None:
        status = runs.status(name)
        if status.get("phase") in ("Succeeded", "Failed"):  # the deadline came first: the reason was never shown
            return {"ended": status}
        cond = runs.condition(name, "Training")
        return cond if cond.get("reason") in reasons and cond["reason"] in runs.reasons(name) else None

    cond = runs.wait_for(shown, f"the Training condition with reason {' or '.join(reasons)}", timeout=300)
    assert "ended" not in cond, f"the job ended before the Training condition showed {reasons}: {cond}"
    print(f"\n{name}: {cond['reason']}: {cond['message']}")
    assert cond["status"] == "False" and detail in cond["message"], cond
    assert runs.phase(name) == "Pending", runs.status(name)

    status = runs.follow(name, "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    print(f"{name}: {failed['reason']}: {failed['message']}")
    assert failed["reason"] == "StartupDeadlineExceeded", failed
    assert f"{DEADLINE} s" in failed["message"] and any(r in failed["message"] for r in reasons), failed
    assert runs.reasons(name)[-1] == "StartupDeadlineExceeded", runs.reasons(name)
    runs.wait_for(lambda: not runs.pods(name), "the training pods gone", timeout=300)
    assert_no_traceback(runs)
    runs.delete(name)


def test_a_trainer_image_the_registry_lacks_shows_the_pull_error_then_fails_at_the_deadline(
    faults: Served, built_images: dict[str, images.Image]
) -> None:
    runs, _ = faults
    repository, _ = split(built_images["trainer"].ref)
    missing = f"{repository}:no-such-tag"
    runs.apply(runs.manifest("noimage", **{"spec.image": missing, "spec.runPolicy.startupDeadlineSeconds": DEADLINE}))
    never_starts(runs, "noimage", PULL_REASONS, missing)


def test_a_missing_secret_shows_create_container_config_error_then_fails_at_the_deadline(faults: Served) -> None:
    runs, _ = faults
    storage = {"uri": f"s3://{BUCKET}/runs", "endpointUrl": runs.s3_url, "secretRef": {"name": "no-such-secret"}}
    changes = {"spec.storage": storage, "spec.runPolicy.startupDeadlineSeconds": DEADLINE}
    runs.apply(runs.manifest("nosecret", **changes))
    never_starts(runs, "nosecret", ("CreateContainerConfigError",), 'secret "no-such-secret" not found')
