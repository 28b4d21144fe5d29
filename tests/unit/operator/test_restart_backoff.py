"""The backoff of restarts before start (restart_backoff.py, lifecycle.py `_restart`, the handlers'
wake-ups, wakeups.py): attempts that keep failing before all ranks joined wait longer and longer
before the next one, and the start-up deadline still ends the run on time. Table tests, no API server."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import pytest

from speedrun_api.status import SpeedrunJobStatus
from speedrun_operator import conditions as C
from speedrun_operator import restart_backoff as B
from speedrun_operator.disruptions import Disruption
from speedrun_operator.handlers.wakeups import Wakeups
from speedrun_operator.lifecycle import JobState, Observation, next_status

T0 = "2026-01-01T00:00:00Z"
SEEN = Observation(generation=1, nodes="2", now=T0, max_restarts=3, min_ready=2, startup_deadline=3600)
CRASH = JobState("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
PENDING, RUNNING = JobState("Pending"), JobState("Running", ready=2)


def at(seconds: int) -> str:
    return f"2026-01-01T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0), (1, 0), (2, 10), (3, 20), (4, 40), (5, 80), (6, 160), (7, 300), (8, 300), (99, 300)]
)
def test_the_wait_doubles_from_the_second_failure_in_a_row_up_to_300_s(failures: int, delay: int) -> None:
    assert B.delay_seconds(failures) == delay


@pytest.mark.parametrize(
    ("now", "failures", "since", "deadline", "expected"),
    [
        (at(30), 1, T0, 3600, (None, False)),  # the first goes at once
        (at(30), 2, T0, 3600, (at(40), False)),
        (at(100), 4, T0, 3600, (at(140), False)),
        (at(100), 4, T0, 120, (at(120), True)),  # cut short by the start-up deadline
        (at(100), 4, T0, 140, (at(140), False)),  # the deadline ends just as the wait does
    ],
)
def test_the_next_attempt_time_never_passes_the_startup_deadline(
    now: str, failures: int, since: str, deadline: int, expected: tuple[str | None, bool]
) -> None:
    assert B.next_attempt(now, failures, since, deadline) == expected


@pytest.mark.parametrize(
    ("next_attempt", "now", "deadline", "holds"),
    [
        (None, at(10), 3600, False),  # no wait: created at once
        (at(40), at(39), 3600, True),
        (at(40), at(40), 3600, False),  # the wait is over
        (at(40), at(41), 3600, False),
        (at(40), at(40), 40, True),  # the deadline ended with the wait: the run fails, no new Job
    ],
)
def test_the_handlers_hold_the_next_attempts_job_back(
    next_attempt: str | None, now: str, deadline: int, holds: bool
) -> None:
    status = SpeedrunJobStatus(startup_start_time=T0, next_attempt_time=next_attempt)
    assert B.holds_back(status, deadline, now) is holds


def early_failure(status: SpeedrunJobStatus, now: int, **changes: object) -> tuple[SpeedrunJobStatus, str]:
    """The current attempt fails at `now` before its ranks joined: the new status and the Event's message."""
    status, _ = next_status(status, replace(SEEN, now=at(now - 5), train=PENDING, train_started=at(now - 5)))
    failed, event = next_status(status, replace(SEEN, now=at(now), train=CRASH, failure_detail="import error",
                                                train_started=at(now - 5), **changes))  # fmt: skip
    assert event is not None and (event.type, event.reason) == ("Warning", "GangRestartBeforeStart")
    cond = C.find(failed.conditions, C.TRAINING)
    assert cond is not None and (cond.reason, cond.message) == ("FailedBeforeStart", event.message)
    return failed, event.message


