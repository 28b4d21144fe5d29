"""The state machine (operator/speedrun_operator/lifecycle.py): a Job's state from its conditions,
the next status from an observation, gang restarts, and when a job is settled. No API server, no
kopf loop."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from speedrun_api.status import Progress, Results, SpeedrunJobStatus
from speedrun_operator import conditions as C
from speedrun_operator.lifecycle import JobState, Observation, is_settled, job_state, next_status, train_state

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
    running_state = JobState("Running", ready=2)
    running, _ = next_status(SpeedrunJobStatus(), replace(seen, train=running_state))
    crash = JobState("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    restarted, event = next_status(running, replace(seen, now=LATER, train=crash))
    assert (restarted.phase, restarted.restarts, restarted.attempt, restarted.start_time) == ("Pending", 1, 1, NOW)
    assert event is not None and event.reason == "GangRestart" and "restart 1 of 2" in event.message
    # The failed attempt's Job is being replaced, then the next attempt's pods wait: nothing more counted,
    # and the condition keeps saying why the run restarted while the pods start normally.
    for state in (JobState("Replacing"), JobState("Missing"), JobState("Pending")):
        restarted, event = next_status(restarted, replace(seen, now=LATER, train=state))
        assert restarted.phase == "Pending" and restarted.restarts == 1 and event is None
        assert C.find(restarted.conditions, C.TRAINING).reason == C.REASON_RESTARTING
    rejoined, event = next_status(restarted, replace(seen, now=LATER, train=running_state))
    assert rejoined.phase == "Training" and event is not None and event.reason == C.REASON_RUNNING
    twice, _ = next_status(rejoined, replace(seen, now=LATER, train=crash))
    twice, _ = next_status(twice, replace(seen, now=LATER, train=running_state))
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
    training, _ = next_status(SpeedrunJobStatus(), replace(SEEN, train=JobState("Running", ready=2)))
    crashed, _ = next_status(training, replace(SEEN, train=JobState("Failed", "BackoffLimitExceeded")))
    assert is_settled(crashed, generation=2)  # a training failure past maxRestarts is final
    done, _ = next_status(
        SpeedrunJobStatus(),
        replace(SEEN, train=JobState("Succeeded"), evaluation=JobState("Succeeded"), results=RESULTS),
    )
    assert is_settled(done, generation=5)
