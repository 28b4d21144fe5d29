"""Integration: the operator restarted mid-run neither duplicates children nor loses the job.

The cluster (emulated) outlives two operator processes' worth of KopfRunner: the first creates
the children and sees training start; while no operator runs, training completes; the second
resumes, adopts what exists (same uids, one of each) and carries the job to Succeeded.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.kube_emulator import wait_for
from tests.operator_fixtures import NAMESPACE, Speedruns, emulated_cluster, start_operator, tiny_job

RESULTS = {"uri": "s3://speedrun-test/runs/speedruns/phoenix/speedrun_results.json", "bpb": 2.0, "core": 0.1}


def uids(runs: Speedruns, name: str) -> dict[str, str]:
    found = {}
    for api_version, plural in [("v1", "configmaps"), ("v1", "services"), ("batch/v1", "jobs")]:
        for obj in runs.cluster.list(api_version, plural, NAMESPACE, {"speedrun.dev/job": name}):
            found[f"{plural}/{obj['metadata']['name']}"] = obj["metadata"]["uid"]
    return found


def test_restart_mid_run_keeps_one_of_each_child_and_finishes(tmp_path: Path) -> None:
    with emulated_cluster(tmp_path) as cluster:
        runs = Speedruns(cluster)
        with start_operator():
            runs.apply(tiny_job("phoenix"))
            wait_for(lambda: runs.job("phoenix-train"), what="the training Job")
            runs.jobs.start_pods(NAMESPACE, "phoenix-train")
            runs.wait_phase("phoenix", "Training")
        before = uids(runs, "phoenix")
        assert sorted(before) == ["configmaps/phoenix-run", "jobs/phoenix-train", "services/phoenix"]

        runs.jobs.succeed(NAMESPACE, "phoenix-train")  # while no operator is running

        with start_operator():
            runs.wait_phase("phoenix", "Evaluating")
            after = uids(runs, "phoenix")
            assert {k: v for k, v in after.items() if k in before} == before
            assert sorted(after) == sorted([*before, "jobs/phoenix-eval"])

            runs.jobs.start_pods(NAMESPACE, "phoenix-eval")
            runs.jobs.succeed(NAMESPACE, "phoenix-eval", termination_message=json.dumps(RESULTS))
            status = runs.wait_phase("phoenix", "Succeeded")

        assert status["results"]["bpb"] == 2.0 and status["results"]["core"] == 0.1
        assert sorted(uids(runs, "phoenix")) == sorted(after)
        reasons = [reason for _, reason, _ in runs.events("phoenix")]
        assert reasons == ["PodsPending", "Running", "TrainingSucceeded", "EvaluationSucceeded"]
