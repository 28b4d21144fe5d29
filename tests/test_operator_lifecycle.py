"""Integration: the real kopf operator over HTTP against the emulated API (tests/kube_emulator.py).

One emulated cluster and one operator serve every test in this module (each test has its own
SpeedrunJob name); the test plays the Job controller and kubelet with `ScriptedJobController`.
Covers: create -> exactly the children; pod/Job status -> phase, conditions, Events; progress
from rank 0's metrics; eval done -> Succeeded with results; invalid spec -> Failed with the
message and no children; trainer config error; Kueue; suspend/resume; deletion; metrics.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.kube_emulator import wait_for
from tests.operator_fixtures import NAMESPACE, SRJ, Speedruns, emulated_cluster, free_port, start_operator, tiny_job

RESULTS = {
    "uri": "s3://speedrun-test/runs/speedruns/x/speedrun_results.json",
    "bpb": 1.234,
    "core": None,
    "valLoss": 0.98,
    "modelFlops": 1.5e15,
    "hardwareFlops": 3.0e15,
    "trainingSeconds": 61.5,
    "timeToTargetSeconds": None,
}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[Speedruns]:
    with emulated_cluster(tmp_path_factory.mktemp("cluster")) as cluster, start_operator(metrics_port):
        yield Speedruns(cluster)


def train_to_completion(runs: Speedruns, name: str) -> None:
    runs.jobs.start_pods(NAMESPACE, f"{name}-train")
    runs.wait_phase(name, "Training")
    runs.jobs.succeed(NAMESPACE, f"{name}-train")
    runs.wait_phase(name, "Evaluating")


def test_create_makes_exactly_the_children(runs: Speedruns) -> None:
    srj = runs.apply(tiny_job("create"))
    wait_for(lambda: runs.children("create")["jobs"], what="the training Job")
    status = runs.wait_phase("create", "Pending")

    assert runs.children("create") == {"configmaps": ["create-run"], "services": ["create"], "jobs": ["create-train"]}
    uid = srj["metadata"]["uid"]
    for api_version, plural, name in [
        ("v1", "configmaps", "create-run"),
        ("v1", "services", "create"),
        ("batch/v1", "jobs", "create-train"),
    ]:
        child = runs.cluster.get(api_version, plural, NAMESPACE, name)
        assert child is not None
        [owner] = child["metadata"]["ownerReferences"]
        assert owner["uid"] == uid and owner["kind"] == "SpeedrunJob" and owner["controller"] is True
    config = runs.cluster.get("v1", "configmaps", NAMESPACE, "create-run")["data"]["run.json"]
    assert json.loads(config)["spec"]["train"]["steps"] == 300
    job = runs.job("create-train")["spec"]
    assert job["completions"] == job["parallelism"] == 2 and job["completionMode"] == "Indexed"
    command = job["template"]["spec"]["containers"][0]["command"]
    assert f"--rdzv-id={uid}" in command and "--rdzv-endpoint=create-train-0.create:29400" in command
    env = {e["name"]: e.get("value") for e in job["template"]["spec"]["containers"][0]["env"]}
    assert env["SPEEDRUN_STORAGE_URI"] == "s3://speedrun-test/runs/speedruns/create"  # the operator's default
    assert job["template"]["spec"]["containers"][0]["image"] == "registry.test/speedrun-trainer:test"

    assert status["nodes"] == "2" and status["observedGeneration"] == 1
    assert runs.condition("create", "Validated")["status"] == "True"
    assert ("Normal", "PodsPending", "Pending: waiting for the training pods to start") in runs.events("create")


def test_runs_through_training_and_eval_to_succeeded(runs: Speedruns) -> None:
    registry = CollectorRegistry()
    values = {"step": 42, "total_steps": 300, "train_loss": 2.5, "tokens_per_second": 12345.0, "mfu": 0.31}
    for metric, value in {**values, "eta_seconds": 90.0}.items():
        Gauge(f"speedrun_{metric}", metric, registry=registry).set(value)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        runs.apply(tiny_job("happy", metrics={"port": port}))
        wait_for(lambda: runs.job("happy-train"), what="the training Job")
        runs.jobs.start_pods(NAMESPACE, "happy-train")
        status = runs.wait_phase("happy", "Training")
        assert status["startTime"]
        assert runs.condition("happy", "Training")["status"] == "True"

        progress = wait_for(lambda: runs.status("happy").get("progress"), what="status.progress from rank 0")
        assert progress["step"] == 42 and progress["totalSteps"] == 300
        assert progress["trainLoss"] == 2.5 and progress["tokensPerSecond"] == 12345.0
        assert progress["mfu"] == pytest.approx(0.31) and progress["etaSeconds"] == 90.0
    finally:
        server.shutdown()

    runs.jobs.succeed(NAMESPACE, "happy-train")
    runs.wait_phase("happy", "Evaluating")
    eval_job = runs.job("happy-eval")
    assert eval_job is not None
    assert eval_job["spec"]["template"]["spec"]["containers"][0]["command"][:6] == [
        "python",
        "-m",
        "speedrun_trainer.train.torchrun",
        "--nnodes=1",
        "--nproc-per-node=1",
        "--standalone",
    ]
    runs.jobs.start_pods(NAMESPACE, "happy-eval")
    runs.jobs.succeed(NAMESPACE, "happy-eval", termination_message=json.dumps(RESULTS))

    status = runs.wait_phase("happy", "Succeeded")
    assert status["results"] == {k: v for k, v in RESULTS.items() if v is not None}
    assert status["completionTime"]
    for type_ in ("Evaluated", "ResultsPublished", "Succeeded"):
        assert runs.condition("happy", type_)["status"] == "True", type_
    assert runs.condition("happy", "Training")["reason"] == "TrainingSucceeded"
    assert [reason for _, reason, _ in runs.events("happy")] == [
        "PodsPending",
        "Running",
        "TrainingSucceeded",
        "EvaluationSucceeded",
    ]
    assert runs.children("happy")["jobs"] == ["happy-eval", "happy-train"]


def test_invalid_spec_fails_with_the_message_and_creates_nothing(runs: Speedruns) -> None:
    # Passes the CRD schema and its CEL rules (this rule has no CEL twin), fails the model.
    manifest = tiny_job("invalid", train={"batchSize": 12, "deviceBatchSize": 8, "steps": 10})
    runs.apply(manifest)
    status = runs.wait_phase("invalid", "Failed")

    validated = runs.condition("invalid", "Validated")
    assert validated["status"] == "False" and validated["reason"] == "InvalidSpec"
    assert validated["message"].startswith("spec.train.batchSize: must divide evenly")
    assert runs.condition("invalid", "Failed")["message"] == validated["message"]
    assert status["completionTime"]
    assert runs.children("invalid") == {"configmaps": [], "services": [], "jobs": []}
    assert [(t, r) for t, r, _ in runs.events("invalid")] == [("Warning", "InvalidSpec")]

    # Fixing the spec (a new generation) lets it run.
    fixed = {"spec": {"train": {"batchSize": 16}}}
    runs.cluster.patch(*SRJ, NAMESPACE, "invalid", fixed)
    wait_for(lambda: runs.job("invalid-train"), what="the training Job after the fix")
    assert runs.wait_phase("invalid", "Pending")["observedGeneration"] == 2
    assert runs.condition("invalid", "Failed") is None


def test_trainer_config_error_fails_at_once_with_its_last_log_line(runs: Speedruns) -> None:
    runs.apply(tiny_job("badconfig"))
    wait_for(lambda: runs.job("badconfig-train"), what="the training Job")
    runs.jobs.start_pods(NAMESPACE, "badconfig-train")
    runs.wait_phase("badconfig", "Training")
    # (A crash of one pod is a gang restart now: tests/test_cluster_gang_restart.py, on the real Job controller.)

    log = "loading config\nworld size 3 does not divide batchSize 16"
    rule = "Container trainer for pod x failed with exit code 2 matching FailJob rule at index 0"
    runs.jobs.fail(NAMESPACE, "badconfig-train", "PodFailurePolicy", rule, exit_code=2, log=log)
    runs.wait_phase("badconfig", "Failed")
    failed = runs.condition("badconfig", "Failed")
    assert failed["reason"] == "InvalidConfig"
    assert rule in failed["message"] and "world size 3 does not divide batchSize 16" in failed["message"]
    assert runs.events("badconfig")[-1][:2] == ("Warning", "InvalidConfig")
    assert runs.job("badconfig-eval") is None


def test_kueue_queue_label_and_admission(runs: Speedruns) -> None:
    runs.apply(tiny_job("queued", runPolicy={"queueName": "cpu-queue"}))
    wait_for(lambda: runs.job("queued-train"), what="the training Job")
    job = runs.job("queued-train")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cpu-queue"
    assert job["spec"]["suspend"] is True
    runs.wait_phase("queued", "Queued")

    runs.jobs.admit(NAMESPACE, "queued-train")
    runs.jobs.start_pods(NAMESPACE, "queued-train")
    runs.wait_phase("queued", "Training")
    assert runs.job("queued-train")["spec"]["suspend"] is False  # the operator leaves it to Kueue


def test_suspend_and_resume(runs: Speedruns) -> None:
    runs.apply(tiny_job("pausable"))
    wait_for(lambda: runs.job("pausable-train"), what="the training Job")
    runs.jobs.start_pods(NAMESPACE, "pausable-train")
    runs.wait_phase("pausable", "Training")

    runs.cluster.patch(*SRJ, NAMESPACE, "pausable", {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(lambda: runs.job("pausable-train")["spec"].get("suspend") is True, what="the Job suspended")
    runs.jobs.sync_suspension(NAMESPACE, "pausable-train")
    runs.wait_phase("pausable", "Suspended")
    assert runs.condition("pausable", "Suspended")["status"] == "True"

    runs.cluster.patch(*SRJ, NAMESPACE, "pausable", {"spec": {"runPolicy": {"suspend": False}}})
    wait_for(lambda: runs.job("pausable-train")["spec"].get("suspend") is False, what="the Job resumed")
    runs.jobs.start_pods(NAMESPACE, "pausable-train")
    runs.wait_phase("pausable", "Training")
    assert runs.condition("pausable", "Suspended")["reason"] == "Resumed"
    assert not [e for e in runs.events("pausable") if e[1] == "SpecChangeIgnored"]


def test_spec_edits_after_start_are_reported_not_applied(runs: Speedruns) -> None:
    runs.apply(tiny_job("edited"))
    wait_for(lambda: runs.job("edited-train"), what="the training Job")
    runs.jobs.start_pods(NAMESPACE, "edited-train")
    runs.wait_phase("edited", "Training")
    template = runs.job("edited-train")["spec"]["template"]

    runs.cluster.patch(*SRJ, NAMESPACE, "edited", {"spec": {"train": {"steps": 400}}})
    event = wait_for(lambda: [e for e in runs.events("edited") if e[1] == "SpecChangeIgnored"], what="the Event")
    assert event[0][0] == "Warning" and event[0][2].startswith("spec.train.steps: ")
    assert runs.job("edited-train")["spec"]["template"] == template
    assert wait_for(lambda: runs.status("edited").get("observedGeneration") == 2, what="observedGeneration 2")


def test_delete_removes_what_the_job_owns(runs: Speedruns) -> None:
    runs.apply(tiny_job("doomed"))
    wait_for(lambda: runs.job("doomed-train"), what="the training Job")
    runs.jobs.start_pods(NAMESPACE, "doomed-train")
    runs.wait_phase("doomed", "Training")
    assert len(runs.jobs.pods(NAMESPACE, "doomed-train")) == 2

    runs.cluster.delete(*SRJ, NAMESPACE, "doomed")
    wait_for(lambda: runs.get("doomed") is None, what="the SpeedrunJob gone (finalizer released)")
    wait_for(lambda: runs.children("doomed") == {"configmaps": [], "services": [], "jobs": []}, what="children gone")
    assert runs.jobs.pods(NAMESPACE, "doomed-train") == []


def test_operator_serves_its_metrics(runs: Speedruns, metrics_port: int) -> None:
    runs.apply(tiny_job("counted", train={"batchSize": 12, "deviceBatchSize": 8, "steps": 10}))
    runs.wait_phase("counted", "Failed")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    text = wait_for(lambda: 'speedrun_operator_failures_total{reason="InvalidSpec"}' in scrape() and scrape())
    assert 'speedrun_operator_jobs{phase="Failed"}' in text
    assert 'speedrun_operator_reconcile_duration_seconds_count{handler="create"}' in text
    assert "speedrun_operator_training_restarts_total" in text


def test_render_matches_what_the_operator_creates(runs: Speedruns, tmp_path: Path) -> None:
    """`speedrun render` and the operator share builders: same pod template, ownerReferences aside."""
    import yaml

    from speedrun_operator.commands import main

    runs.apply(tiny_job("rendered"))
    live = wait_for(lambda: runs.job("rendered-train"), what="the training Job")
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump(tiny_job("rendered")))
    out = tmp_path / "out.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", out.open("w"))
        assert main(["render", str(manifest), "-o", "json"]) == 0
    rendered = json.loads(out.read_text())["items"][2]
    command = rendered["spec"]["template"]["spec"]["containers"][0]["command"]
    live_command = live["spec"]["template"]["spec"]["containers"][0]["command"]
    # Offline there is no uid, so the rendezvous id is the name; everything else is equal.
    assert [c for c in command if not c.startswith("--rdzv-id")] == [
        c for c in live_command if not c.startswith("--rdzv-id")
    ]


def test_orphaned_children_are_adopted_not_duplicated(runs: Speedruns) -> None:
    labels = {"speedrun.dev/job": "adopter", "speedrun.dev/role": "config"}
    orphan = {"metadata": {"name": "adopter-run", "labels": labels}, "data": {"run.json": "{}"}}
    orphan_uid = runs.cluster.create("v1", "configmaps", NAMESPACE, orphan)["metadata"]["uid"]
    srj = runs.apply(tiny_job("adopter"))
    wait_for(lambda: runs.job("adopter-train"), what="the training Job")
    adopted = runs.cluster.get("v1", "configmaps", NAMESPACE, "adopter-run")
    assert adopted["metadata"]["uid"] == orphan_uid
    assert [ref["uid"] for ref in adopted["metadata"]["ownerReferences"]] == [srj["metadata"]["uid"]]
    assert runs.children("adopter")["configmaps"] == ["adopter-run"]
