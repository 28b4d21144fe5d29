"""Unit tests of the API client's retries and deadline (kube_retry.py, kube.KubeClient._call).

The client's `_send` is replaced by a script of answers and its clock and sleep by variables, so
what is sent, with which timeout, and how long the client waits are read without a server or a
wall clock. The real apiserver behind a proxy that answers 429 is tests/cluster/test_leader_partition.py.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from speedrun_operator import kube
from speedrun_operator.kube_retry import RetryPolicy, attempt_timeout, parse_retry_after

POLICY = RetryPolicy()


def test_429_and_5xx_are_retried_other_errors_are_final() -> None:
    assert POLICY.delay(1, "POST", 429, 3.0) == 3.0  # throttled: nothing landed, any verb
    assert POLICY.delay(1, "PATCH", 503, None) is not None
    assert POLICY.delay(1, "POST", 500, None) is not None  # may have landed: the retry gets 409
    assert POLICY.delay(1, "GET", 501, 2.0) == 2.0  # any 5xx that asks to be retried
    assert POLICY.delay(1, "POST", 503, None, may_duplicate=True) is None  # generateName: a second Event
    assert POLICY.delay(1, "POST", 429, 1.0, may_duplicate=True) == 1.0  # throttled: it did not land
    for status in (400, 401, 403, 404, 409, 422, 501):
        assert POLICY.delay(1, "GET", status, None) is None, status


def test_transport_errors_retry_only_a_get_that_did_not_time_out() -> None:
    assert POLICY.delay(1, "GET", 0, None, refused_or_reset=True) is not None
    assert POLICY.delay(1, "GET", 0, None, refused_or_reset=False) is None  # timed out: time spent
    assert POLICY.delay(1, "PATCH", 0, None, refused_or_reset=True) is None  # may have landed


def test_retries_stop_after_ten_attempts_and_backoff_is_capped() -> None:
    assert POLICY.delay(9, "GET", 503, None) is not None
    assert POLICY.delay(10, "GET", 503, None) is None  # client-go's maxRetries = 10
    delays = [POLICY.delay(n, "GET", 503, None) for n in range(1, 10)]
    assert all(d is not None and d <= POLICY.max_delay * 1.2 for d in delays)
    assert delays[0] < delays[3]  # 0.25 s doubling (with +-20 % jitter)
    assert POLICY.delay(1, "GET", 429, POLICY.max_wait + 1) is None  # a longer wait is not blocked on


def test_retry_after_as_seconds_or_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after(date, now=1_000_100.0) == 0.0


def test_an_attempt_never_outlives_the_deadline() -> None:
    assert attempt_timeout(30.0, None, 5.0) == 30.0
    assert attempt_timeout(30.0, math.inf, 5.0) == 30.0
    assert attempt_timeout(30.0, -math.inf, 5.0) <= 0  # leadership lost: nothing is sent
    assert attempt_timeout(30.0, 13.0, 5.0) == 8.0
    assert attempt_timeout(30.0, 4.0, 5.0) == -1.0


class Scripted(kube.KubeClient):
    """A KubeClient whose requests get scripted answers: bytes, or an exception to raise."""

    def __init__(self, answers: list[Any]) -> None:
        config = kubernetes.client.Configuration()
        config.host = "https://127.0.0.1:1"
        self.now = 100.0
        super().__init__(config, clock=lambda: self.now, sleep=self._sleep)
        self.answers: Iterator[Any] = iter(answers)
        self.sent: list[tuple[str, float, float]] = []  # (method, at, timeout)
        self.slept: list[float] = []

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def _send(self, method: str, path: str, body: Any, query: Any, headers: Any, timeout: float) -> bytes:
        self.sent.append((method, self.now, timeout))
        answer = next(self.answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def api_error(status: int, retry_after: str | None = None) -> ApiException:
    err = ApiException(status=status, reason="x")
    err.body = '{"reason": "TooManyRequests", "message": "slow down"}'
    err.headers = {"Retry-After": retry_after} if retry_after else {}
    return err


def test_the_client_waits_as_told_then_succeeds() -> None:
    client = Scripted([api_error(429, "2"), api_error(503), b'{"metadata": {"name": "a"}}'])
    assert client.create(kube.CONFIGMAP, "ns", {"metadata": {"name": "a"}}) == {"metadata": {"name": "a"}}
    assert [m for m, _, _ in client.sent] == ["POST"] * 3
    assert client.slept[0] == 2.0 and client.sent[1][1] - client.sent[0][1] == 2.0


def test_a_create_by_generate_name_is_not_sent_again_after_a_5xx() -> None:
    client = Scripted([api_error(503), b"{}"])
    with pytest.raises(kube.KubeError):
        client.create(kube.EVENT, "ns", {"metadata": {"generateName": "job."}})
    assert len(client.sent) == 1


def test_a_final_error_is_raised_as_its_kube_error() -> None:
    client = Scripted([api_error(404)])
    assert client.get(kube.POD, "ns", "gone") is None
    client = Scripted([urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")])
    with pytest.raises(kube.Unreachable):
        client.patch(kube.POD, "ns", "p", {})
    assert len(client.sent) == 1


def test_nothing_is_sent_past_the_deadline_and_no_attempt_outlives_it() -> None:
    client = Scripted([api_error(429, "2"), api_error(429, "2"), b"{}"])
    client.deadline = lambda: 103.0
    with pytest.raises(kube.KubeError) as raised:
        client.get(kube.POD, "ns", "p")
    # Each attempt's timeout ends at the deadline; a wait that would pass it is not made.
    assert [(at, timeout) for _, at, timeout in client.sent] == [(100.0, 3.0), (102.0, 1.0)]
    assert raised.value.status == 429
    client = Scripted([b"{}"])
    client.deadline = lambda: 99.0
    with pytest.raises(kube.PastDeadline):
        client.patch(kube.SPEEDRUNJOB, "ns", "j", {"status": {}}, subresource="status")
    assert client.sent == []
    # A replica that lost its Lease (leader.py sets the deadline to -inf) sends nothing at all.
    client = Scripted([b"{}"])
    client.deadline = lambda: -math.inf
    with pytest.raises(kube.PastDeadline):
        client.patch(kube.SPEEDRUNJOB, "ns", "j", {"status": {}}, subresource="status")
    assert client.sent == []
