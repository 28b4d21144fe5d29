"""The training Job's end as Kubernetes 1.31+ writes it.

The real Job controller first writes `FailureTarget` (or `SuccessCriteriaMet`), terminates the
remaining pods, and only then `Failed` (or `Complete`). The outcome is decided at the first of
them: `lifecycle.job_state` must read each version of real Jobs that way. The pods are real
containers (the nodes' static `hello` image, sleeping): index 0 ends when the test signals its
container (SIGKILL: a crash, exit 137; SIGTERM: hello exits 0), and index 1 takes a few seconds to
terminate (a preStop sleep), so the interim condition stays alone on the Job meanwhile. The same
Job's short TTL with a real speedrun is tests/e2e/test_cluster_job_ttl.py. Run:
`pytest -m cluster tests/cluster/test_job_conditions.py`.
"""

from __future__ import annotations

import itertools
import signal
from typing import Any

import pytest

from speedrun_operator.lifecycle import job_state
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.real_nodes import RealNodes, container_id
from tests.cluster.speedruns import JobRecorder, true_conditions

pytestmark = pytest.mark.cluster

_numbers = itertools.count()
# How long the kubelet's preStop sleep keeps index 1 terminating once the Job controller deletes
# it: the Job controller's interim condition stays alone on the Job that long.
LINGER_SECONDS = 5
INDEX = "batch.kubernetes.io/job-completion-index"


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    name = f"job-conditions-{next(_numbers)}"
    control_plane.namespace(name)
    return name


def indexed_job(name: str, image: str, **spec: Any) -> dict[str, Any]:
    """Two sleeping pods; index 0's end (the test's signal) decides, index 1 lingers when deleted."""
    container = {"name": "main", "image": image, "args": ["sleep"], "imagePullPolicy": "IfNotPresent",
                 "lifecycle": {"preStop": {"sleep": {"seconds": LINGER_SECONDS}}}}  # fmt: skip
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"completions": 2, "parallelism": 2, "completionMode": "Indexed", "backoffLimit": 0,
                     "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 30,
                                           "containers": [container]}}, **spec}}  # fmt: skip


def running_pods(cp: ControlPlane, ns: str, name: str) -> dict[str, dict[str, Any]] | None:
    """Completion index -> pod, once both pods' containers run."""
    pods = cp.admin.list(f"/api/v1/namespaces/{ns}/pods", labels=f"batch.kubernetes.io/job-name={name}")
    running = {p["metadata"]["labels"][INDEX]: p for p in pods if container_id(p)}
    return running if len(running) == 2 else None


def interim_versions(cp: ControlPlane, kube_nodes: RealNodes, ns: str, job: dict[str, Any], end: signal.Signals,
                     interim: str, final: str) -> list[dict[str, Any]]:  # fmt: skip
    """Run `job`, end index 0 with signal `end`, wait for the final condition; the versions that
    carry `interim` and not yet `final`."""
    name = job["metadata"]["name"]
    with JobRecorder(cp, ns) as jobs:
        cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job)
        pods = wait_until(lambda: running_pods(cp, ns, name), 120, f"both pods of Job {name} running", interval=0.2)
        kube_nodes.kill(pods["0"], end)

        def finished() -> bool:
            kube_nodes.check()
            return any(final in true_conditions(j) for _, j in jobs.versions(name))

        wait_until(finished, 180, f"Job {name} {final}", interval=0.2)
    found = [j for _, j in jobs.versions(name) if interim in (c := true_conditions(j)) and final not in c]
    seen = [true_conditions(j) for _, j in jobs.versions(name)]
    assert found, f"the Job controller never wrote {interim} before {final}: {seen}"
    return found


def test_failure_target_is_already_the_failure(control_plane: ControlPlane, kube_nodes: RealNodes, ns: str) -> None:
    job = indexed_job("crash", kube_nodes.hello.name)

    for version in interim_versions(control_plane, kube_nodes, ns, job, signal.SIGKILL, "FailureTarget", "Failed"):
        state = job_state(version)
        assert (state.phase, state.reason) == ("Failed", "BackoffLimitExceeded"), (state, version["status"])


def test_success_criteria_met_is_already_the_success(
    control_plane: ControlPlane, kube_nodes: RealNodes, ns: str
) -> None:
    job = indexed_job("leader", kube_nodes.hello.name, successPolicy={"rules": [{"succeededIndexes": "0"}]})

    ends = interim_versions(control_plane, kube_nodes, ns, job, signal.SIGTERM, "SuccessCriteriaMet", "Complete")
    for version in ends:
        assert job_state(version).phase == "Succeeded", version["status"]
