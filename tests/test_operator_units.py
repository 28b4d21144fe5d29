"""Unit tests of the operator's pure parts: the state machine, progress and result parsing,
settings and the `speedrun operator` argv. No API server, no kopf loop."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pytest

from speedrun_api.status import Progress, Results, SpeedrunJobStatus
from speedrun_operator import conditions as C
from speedrun_operator import kube
from speedrun_operator.handlers import scrape
from speedrun_operator.handlers.operator_startup import OperatorContext
from speedrun_operator.lifecycle import JobState, Observation, is_settled, job_state, next_status, train_state
from speedrun_operator.operator_commands import kopf_run_argv
from speedrun_operator.settings import DEFAULT_TRAINER_IMAGE, OperatorSettings
from speedrun_operator.termination import eval_results, failure_detail, parse_results
from speedrun_operator.training_progress import metrics_url, parse_progress

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T01:00:00Z"


def job(conditions: list[dict[str, Any]] | None = None, suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {"spec": {"suspend": suspend}, "status": {**status, "conditions": conditions or []}}


@pytest.mark.parametrize(
    ("body", "phase", "reason"),
    [
        (None, "Missing", ""),
        (job(), "Pending", ""),
        (job(active=2), "Pending", ""),
        (job(active=2, ready=2), "Running", ""),
        (job(suspend=True), "Suspended", ""),
        (job([{"type": "Complete", "status": "True"}]), "Succeeded", ""),
        (job([{"type": "SuccessCriteriaMet", "status": "True"}]), "Succeeded", ""),
        (
            job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
            "Failed",
            "BackoffLimitExceeded",
        ),
        (job([{"type": "Failed", "status": "False"}], active=1, ready=1), "Running", ""),
    ],
)
def test_job_state(body: dict[str, Any] | None, phase: str, reason: str) -> None:
    state = job_state(body)
    assert (state.phase, state.reason) == (phase, reason)


RESULTS = Results(uri="s3://b/r.json", bpb=1.25)
SEEN = Observation(generation=1, nodes="2", now=NOW)


@pytest.mark.parametrize(
    ("name", "seen", "phase", "reason"),
    [
        ("invalid", replace(SEEN, spec_error="spec.x: bad"), "Failed", C.REASON_INVALID_SPEC),
        ("pending", SEEN, "Pending", C.REASON_PENDING),
        ("queued", replace(SEEN, queued=True, train=JobState("Suspended")), "Queued", C.REASON_QUEUED),
        ("suspended", replace(SEEN, suspend_requested=True, train=JobState("Suspended")), "Suspended", None),
        ("training", replace(SEEN, train=JobState("Running", ready=2)), "Training", C.REASON_RUNNING),
        ("evaluating", replace(SEEN, train=JobState("Succeeded")), "Evaluating", C.REASON_TRAINING_SUCCEEDED),
        (
            "config-error",
            replace(SEEN, train=JobState("Failed", "PodFailurePolicy", "exit 2"), failure_detail="pod p exited 2: bad"),
            "Failed",
            C.REASON_INVALID_CONFIG,
        ),
        ("deadline", replace(SEEN, train=JobState("Failed", "DeadlineExceeded", "late")), "Failed", C.REASON_DEADLINE),
        (
            "eval-failed",
            replace(SEEN, train=JobState("Succeeded"), evaluation=JobState("Failed", "BackoffLimitExceeded", "oom")),
            "Failed",
            C.REASON_EVALUATION_FAILED,
        ),
        (
            "succeeded",
            replace(SEEN, train=JobState("Succeeded"), evaluation=JobState("Succeeded"), results=RESULTS),
            "Succeeded",
            C.REASON_EVALUATION_SUCCEEDED,
        ),
        (
            "results-unreadable",
            replace(SEEN, train=JobState("Succeeded"), evaluation=JobState("Succeeded"), results_error="not JSON"),
            "Failed",
            C.REASON_RESULTS_UNREADABLE,
        ),
        (
            "eval-pod-not-seen-yet",
            replace(SEEN, train=JobState("Succeeded"), evaluation=JobState("Succeeded")),
            "Evaluating",
            C.REASON_TRAINING_SUCCEEDED,
        ),
    ],
)
def test_next_status_from_nothing(name: str, seen: Observation, phase: str, reason: str | None) -> None:
    status, transition = next_status(SpeedrunJobStatus(), seen)
    assert status.phase == phase
    assert transition is not None and (reason is None or transition.reason == reason)
    assert transition.type == ("Warning" if phase == "Failed" else "Normal")
    assert status.observed_generation == 1 and status.nodes == "2"
    assert (status.completion_time is not None) == (phase in ("Succeeded", "Failed"))
    if phase == "Failed":
        failed = C.find(status.conditions, C.FAILED)
        assert failed is not None and failed.reason == reason and failed.message
    if name == "config-error":
        assert "pod p exited 2: bad" in C.find(status.conditions, C.FAILED).message
    if name == "succeeded":
        assert status.results == RESULTS
        assert all(C.is_true(status.conditions, t) for t in (C.EVALUATED, C.RESULTS_PUBLISHED, C.SUCCEEDED))


def test_succeeded_progress_is_the_evaluated_step() -> None:
    # The last scrape saw step 40 of 100; the evaluated checkpoint says 100 were trained.
    training = SpeedrunJobStatus(phase="Training", progress=Progress(step=40, total_steps=100, eta_seconds=3.0))
    done = replace(SEEN, train=JobState("Succeeded"), evaluation=JobState("Succeeded"))
    status, _ = next_status(training, replace(done, results=Results(uri="u", bpb=1.0, training_steps=100)))
    assert status.phase == "Succeeded" and status.progress is not None
    assert (status.progress.step, status.progress.total_steps, status.progress.eta_seconds) == (100, 100, 0.0)
    # An older eval image without trainingSteps: the scraped progress stays as it was.
    status, _ = next_status(training, replace(done, results=RESULTS))
    assert status.progress == training.progress


def test_a_repeated_observation_changes_nothing() -> None:
    seen = replace(SEEN, train=JobState("Running", ready=2))
    first, transition = next_status(SpeedrunJobStatus(), seen)
    again, no_transition = next_status(first, replace(seen, now=LATER))
    assert transition is not None and no_transition is None
    assert again.wire() == first.wire()  # lastTransitionTime kept, no new startTime


def test_a_pod_failure_restarts_the_whole_group_counted_once() -> None:
    seen = replace(SEEN, max_restarts=2)
    running, _ = next_status(SpeedrunJobStatus(), replace(seen, train=JobState("Running", ready=2)))
    crash = JobState("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    restarted, event = next_status(running, replace(seen, now=LATER, train=crash))
    assert restarted.phase == "Training" and restarted.restarts == 1 and restarted.start_time == NOW
    assert event is not None and event.reason == "GangRestart" and "restart 1 of 2" in event.message
    # The failed attempt's Job is being replaced, then the next attempt's pods wait: nothing more counted.
    for state in (JobState("Replacing"), JobState("Missing"), JobState("Pending")):
        restarted, event = next_status(restarted, replace(seen, now=LATER, train=state))
        assert restarted.phase == "Training" and restarted.restarts == 1 and event is None
    twice, _ = next_status(restarted, replace(seen, now=LATER, train=crash))
    done, transition = next_status(twice, replace(seen, now=LATER, train=crash))
    assert (twice.restarts, done.restarts, done.phase) == (2, 2, "Failed")
    failed = C.find(done.conditions, C.FAILED)
    assert failed is not None and failed.reason == "MaxRestartsExceeded"
    assert "training failed 3 times and runPolicy.maxRestarts is 2" in failed.message
    assert transition is not None and transition.type == "Warning"


def test_permanent_training_failures_are_never_restarted() -> None:
    seen = replace(SEEN, max_restarts=5)
    for reason, ours in (("PodFailurePolicy", "InvalidConfig"), ("DeadlineExceeded", "DeadlineExceeded")):
        done, _ = next_status(SpeedrunJobStatus(), replace(seen, train=JobState("Failed", reason, "msg")))
        assert (done.phase, done.restarts, C.find(done.conditions, C.FAILED).reason) == ("Failed", 0, ours)


def test_job_state_reads_the_interim_conditions_of_kubernetes_1_31() -> None:
    def job(*types: str, reason: str = "BackoffLimitExceeded") -> dict[str, Any]:
        conditions = [{"type": t, "status": "True", "reason": reason} for t in types]
        return {"metadata": {"name": "j"}, "spec": {}, "status": {"active": 1, "ready": 1, "conditions": conditions}}

    assert job_state(job("FailureTarget")).phase == "Failed"
    assert job_state(job("FailureTarget")).reason == "BackoffLimitExceeded"
    assert job_state(job("FailureTarget", "Failed")).phase == "Failed"
    assert job_state(job("SuccessCriteriaMet", reason="SuccessPolicy")).phase == "Succeeded"
    assert job_state(job()).phase == "Running"


def test_train_state_knows_the_attempts() -> None:
    def job(attempt: str | None, deleting: bool = False) -> dict[str, Any]:
        labels = {} if attempt is None else {"speedrun.dev/attempt": attempt}
        meta: dict[str, Any] = {"name": "x-train", "labels": labels}
        if deleting:
            meta["deletionTimestamp"] = NOW
        return {"metadata": meta, "spec": {}, "status": {"ready": 2}}

    assert train_state(None, 1).phase == "Missing"
    assert train_state(job("0"), 1).phase == "Replacing"  # an earlier attempt
    assert train_state(job("1"), 1).phase == "Running"
    assert train_state(job("1", deleting=True), 1).phase == "Replacing"
    assert train_state(job(None), 1).phase == "Running"  # made before attempts were labelled: the current one


def test_training_done_is_remembered_when_the_job_is_gone() -> None:
    evaluating, _ = next_status(SpeedrunJobStatus(), replace(SEEN, train=JobState("Succeeded")))
    still, transition = next_status(evaluating, replace(SEEN, now=LATER))  # train Job deleted by TTL
    assert still.phase == "Evaluating" and transition is None


def test_settled_and_retry_after_a_spec_fix() -> None:
    failed, _ = next_status(SpeedrunJobStatus(), replace(SEEN, spec_error="spec.x: bad"))
    assert is_settled(failed, generation=1)
    assert not is_settled(failed, generation=2)  # edited: validate again
    fixed, transition = next_status(failed, replace(SEEN, generation=2, now=LATER))
    assert fixed.phase == "Pending" and C.find(fixed.conditions, C.FAILED) is None and fixed.completion_time is None
    assert transition is not None and transition.type == "Normal"
    crashed, _ = next_status(SpeedrunJobStatus(), replace(SEEN, train=JobState("Failed", "BackoffLimitExceeded")))
    assert is_settled(crashed, generation=2)  # a training failure is final
    done, _ = next_status(
        SpeedrunJobStatus(),
        replace(SEEN, train=JobState("Succeeded"), evaluation=JobState("Succeeded"), results=RESULTS),
    )
    assert is_settled(done, generation=5)


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    conds = C.set_condition([], C.TRAINING, C.TRUE, "Running", "a", NOW, 1)
    conds = C.set_condition(conds, C.TRAINING, C.TRUE, "Running", "b", LATER, 2)
    assert conds[0].last_transition_time == NOW and conds[0].message == "b" and conds[0].observed_generation == 2
    conds = C.set_condition(conds, C.TRAINING, C.FALSE, "TrainingSucceeded", "", LATER, 2)
    assert conds[0].last_transition_time == LATER


EXPOSITION = """\
# HELP speedrun_step Optimizer steps done
# TYPE speedrun_step gauge
speedrun_step 120.0
# TYPE speedrun_total_steps gauge
speedrun_total_steps 300.0
# TYPE speedrun_train_loss gauge
speedrun_train_loss 3.125
# TYPE speedrun_val_loss gauge
speedrun_val_loss NaN
# TYPE speedrun_tokens_per_second gauge
speedrun_tokens_per_second 5.5e5
# TYPE speedrun_mfu gauge
speedrun_mfu 0.42
# TYPE speedrun_eta_seconds gauge
speedrun_eta_seconds 61
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.0
"""


def test_parse_progress_maps_the_contract_gauges() -> None:
    assert parse_progress(EXPOSITION) == {
        "step": 120,
        "total_steps": 300,
        "train_loss": 3.125,
        "tokens_per_second": 550000.0,
        "mfu": 0.42,
        "eta_seconds": 61.0,
    }
    assert parse_progress("") == {}


def test_metrics_url() -> None:
    assert metrics_url({"status": {"podIP": "10.0.0.7"}}, 9400) == "http://10.0.0.7:9400/metrics"
    assert metrics_url({"status": {"podIP": "fd00::7"}}, 9400) == "http://[fd00::7]:9400/metrics"
    assert metrics_url({"status": {}}, 9400) is None


def pod(name: str, code: int, message: str | None, container: str = "evaluator") -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": code}
    if message is not None:
        terminated["message"] = message
    return {
        "metadata": {"name": name},
        "status": {"containerStatuses": [{"name": container, "state": {"terminated": terminated}}]},
    }


def test_eval_results_from_the_termination_message() -> None:
    message = json.dumps({"uri": "s3://b/r.json", "bpb": 1.5, "core": None, "valLoss": 2.0, "extraKey": 1})
    results, error = eval_results([pod("e-1", 1, "oom"), pod("e-2", 0, message)], "evaluator")
    assert error is None and results == Results(uri="s3://b/r.json", bpb=1.5, val_loss=2.0)
    assert eval_results([], "evaluator") == (None, None)
    assert eval_results([pod("e", 0, None)], "evaluator")[1] == "pod e left no termination message"
    assert "not JSON" in eval_results([pod("e", 0, "Traceback...")], "evaluator")[1]
    assert "bpb" in eval_results([pod("e", 0, json.dumps({"uri": "x"}))], "evaluator")[1]
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_results("[1, 2]")


def test_failure_detail_is_the_last_log_line() -> None:
    log = "step 1\nTraceback (most recent call last):\n  ...\nspec.train.batchSize: bad\n"
    pods = [pod("t-0", 0, None, "trainer"), pod("t-1", 2, log, "trainer")]
    assert failure_detail(pods, "trainer") == "pod t-1 exited 2: spec.train.batchSize: bad"
    assert failure_detail([pod("t-0", 137, None, "trainer")], "trainer") == "pod t-0 exited 137"
    assert failure_detail([pod("t-0", 0, None, "trainer")], "trainer") is None
    # The pod the Job controller names (its FailJob match) comes first, even after an earlier restart.
    early, matched = pod("t-0-a", 1, "NCCL timeout", "trainer"), pod("t-1-b", 2, "bad config", "trainer")
    rule = "Container trainer for pod ns/t-1-b failed with exit code 2 matching FailJob rule at index 0"
    assert failure_detail([early, matched], "trainer", rule) == "pod t-1-b exited 2: bad config"
    assert failure_detail([early, matched], "trainer") == "pod t-0-a exited 1: NCCL timeout"


def test_settings_round_trip_through_the_environment() -> None:
    assert OperatorSettings.from_env({}) == OperatorSettings()
    assert OperatorSettings().trainer_image == DEFAULT_TRAINER_IMAGE == "ghcr.io/speedrun-operator/trainer:0.1.0"
    custom = OperatorSettings(
        trainer_image="x/y:1", namespaces=("a", "b"), metrics_port=0, leader_election=True, progress_interval=2.5
    )
    env = custom.to_env()
    assert env["SPEEDRUN_TRAINER_IMAGE"] == "x/y:1" and env["SPEEDRUN_OPERATOR_NAMESPACES"] == "a,b"
    assert OperatorSettings.from_env(env) == custom
    with pytest.raises(ValueError, match="SPEEDRUN_OPERATOR_METRICS_PORT"):
        OperatorSettings.from_env({"SPEEDRUN_OPERATOR_METRICS_PORT": "lots"})


def test_kopf_argv() -> None:
    # Always standalone: replicas coordinate through a Lease (leader.py), never kopf peering.
    assert kopf_run_argv(OperatorSettings()) == ["run", "-m", "speedrun_operator.main", "--standalone",
                                                 "--all-namespaces"]  # fmt: skip
    argv = kopf_run_argv(OperatorSettings(namespaces=("a", "b"), leader_election=True,
                                          liveness="http://0.0.0.0:8080/healthz"))  # fmt: skip
    assert argv == ["run", "-m", "speedrun_operator.main", "--standalone", "--namespace", "a", "--namespace", "b",
                    "--liveness", "http://0.0.0.0:8080/healthz"]  # fmt: skip
    assert kopf_run_argv(OperatorSettings(), dev=True)[-2:] == ["--dev", "--verbose"]


def test_lease_timings_that_cannot_work_are_named() -> None:
    assert OperatorSettings(leader_election=True, namespaces=("a",)).problem() is None
    bad = OperatorSettings(leader_election=True, namespaces=("a",), lease_duration=5, lease_renew_deadline=10)
    assert "SPEEDRUN_OPERATOR_LEASE_RENEW_DEADLINE" in (bad.problem() or "")
    assert OperatorSettings(lease_duration=5, lease_renew_deadline=10).problem() is None  # election off


def test_operator_flags_become_settings() -> None:
    import argparse

    from speedrun_operator.operator_commands import register, settings_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["operator", "-n", "team-a", "--image", "i:2", "--metrics-port", "0",
                              "--leader-election"])  # fmt: skip
    settings = settings_from_args(args, OperatorSettings())
    assert (settings.namespaces, settings.trainer_image, settings.metrics_port, settings.leader_election) == (
        ("team-a",),
        "i:2",
        0,
        True,
    )
    assert args.func.__name__ == "operator_command"


class FakeKube:
    """Just enough of KubeClient for ensure_child: one dict per kind."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.creates = 0

    def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def create(self, kind: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.creates += 1
        self.objects[body["metadata"]["name"]] = body
        return body

    def patch(self, kind: Any, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.objects[name]["metadata"].update(patch["metadata"])
        return self.objects[name]


OWNER = {
    "apiVersion": "speedrun.dev/v1alpha1",
    "kind": "SpeedrunJob",
    "metadata": {"name": "j", "namespace": "n", "uid": "u1"},
}


def test_ensure_child_creates_once_then_gets() -> None:
    from speedrun_operator import kube
    from speedrun_operator.handlers.children import ensure_child

    client = FakeKube()
    manifest = {"metadata": {"name": "j-run", "labels": {"speedrun.dev/job": "j"}}}
    first = ensure_child(client, kube.CONFIGMAP, manifest, OWNER)  # type: ignore[arg-type]
    second = ensure_child(client, kube.CONFIGMAP, manifest, OWNER)  # type: ignore[arg-type]
    assert client.creates == 1 and first is second
    assert first["metadata"]["ownerReferences"][0]["uid"] == "u1" and "ownerReferences" not in manifest["metadata"]


def test_ensure_child_refuses_what_another_controller_owns() -> None:
    from speedrun_operator import kube
    from speedrun_operator.handlers.children import ChildConflict, ensure_child

    client = FakeKube()
    stranger = {"kind": "Job", "name": "other", "uid": "u0", "controller": True}
    client.objects["j-run"] = {"metadata": {"name": "j-run", "namespace": "n", "ownerReferences": [stranger]}}
    with pytest.raises(ChildConflict, match="controlled by Job other"):
        ensure_child(client, kube.CONFIGMAP, {"metadata": {"name": "j-run"}}, OWNER)  # type: ignore[arg-type]
    client.objects["j-run"] = {"metadata": {"name": "j-run", "namespace": "n", "labels": {}}}
    with pytest.raises(ChildConflict, match="not made for this SpeedrunJob"):
        ensure_child(client, kube.CONFIGMAP, {"metadata": {"name": "j-run"}}, OWNER)  # type: ignore[arg-type]


class _ProgressClient:
    """A job in `phase`; patches recorded, or refused with 409 as a changed object is."""

    def __init__(self, phase: str, conflict: bool = False) -> None:
        self.body = {"metadata": {"resourceVersion": "7"}, "status": {"phase": phase}}
        self.conflict, self.patches = conflict, []

    def get(self, kind, namespace, name):
        return self.body

    def patch(self, kind, namespace, name, patch, subresource=None):
        if self.conflict:
            raise kube.Conflict(409, "Conflict", "the object has been modified")
        self.patches.append((patch, subresource))


@pytest.mark.parametrize(
    ("phase", "conflict", "written"),
    [
        ("Training", False, True),
        ("Succeeded", False, False),  # the reconcile moved on while rank 0 was scraped
        ("Training", True, False),  # ... or changed the status between the read and the write
    ],
)
def test_a_progress_sample_never_overwrites_a_newer_status(monkeypatch, phase, conflict, written) -> None:
    client = _ProgressClient(phase, conflict)
    monkeypatch.setattr(scrape, "scrape_progress", lambda *a: {"step": 40})
    ctx = OperatorContext(settings=OperatorSettings(), client=client)
    assert scrape.follow_progress(ctx, "ns", "job", {}, logging.getLogger("test")) is written
    if written:
        assert client.patches == [
            ({"metadata": {"resourceVersion": "7"}, "status": {"progress": {"step": 40}}}, "status")
        ]
