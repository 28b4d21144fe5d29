"""The backoff of restarts before start: the wait before the next attempt after attempts that
failed before all their ranks joined (lifecycle.py decides with it, reconcile.py holds the Job back).

Such restarts are not counted against runPolicy.maxRestarts, so without a wait a crash that
repeats on every attempt (a bad image, an import error, a missing Secret) would create one Job,
and its pods, after another until the start-up deadline. As the Job controller backs off a
failing pod (pkg/controller/job: 10 s, doubled per failure in a row, capped), the n-th failure
before start in a row (`status.startupFailures`) waits `delay_seconds(n)`: the first none, the
second 10 s, then 20, 40, ... up to 300 s. The first goes at once because a single early failure
is most often a one-off (a rank that crashed while a peer still pulled its image, a rendezvous
race) that the next attempt survives, and a gang restart already pauses for the Foreground delete
of the failed attempt's pods; a crash that repeats shows itself at the second failure.

The wait never outlasts the start-up deadline (`startupStartTime` + runPolicy.startupDeadlineSeconds):
`status.nextAttemptTime` is capped there, and a run whose deadline passes while it waits fails
then, with StartupDeadlineExceeded, without creating another attempt. Everything is derived from
the status, so an operator restarted meanwhile holds the attempt back just as long.
"""

from __future__ import annotations

import datetime

from speedrun_api.status import SpeedrunJobStatus, parse_rfc3339, rfc3339

BASE_SECONDS = 10
MAX_SECONDS = 300


def delay_seconds(failures: int) -> int:
    """The wait before the next attempt after `failures` attempts in a row failed before start."""
    if failures <= 1:
        return 0
    return min(MAX_SECONDS, BASE_SECONDS * 2 ** min(failures - 2, 16))


def next_attempt(now: str, failures: int, since: str, deadline_seconds: int) -> tuple[str | None, bool]:
    """(status.nextAttemptTime, whether the start-up deadline cut the wait short): None when the
    next attempt may start at once."""
    delay = delay_seconds(failures)
    if delay == 0:
        return None, False
    wanted, deadline = parse_rfc3339(now) + datetime.timedelta(seconds=delay), parse_rfc3339(since)
    deadline += datetime.timedelta(seconds=deadline_seconds)
    return rfc3339(min(wanted, deadline)), deadline < wanted


def seconds_between(earlier: str, later: str) -> int:
    return int((parse_rfc3339(later) - parse_rfc3339(earlier)).total_seconds())


def deadline_passed(status: SpeedrunJobStatus, deadline_seconds: int, now: str) -> bool:
    """The start-up deadline ended while the next attempt waited: the run fails, no attempt starts."""
    since, waiting = status.startup_start_time, status.next_attempt_time is not None
    return waiting and since is not None and seconds_between(since, now) >= deadline_seconds


def holds_back(status: SpeedrunJobStatus, deadline_seconds: int, now: str) -> bool:
    """The next attempt's training Job must not be created yet: its wait has not ended, or the
    start-up deadline has (the run fails instead)."""
    after = status.next_attempt_time
    return after is not None and (seconds_between(now, after) > 0 or deadline_passed(status, deadline_seconds, now))


def seconds_left(status: SpeedrunJobStatus, now: datetime.datetime | None = None) -> float:
    """Seconds until status.nextAttemptTime (0 if unset or past), on the clock, not to the second."""
    if status.next_attempt_time is None:
        return 0.0
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return max(0.0, (parse_rfc3339(status.next_attempt_time) - now).total_seconds())


def describe(now: str, failures: int, after: str | None, cut_short: bool) -> str:
    """When the next attempt starts, for the Training condition's message and the Event."""
    if after is None:
        return "next attempt now"
    wait = f"in {seconds_between(now, after)} s, at {after}"
    if cut_short:
        return (
            f"no next attempt: runPolicy.startupDeadlineSeconds ends {wait}, before the {delay_seconds(failures)} s "
            f"wait after {failures} failures before start in a row would"
        )
    return f"next attempt {wait} ({failures} failures before start in a row: the wait doubles, up to {MAX_SECONDS} s)"