def test_attempts_failing_before_start_wait_longer_each_time_and_say_when_the_next_starts() -> None:
    status, message = early_failure(SpeedrunJobStatus(), 5)
    assert (status.attempt, status.startup_failures, status.next_attempt_time) == (1, 1, None)
    assert "attempt 0 failed before all 2 nodes joined; next attempt now" in message and "import error" in message
    status, message = early_failure(status, 20)
    assert (status.attempt, status.startup_failures, status.next_attempt_time) == (2, 2, at(30))
    assert f"attempt 1 failed before all 2 nodes joined; next attempt in 10 s, at {at(30)}" in message
    assert "2 failures before start in a row" in message and "not counted in runPolicy.maxRestarts" in message
    # Waiting (the handlers create no Job: Missing): Pending, the condition keeps its words, no Event.
    waiting, event = next_status(status, replace(SEEN, now=at(25), train=JobState("Replacing")))
    waiting, event = next_status(waiting, replace(SEEN, now=at(26)))
    assert (waiting.phase, waiting.next_attempt_time, event) == ("Pending", at(30), None)
    assert C.find(waiting.conditions, C.TRAINING).message == message
    # The next attempt's Job exists: the wait is over; its failure waits twice as long.
    status, message = early_failure(waiting, 60)
    assert (status.attempt, status.startup_failures, status.next_attempt_time) == (3, 3, at(80))
    assert f"next attempt in 20 s, at {at(80)}" in message
    assert status.restarts == 0 and status.startup_start_time == at(0)
    # Once an attempt's ranks all run, the backoff starts over with the next failure before start.
    trained, _ = next_status(status, replace(SEEN, now=at(90), train=RUNNING))
    assert (trained.phase, trained.startup_start_time, trained.startup_failures, trained.next_attempt_time) == (
        "Training", None, None, None,
    )  # fmt: skip


def test_a_counted_restart_and_a_disruption_start_the_backoff_over() -> None:
    status = SpeedrunJobStatus(phase="Training", start_time=T0, startup_start_time=T0, startup_failures=4)
    restarted, _ = next_status(status, replace(SEEN, now=at(60), train=CRASH))
    assert (restarted.restarts, restarted.startup_failures, restarted.next_attempt_time) == (1, None, None)
    status = status.model_copy(update={"phase": "Pending", "start_time": None, "next_attempt_time": at(70)})
    evicted = replace(SEEN, now=at(60), train=CRASH, disruption=Disruption("p", "n", "EvictionByEvictionAPI"))
    disrupted, _ = next_status(status, evicted)
    assert (disrupted.disruptions, disrupted.startup_failures, disrupted.next_attempt_time) == (1, None, None)


def test_the_startup_deadline_ends_a_wait_on_time_with_its_usual_reason() -> None:
    seen = replace(SEEN, startup_deadline=120)
    status = SpeedrunJobStatus(phase="Pending", attempt=3, startup_start_time=T0, startup_failures=3)
    status, message = early_failure(status, 100, startup_deadline=120)  # a 40 s wait would pass the deadline
    assert (status.startup_failures, status.next_attempt_time) == (4, at(120))
    assert f"no next attempt: runPolicy.startupDeadlineSeconds ends in 20 s, at {at(120)}" in message
    still, _ = next_status(status, replace(seen, now=at(119)))  # no Job (held back)
    assert still.phase == "Pending"
    failed, event = next_status(still, replace(seen, now=at(120)))
    reason = C.find(failed.conditions, C.FAILED).reason
    assert (failed.phase, reason, failed.next_attempt_time) == ("Failed", "StartupDeadlineExceeded", None)
    assert failed.attempt == 4  # no attempt started after the wait
    assert event is not None and event.type == "Warning"
    assert "startupDeadlineSeconds (120 s): 0 of 2 ready" in event.message
    assert f"last failure: {message}" in event.message


def test_an_operator_restarted_meanwhile_waits_just_as_long() -> None:
    """Nothing but the status: the wait is read back from what was written."""
    status, _ = early_failure(SpeedrunJobStatus(attempt=1, startup_start_time=T0, startup_failures=1), 20)
    read_back = SpeedrunJobStatus.model_validate(status.wire())
    assert (read_back.startup_failures, read_back.next_attempt_time) == (2, at(30))
    assert "startupFailures" in status.wire() and "nextAttemptTime" in status.wire()
    assert B.holds_back(read_back, 3600, at(29)) and not B.holds_back(read_back, 3600, at(30))


def test_the_wakeups_reconcile_a_waiting_job_when_its_wait_ends() -> None:
    ran: list[tuple[str, str]] = []
    done = threading.Event()

    def run(namespace: str, name: str) -> None:
        ran.append((namespace, name))
        done.set()

    wakeups = Wakeups(run, logging.getLogger("test")).start()
    try:
        wakeups.after("ns", "late", 60)
        wakeups.after("ns", "soon", -1.0)  # already due: run after the slack
        wakeups.after("ns", "late", 120)  # a later ask does not postpone the earlier
        started = time.monotonic()
        assert done.wait(5)
        assert ran == [("ns", "soon")] and time.monotonic() - started >= 0.9
        assert set(wakeups.pending()) == {("ns", "late")}
        assert wakeups.pending()[("ns", "late")] - time.monotonic() < 62
    finally:
        wakeups.stop()
