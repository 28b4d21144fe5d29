"""Unit tests of the Lease elector (operator/speedrun_operator/leader.py) against a fake API.

The fake keeps one Lease with a resourceVersion and answers 409 to a stale write, as the
apiserver does; the clock is a variable, so expiry is decided without sleeping. The real
apiserver and two real replicas are tests/cluster/test_ha.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from speedrun_operator import kube
from speedrun_operator.leader import LEASE, LeaderElector, LeaseTimings, StandbyHealth


class FakeLeases:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def get(self, kind: kube.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def create(self, kind: kube.Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise kube.Conflict(409, "AlreadyExists", "exists")
        self.version += 1
        self.lease = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return copy.deepcopy(self.lease)

    def patch(self, kind: kube.Kind, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if patch["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise kube.Conflict(409, "Conflict", "the object has been modified")
        self.version += 1
        for key, value in patch["spec"].items():
            if value is None:
                self.lease["spec"].pop(key, None)
            else:
                self.lease["spec"][key] = value
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


TIMINGS = LeaseTimings(duration=15, renew_deadline=10, retry_period=2)


def elector(api: FakeLeases, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(api, "ns", "speedrun-operator", identity, TIMINGS, clock=clock)  # type: ignore[arg-type]


def test_first_replica_takes_the_lease_the_second_waits() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a_1", clock), elector(api, "b_1", clock)
    assert a.try_acquire_or_renew() and api.lease["spec"]["holderIdentity"] == "a_1"
    assert api.lease["spec"]["leaseTransitions"] == 0 and api.lease["spec"]["leaseDurationSeconds"] == 15
    assert not b.try_acquire_or_renew() and b.holder == "a_1"
    clock.now += 14  # a renews in time: b keeps waiting however long it has watched
    assert a.try_acquire_or_renew()
    clock.now += 14
    assert not b.try_acquire_or_renew()


def test_a_silent_holder_is_replaced_after_the_lease_duration_of_the_standbys_own_clock() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a_1", clock), elector(api, "b_1", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b first sees the record now
    clock.now += 14.9
    assert not b.try_acquire_or_renew()
    clock.now += 0.2
    assert b.try_acquire_or_renew() and api.lease["spec"]["holderIdentity"] == "b_1"
    assert api.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew() and a.holder == "b_1"  # the old holder sees it lost


def test_of_two_racing_standbys_exactly_one_wins() -> None:
    api, clock = FakeLeases(), Clock()
    a = elector(api, "a_1", clock)
    assert a.try_acquire_or_renew()
    b, c = elector(api, "b_1", clock), elector(api, "c_1", clock)
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.now += 16  # both have watched the record for longer than its duration
    stale = api.get(LEASE, "ns", "speedrun-operator")
    assert b.try_acquire_or_renew()
    api.get = lambda *_: copy.deepcopy(stale)  # type: ignore[method-assign]  # c read before b wrote
    assert not c.try_acquire_or_renew()
    assert api.lease["spec"]["holderIdentity"] == "b_1"


def test_release_empties_the_holder_so_a_standby_takes_over_at_once() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a_1", clock), elector(api, "b_1", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert "holderIdentity" not in api.lease["spec"]
    assert b.try_acquire_or_renew() and api.lease["spec"]["holderIdentity"] == "b_1"


def test_standby_health_answers_the_liveness_path_only() -> None:
    import urllib.error
    import urllib.request

    from speedrun_trainer.cli.launch import free_port

    port = free_port()
    health = StandbyHealth(f"http://127.0.0.1:{port}/healthz")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200 and response.read() == b"standby\n"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    finally:
        health.close()


# -- the renew deadline (client-go's renew loop: no call outlives it; OnStoppedLeading at it)


def test_the_deadline_counts_from_the_start_of_the_last_successful_attempt() -> None:
    api, clock = FakeLeases(), Clock()
    a = elector(api, "a_1", clock)
    assert a.deadline() == float("-inf")  # not held: the client would send nothing
    slow_get = api.get

    def get(*args: Any) -> dict[str, Any] | None:
        clock.now += 7  # the renewal's request takes 7 s
        return slow_get(*args)

    api.get = get  # type: ignore[method-assign]
    assert a.try_acquire_or_renew()
    # The apiserver stored a renewTime no earlier than the attempt's start: a standby may take over
    # 15 s after that, so the holder must stop 10 s after it, not 10 s after the answer came back.
    assert a.deadline() == 100.0 + TIMINGS.renew_deadline
    api.get = slow_get  # type: ignore[method-assign]
    b = elector(api, "b_1", clock)
    assert not b.try_acquire_or_renew()
    clock.now += 16
    assert b.try_acquire_or_renew()
    assert not a.try_acquire_or_renew() and a.deadline() == float("-inf")


def test_leadership_ends_at_the_deadline_while_a_renewal_hangs() -> None:
    import threading
    import time

    api = FakeLeases()
    timings = LeaseTimings(duration=3.0, renew_deadline=0.5, retry_period=0.1)
    a = LeaderElector(api, "ns", "speedrun-operator", "a_1", timings)  # type: ignore[arg-type]
    acquired_at = time.monotonic()
    assert a.try_acquire_or_renew()
    hang, returned = threading.Event(), threading.Event()
    real_get = api.get

    def hanging_get(*args: Any) -> dict[str, Any] | None:
        hang.wait(60)
        returned.set()
        return real_get(*args)

    api.get = hanging_get  # type: ignore[method-assign]
    lost: list[tuple[str, float]] = []
    stopped = threading.Event()
    a.start_renewing(lambda reason: (lost.append((reason, time.monotonic())), stopped.set()))
    try:
        assert stopped.wait(30), "on_lost never called"
        assert not returned.is_set(), "leadership ended only after the hanging call returned"
        assert lost[0][1] - acquired_at >= timings.renew_deadline and "no renewal within 0.5 s" in lost[0][0]
        assert a.deadline() == float("-inf")  # the client's gate is shut
    finally:
        hang.set()
        a.release()
    assert len(lost) == 1


def test_the_standby_loop_survives_any_error_of_an_attempt(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import urllib3.exceptions

    from speedrun_operator.handlers.operator_startup import _attempt

    api, clock = FakeLeases(), Clock()
    b = elector(api, "b_1", clock)
    for err in (urllib3.exceptions.ReadTimeoutError(None, "/", "timed out"), ConnectionResetError(104, "reset"),
                kube.Unreachable(0, "x", "y"), KeyError("spec")):  # fmt: skip

        def fail(*_: Any, err: Exception = err) -> None:
            raise err

        api.get = fail  # type: ignore[method-assign]
        assert _attempt(b, logging.getLogger("test")) is False
    assert "ReadTimeoutError" in caplog.text


def test_a_retried_start_up_keeps_its_client_and_metrics_port(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    import kopf

    from speedrun_operator.handlers import operator_startup
    from speedrun_trainer.cli.launch import free_port

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("SPEEDRUN_OPERATOR_METRICS_PORT", str(free_port()))
    memo = kopf.Memo()
    first = operator_startup.configure(kopf.OperatorSettings(), memo, logging.getLogger("test"))
    try:
        # kopf runs a failed startup handler again: the port is bound already, the context reused
        again = operator_startup.configure(kopf.OperatorSettings(), memo, logging.getLogger("test"))
        assert again is first
    finally:
        operator_startup.shutdown(memo)
