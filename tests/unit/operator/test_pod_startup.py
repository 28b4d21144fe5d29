"""Unit tests of the start-up logic (operator/speedrun_operator/pod_startup.py) and its place in the
state machine: pods' reasons, Training only once the rendezvous can form, the start-up deadline,
and a child the apiserver refuses. The same behaviour on the real control plane:
tests/cluster/test_pending.py and tests/cluster/test_admission.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from speedrun_api.status import SpeedrunJobStatus
from speedrun_operator import conditions as C
from speedrun_operator import pod_startup
from speedrun_operator.lifecycle import JobState, Observation, is_settled, job_state, next_status

NOW = "2026-01-01T01:00:00Z"
SEEN = Observation(generation=1, nodes="2", now=NOW, min_ready=2)


def pod(index: int, phase: str = "Pending", scheduled: tuple[str, str] | None = None,
        waiting: tuple[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if scheduled is not None:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": scheduled[0],
                                     "message": scheduled[1]})  # fmt: skip
    if waiting is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}
        ]
    labels = {"batch.kubernetes.io/job-completion-index": str(index)}
    return {"metadata": {"name": f"j-train-{index}-abcde", "labels": labels}, "status": status}


@pytest.mark.parametrize(
    ("pods", "reason", "problem"),
    [
        ([], None, None),
        ([pod(0, "Running"), pod(1, scheduled=("Unschedulable", "0/3 nodes: Insufficient nvidia.com/gpu"))],
         "Unschedulable", True),
        ([pod(0, waiting=("ContainerCreating", "")), pod(1, waiting=("ErrImagePull", "no such image"))],
         "ErrImagePull", True),  # a problem wins over a pod that is merely starting
        ([pod(0, waiting=("CreateContainerConfigError", 'secret "s" not found'))], "CreateContainerConfigError", True),
        ([pod(1, waiting=("ContainerCreating", "")), pod(0, "Running")], "ContainerCreating", False),
        ([pod(0)], "PodsPending", False),
        ([pod(0, "Failed", waiting=("ErrImagePull", ""))], None, None),  # finished pods do not count
    ],
)  # fmt: skip
def test_pods_waiting_reads_the_schedulers_and_kubelets_reason(
    pods: list[dict[str, Any]], reason: str | None, problem: bool | None
) -> None:
    found = pod_startup.pods_waiting(pods)
    assert (found.reason if found else None, found.problem if found else None) == (reason, problem)


def test_the_message_names_the_pod_and_keeps_the_schedulers_words() -> None:
    found = pod_startup.pods_waiting([pod(1, scheduled=("Unschedulable", "0/3 nodes are available"))])
    assert found is not None and found.describe() == "Unschedulable: pod j-train-1-abcde: 0/3 nodes are available"


def test_missing_pods_counts_live_pods_against_the_jobs_parallelism() -> None:
    job = {"spec": {"parallelism": 2}}
    assert pod_startup.missing_pods(job, [pod(0, "Running")])
    going = pod(1)
    going["metadata"]["deletionTimestamp"] = NOW
    assert pod_startup.missing_pods(job, [pod(0, "Running"), going])
    assert not pod_startup.missing_pods(job, [pod(0, "Running"), pod(1)])


def test_the_job_controllers_last_failed_create_is_the_reason() -> None:
    def event(reason: str, message: str, at: str, type_: str = "Warning") -> dict[str, Any]:
        return {"type": type_, "reason": reason, "message": message, "lastTimestamp": at,
                "involvedObject": {"kind": "Job", "name": "j-train"}}  # fmt: skip

    assert pod_startup.creation_failure([event("SuccessfulCreate", "Created pod: j-train-0", NOW, "Normal")]) is None
    quota = 'Error creating: pods "j-train-1-x" is forbidden: exceeded quota: gpus, requested: pods=1'
    found = pod_startup.creation_failure([event("FailedCreate", quota, "2026-01-01T00:59:00Z"),
                                      event("FailedCreate", "an older refusal", "2026-01-01T00:10:00Z")])  # fmt: skip
    assert found == pod_startup.PodsWaiting("FailedCreate", f"job j-train: {quota}", True)


@pytest.mark.parametrize(
    ("job", "overdue"),
    [
        (None, False),
        ({"spec": {}, "status": {}}, False),  # not started yet
        ({"spec": {}, "status": {"startTime": "2026-01-01T00:59:00Z"}}, False),
        ({"spec": {}, "status": {"startTime": "2026-01-01T00:58:59Z"}}, True),
        ({"spec": {"suspend": True}, "status": {"startTime": "2026-01-01T00:00:00Z"}}, False),  # queued
    ],
)
def test_startup_overdue_counts_from_the_jobs_start(job: dict[str, Any] | None, overdue: bool) -> None:
    assert pod_startup.startup_overdue(job, 60, NOW) is overdue


def test_stop_patch_lowers_the_jobs_deadline_only() -> None:
    assert pod_startup.stop_patch({"spec": {}}, 60) == {"spec": {"activeDeadlineSeconds": 60}}
    lowered = {"spec": {"activeDeadlineSeconds": 60}}
    assert pod_startup.stop_patch({"spec": {"activeDeadlineSeconds": 600}}, 60) == lowered
    assert pod_startup.stop_patch({"spec": {"activeDeadlineSeconds": 30}}, 60) is None


def test_job_state_counts_succeeded_pods() -> None:
    state = job_state({"spec": {}, "status": {"ready": 1, "succeeded": 1}})
    assert (state.phase, state.ready, state.succeeded) == ("Running", 1, 1)


def test_one_ready_pod_of_two_stays_pending_and_all_ready_trains() -> None:
    half, _ = next_status(SpeedrunJobStatus(), replace(SEEN, train=JobState("Running", ready=1)))
    assert half.phase == "Pending" and half.start_time is None
    assert C.find(half.conditions, C.TRAINING).message.startswith("1 of 2 training pods ready")
    full, event = next_status(half, replace(SEEN, train=JobState("Running", ready=2)))
    assert full.phase == "Training" and event is not None and event.reason == C.REASON_RUNNING
    # A pod that already finished counts: the rendezvous formed.
    done, _ = next_status(half, replace(SEEN, train=JobState("Running", ready=1, succeeded=1)))
    assert done.phase == "Training"
    # Once training, a pod being replaced does not send the job back to Pending.
    replaced, _ = next_status(full, replace(SEEN, train=JobState("Pending")))
    assert replaced.phase == "Training"


def test_a_problem_reason_is_shown_and_posted_once() -> None:
    waiting = pod_startup.PodsWaiting("Unschedulable", "pod p: 0/3 nodes are available", True)
    seen = replace(SEEN, train=JobState("Pending"), waiting=waiting)
    first, event = next_status(SpeedrunJobStatus(), seen)
    cond = C.find(first.conditions, C.TRAINING)
    assert (first.phase, cond.status, cond.reason) == ("Pending", "False", "Unschedulable")
    assert event is not None and event.type == "Warning" and event.reason == "Unschedulable"
    again, event = next_status(first, seen)
    assert again == first and event is None
    starting = pod_startup.PodsWaiting("ContainerCreating", "pod p: pulling", False)
    later, event = next_status(first, replace(seen, waiting=starting))
    assert C.find(later.conditions, C.TRAINING).reason == C.REASON_PENDING and event is None


def test_the_startup_deadline_fails_the_job() -> None:
    pending, _ = next_status(SpeedrunJobStatus(), replace(SEEN, train=JobState("Pending")))
    failed, event = next_status(pending, replace(SEEN, train=JobState("Pending"), startup_failure="not in 60 s"))
    assert failed.phase == "Failed" and failed.completion_time == NOW
    assert C.find(failed.conditions, C.FAILED).reason == C.REASON_STARTUP_DEADLINE
    assert event is not None and event.reason == C.REASON_STARTUP_DEADLINE
    assert is_settled(failed, 2)  # a spec edit does not bring pods that never started back


def test_a_rejected_child_fails_the_job_and_a_spec_edit_retries() -> None:
    failed, event = next_status(SpeedrunJobStatus(), replace(SEEN, rejected="Invalid: denied by policy"))
    assert failed.phase == "Failed" and C.is_true(failed.conditions, C.VALIDATED)
    assert C.find(failed.conditions, C.FAILED).message == "Invalid: denied by policy"
    assert event is not None and event.reason == C.REASON_CHILD_REJECTED
    assert is_settled(failed, 1) and not is_settled(failed, 2)
    fixed, _ = next_status(failed, replace(SEEN, generation=2, train=JobState("Pending")))
    assert fixed.phase == "Pending" and C.find(fixed.conditions, C.FAILED) is None
