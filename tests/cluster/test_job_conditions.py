"""The training Job's end as Kubernetes 1.31+ writes it.

The real Job controller first writes `FailureTarget` (or `SuccessCriteriaMet`), terminates the
remaining pods, and only then `Failed` (or `Complete`). The outcome is decided at the first of
them: `lifecycle.job_state` must read each version of real Jobs that way. The same Job's short
TTL with a real speedrun is tests/e2e/test_cluster_job_ttl.py. Run:
`pytest -m cluster tests/cluster/test_job_conditions.py`.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from speedrun_operator.lifecycle import job_state
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.node_agent import NodeAgent
from tests.cluster.speedruns import JobRecorder, true_conditions

pytestmark = pytest.mark.cluster

_numbers = itertools.count()
# A pod that ignores SIGTERM: the node agent kills it after its grace period, so the Job
# controller's interim condition stays alone on the Job for a few seconds.
LINGER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    name = f"job-conditions-{next(_numbers)}"
    control_plane.namespace(name)
    return name


def indexed_job(name: str, index_0: str, **spec: Any) -> dict[str, Any]:
    script = f"import os, sys\nif os.environ['JOB_COMPLETION_INDEX'] == '0':\n    {index_0}\n{LINGER}"
    container = {"name": "main", "image": "python:3.11", "command": ["python", "-c", script]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"completions": 2, "parallelism": 2, "completionMode": "Indexed", "backoffLimit": 0,
                     "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}, **spec}}  # fmt: skip


def interim_versions(
    cp: ControlPlane, kube_nodes: NodeAgent, ns: str, job: dict[str, Any], interim: str, final: str
) -> list[dict[str, Any]]:
    """Run `job` to its final condition; the versions that carry `interim` and not yet `final`."""
    name = job["metadata"]["name"]
    with JobRecorder(cp, ns) as jobs:
        cp.admin.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job)

        def finished() -> bool:
            kube_nodes.check()
            return any(final in true_conditions(j) for _, j in jobs.versions(name))

        wait_until(finished, 180, f"Job {name} {final}", interval=0.2)
    found = [j for _, j in jobs.versions(name) if interim in (c := true_conditions(j)) and final not in c]
    seen = [true_conditions(j) for _, j in jobs.versions(name)]
    assert found, f"the Job controller never wrote {interim} before {final}: {seen}"
    return found


def test_failure_target_is_already_the_failure(control_plane: ControlPlane, kube_nodes: NodeAgent, ns: str) -> None:
    job = indexed_job("crash", "sys.exit(3)")

    for version in interim_versions(control_plane, kube_nodes, ns, job, "FailureTarget", "Failed"):
        state = job_state(version)
        assert (state.phase, state.reason) == ("Failed", "BackoffLimitExceeded"), (state, version["status"])


def test_success_criteria_met_is_already_the_success(
    control_plane: ControlPlane, kube_nodes: NodeAgent, ns: str
) -> None:
    job = indexed_job("leader", "sys.exit(0)", successPolicy={"rules": [{"succeededIndexes": "0"}]})

    for version in interim_versions(control_plane, kube_nodes, ns, job, "SuccessCriteriaMet", "Complete"):
        assert job_state(version).phase == "Succeeded", version["status"]
