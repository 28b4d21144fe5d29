"""Restarts that count only what the job did, and a deadline and a reason for every attempt
(lifecycle.py `_restart`, disruptions.py, pod_startup.py, builders/train_job.py): table tests,
no API server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from speedrun_api.manifest import parse_job
from speedrun_api.status import Progress, SpeedrunJobStatus
from speedrun_operator import builders
from speedrun_operator import conditions as C
from speedrun_operator.builders.train_job import rendezvous_conf
from speedrun_operator.disruptions import Disruption, Memo, find_disruption, job_pods, lost_with_node, node_of
from speedrun_operator.lifecycle import JobState, Observation, next_status
from speedrun_operator.pod_startup import PodsWaiting, startup_overdue, stop_patch
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import tiny_manifest

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"
SEEN = Observation(generation=1, nodes="2", now=T0, max_restarts=0, max_disruptions=1, min_ready=2)
RUNNING = JobState("Running", ready=2)
CRASH = JobState("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
EVICTED_MESSAGE = "Pod ns/run-train-1-abc has condition DisruptionTarget matching FailJob rule at index 1"
EVICTED = JobState("Failed", "PodFailurePolicy", EVICTED_MESSAGE)
DISRUPTION = Disruption("run-train-1-abc", "node-cpu-1", "EvictionByEvictionAPI", "Eviction API: evicting")


def training(**changes: Any) -> SpeedrunJobStatus:
    status, _ = next_status(SpeedrunJobStatus(), replace(SEEN, train=RUNNING))
    return status.model_copy(update=changes)


def test_a_disruption_restarts_the_gang_without_counting_a_restart() -> None:
    before = training(progress=Progress(step=40, total_steps=100, tokens_per_second=1e4, mfu=0.3, eta_seconds=9.0))
    status, event = next_status(before, replace(SEEN, now=T1, train=EVICTED, disruption=DISRUPTION))
    assert (status.phase, status.restarts, status.disruptions, status.attempt) == ("Pending", 0, 1, 1)
    cond = C.find(status.conditions, C.TRAINING)
    assert cond is not None and (cond.status, cond.reason) == ("False", "Disrupted")
    words = "pod run-train-1-abc on node node-cpu-1 was evicted (Eviction API) (DisruptionTarget: EvictionByEvictionAPI"
    assert words in cond.message and "not counted in runPolicy.maxRestarts" in cond.message
    assert event is not None and (event.type, event.reason) == ("Warning", "GangRestartAfterDisruption")
    assert event.message == cond.message
    # The last scrape's step stays (dated), its rates go: nothing trains until the next attempt runs.
    assert status.progress == Progress(step=40, total_steps=100)
    # The next attempt starts normally: the condition still says why; it trains again once all run.
    for train in (JobState("Replacing"), JobState("Pending"), JobState("Running", ready=1)):
        status, event = next_status(status, replace(SEEN, now=T1, train=train))
        assert (status.phase, C.find(status.conditions, C.TRAINING).reason, event) == ("Pending", "Disrupted", None)
    status, event = next_status(status, replace(SEEN, now=T2, train=RUNNING))
    assert status.phase == "Training" and event is not None and event.reason == "Running"
    # maxDisruptions is 1: a second disruption fails the run, saying so.
    failed, event = next_status(status, replace(SEEN, now=T2, train=EVICTED, disruption=DISRUPTION))
    assert (failed.phase, failed.restarts, failed.disruptions) == ("Failed", 0, 1)
    assert event is not None and event.reason == "MaxDisruptionsExceeded"
    assert "disrupted 2 times and runPolicy.maxDisruptions is 1; last: pod run-train-1-abc" in event.message


def test_the_invalid_config_exit_is_final_even_with_a_disruption_in_view() -> None:
    config = JobState("Failed", "PodFailurePolicy", "Container trainer for pod ns/p failed with exit code 2 ...")
    assert find_disruption(config.reason, config.message, [pod("p-1", disrupted="PreemptionByScheduler")]) is None
    status, _ = next_status(training(), replace(SEEN, train=config))
    assert (status.phase, C.find(status.conditions, C.FAILED).reason) == ("Failed", "InvalidConfig")


def test_a_failure_after_all_ranks_joined_is_counted_a_failure_before_is_not() -> None:
    joined, event = next_status(training(), replace(SEEN, now=T1, train=CRASH, failure_detail="pod p exited 1: oom"))
    assert (joined.phase, C.find(joined.conditions, C.FAILED).reason) == ("Failed", "MaxRestartsExceeded")
    # Pending (not all ranks ever ran together): not counted, and the deadline keeps running from
    # the failed attempt's start, across attempts.
    starting, _ = next_status(SpeedrunJobStatus(), SEEN)
    early = replace(SEEN, now=T1, train=CRASH, failure_detail="pod p exited 1: rendezvous timed out", train_started=T0)
    status, event = next_status(starting, early)
    assert (status.phase, status.restarts, status.disruptions, status.attempt) == ("Pending", 0, 0, 1)
    assert status.startup_start_time == T0
    assert event is not None and (event.type, event.reason) == ("Warning", "GangRestartBeforeStart")
    assert "attempt 0 failed before all 2 nodes joined" in event.message and "rendezvous timed out" in event.message
    assert C.find(status.conditions, C.TRAINING).reason == "FailedBeforeStart"
    again, _ = next_status(status, replace(early, now=T2, train_started=T1))
    assert (again.attempt, again.restarts, again.startup_start_time) == (2, 0, T0)  # the first attempt's start
    # Past the deadline (the handlers measure it from startupStartTime), the next early failure ends the run.
    overdue = replace(early, now=T2, startup_failure="the training pods did not all start within 60 s")
    done, event = next_status(again, overdue)
    assert (done.phase, done.restarts, C.find(done.conditions, C.FAILED).reason) == (
        "Failed", 0, "StartupDeadlineExceeded",
    )  # fmt: skip
    assert event is not None and "rendezvous timed out" in event.message
    # Once an attempt's ranks all run, the next start-up has its own deadline again.
    trained, _ = next_status(again, replace(SEEN, now=T2, train=RUNNING))
    assert trained.startup_start_time is None and trained.phase == "Training"


def test_a_second_attempt_shows_its_own_reason_and_fails_at_its_own_deadline() -> None:
    seen = replace(SEEN, max_restarts=3)
    restarted, _ = next_status(training(), replace(seen, now=T1, train=CRASH))
    assert (restarted.phase, restarted.restarts) == ("Pending", 1)
    unschedulable = PodsWaiting("Unschedulable", "pod run-train-0: 0/3 nodes are available", True)
    shown, event = next_status(restarted, replace(seen, now=T1, train=JobState("Pending"), waiting=unschedulable))
    cond = C.find(shown.conditions, C.TRAINING)
    assert (shown.phase, cond.status, cond.reason) == ("Pending", "False", "Unschedulable")
    assert event is not None and (event.type, event.reason) == ("Warning", "Unschedulable")
    assert "0 of 2 training pods ready; Unschedulable: pod run-train-0" in cond.message
    late = replace(seen, now=T2, train=JobState("Pending"), waiting=unschedulable, startup_failure="not within 60 s")
    failed, event = next_status(shown, late)
    assert (failed.phase, C.find(failed.conditions, C.FAILED).reason) == ("Failed", "StartupDeadlineExceeded")
    assert event is not None and event.type == "Warning"


def test_a_status_written_before_attempts_were_kept_restarts_from_its_restarts() -> None:
    old = training(restarts=2)  # no attempt field: the Job of attempt 2 runs
    assert old.current_attempt == 2
    status, _ = next_status(old, replace(SEEN, max_restarts=5, now=T1, train=CRASH))
    assert (status.restarts, status.attempt) == (3, 3)


def pod(name: str, disrupted: str = "", node: str = "node-a", uid: str = "u1") -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "False"}]
    if disrupted:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": disrupted, "message": "m"})
    labels = {"batch.kubernetes.io/controller-uid": uid}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node},
        "status": {"conditions": conditions},
    }


@pytest.mark.parametrize(
    ("reason", "message", "pods", "expected"),
    [
        ("BackoffLimitExceeded", "", [pod("a"), pod("b")], None),
        ("BackoffLimitExceeded", "", [pod("a"), pod("b", "PreemptionByScheduler")],
         Disruption("b", "node-a", "PreemptionByScheduler", "m")),
        ("PodFailurePolicy", "Pod ns/b has condition DisruptionTarget matching FailJob rule at index 1",
         [pod("b", "DeletionByTaintManager")], Disruption("b", "node-a", "DeletionByTaintManager", "m")),
        ("PodFailurePolicy", "Pod ns/gone-1 has condition DisruptionTarget matching FailJob rule at index 1",
         [pod("a")], Disruption("gone-1")),  # the pod is already gone: named, its node from its Events
        ("DeadlineExceeded", "", [pod("a", "TerminationByKubelet")],
         Disruption("a", "node-a", "TerminationByKubelet", "m")),
    ],
)  # fmt: skip
def test_find_disruption(reason: str, message: str, pods: list[dict[str, Any]], expected: Disruption | None) -> None:
    assert find_disruption(reason, message, pods) == expected


def test_the_attempts_pods_and_a_gone_pods_node() -> None:
    job = {"metadata": {"uid": "u2"}}
    assert [p["metadata"]["name"] for p in job_pods(job, [pod("old", uid="u1"), pod("new", uid="u2")])] == ["new"]
    events = [{"reason": "Scheduled", "message": "Successfully assigned ns/p to node-cpu-1", "source": {}},
              {"reason": "Killing", "source": {"component": "kubelet", "host": "node-cpu-0"}}]  # fmt: skip
    assert node_of(events) == "node-cpu-1" and node_of(events[1:]) == "node-cpu-0" and node_of([]) == ""
    assert Disruption("p").describe() == "pod p was disrupted (DisruptionTarget)"
    assert "was preempted by the scheduler" in Disruption("p", "n", "PreemptionByScheduler").describe()


def test_the_startup_deadline_counts_from_the_first_early_failed_attempt() -> None:
    job = {"spec": {}, "status": {"startTime": T1}}
    assert not startup_overdue(job, 90, T2)  # 60 s since this attempt started
    assert startup_overdue(job, 90, T2, since=T0)  # 120 s since the first attempt started
    assert not startup_overdue({"spec": {"suspend": True}, "status": {"startTime": T1}}, 10, T2, since=T0)
    # Stopping this attempt: its activeDeadlineSeconds becomes its own age when the deadline was earlier's.
    assert stop_patch(job, 90, T2) == {"spec": {"activeDeadlineSeconds": 60}}
    assert stop_patch(job, 30, T2) == {"spec": {"activeDeadlineSeconds": 30}}
    assert stop_patch(job, 90) == {"spec": {"activeDeadlineSeconds": 90}}


def test_the_training_job_fails_on_a_disruption_the_eval_job_ignores_it() -> None:
    job = parse_job(tiny_manifest(**{"spec.runPolicy.startupDeadlineSeconds": 1200}))
    train = builders.build_train_job(job, OperatorSettings(default_storage_uri="s3://bucket/runs"))["spec"][
        "podFailurePolicy"
    ]["rules"]
    evaluation = builders.build_eval_job(job, OperatorSettings(default_storage_uri="s3://bucket/runs"))["spec"][
        "podFailurePolicy"
    ]["rules"]
    disruption = [{"type": "DisruptionTarget", "status": "True"}]
    assert {"action": "FailJob", "onPodConditions": disruption} in train
    assert {"action": "Ignore", "onPodConditions": disruption} in evaluation
    assert train[0]["onExitCodes"]["values"] == [2]  # the invalid-config rule stays first (index 0)


@pytest.mark.parametrize(
    ("rendezvous", "deadline", "expected"), [(900, 3600, 3600), (1800, 600, 1800), (900, 900, 900)]
)
def test_the_agents_wait_at_least_the_startup_deadline(rendezvous: int, deadline: int, expected: int) -> None:
    policy = {"spec.runPolicy.rendezvousTimeoutSeconds": rendezvous, "spec.runPolicy.startupDeadlineSeconds": deadline}
    job = parse_job(tiny_manifest(**policy))
    assert rendezvous_conf(job) == f"join_timeout={expected},read_timeout={expected}"


def test_a_disrupted_pod_seen_while_it_went_is_remembered_once_it_is_gone() -> None:
    memo = Memo(size=2)
    memo.remember("ns", [pod("a"), pod("b", "EvictionByEvictionAPI", node="n1")])
    named = find_disruption("PodFailurePolicy", "Pod ns/b has condition DisruptionTarget matching FailJob", [])
    assert named == Disruption("b")  # gone from the list: only its name is left in the Job's message
    assert memo.recall("ns", named) == Disruption("b", "n1", "EvictionByEvictionAPI", "m")
    assert memo.recall("other", named) == named
    memo.remember("ns", [pod("c", "PreemptionByScheduler"), pod("d", "PreemptionByScheduler")])
    assert memo.recall("ns", named) == named  # bounded: the oldest is forgotten


def test_a_pod_whose_node_went_not_ready_is_a_disruption() -> None:
    running = pod("r", node="node-gone")
    running["status"]["phase"] = "Running"
    failed = pod("f")
    failed["status"]["phase"] = "Failed"
    events = [{"reason": "NodeNotReady", "involvedObject": {"name": n}} for n in ("r", "f")]
    found = lost_with_node([failed, running], events)
    assert found == Disruption("r", "node-gone", "NodeNotReady", "Node is not ready")
    assert "pod r on node node-gone was lost with its node (NotReady" in found.describe()
    assert lost_with_node([failed, running], events[1:]) is None  # only a finished pod was flagged
