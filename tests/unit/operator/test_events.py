"""Events about a SpeedrunJob (operator/speedrun_operator/events.py): the object posted, and a
refused post that is logged and never breaks the reconcile. The real apiserver's acceptance of
these Events is what the control-plane tests read back (tests/cluster/test_pending.py ...)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from speedrun_operator import events, kube

BODY = {
    "apiVersion": "speedrun.dev/v1alpha1",
    "kind": "SpeedrunJob",
    "metadata": {"name": "run", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"},
}


class Recorder:
    def __init__(self, refuse: bool = False) -> None:
        self.created: list[tuple[kube.Kind, str | None, dict[str, Any]]] = []
        self.refuse = refuse

    def create(self, kind: kube.Kind, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        if self.refuse:
            raise kube.KubeError(403, "Forbidden", "events is forbidden")
        self.created.append((kind, namespace, body))
        return body


def test_an_event_names_the_speedrunjob_and_the_reporter() -> None:
    event = events.build(BODY, "Warning", "StartupDeadlineExceeded", "too slow", "op-0", "2026-12-01T00:00:00Z")
    assert event["involvedObject"] == {"apiVersion": "speedrun.dev/v1alpha1", "kind": "SpeedrunJob", "name": "run",
                                       "namespace": "ns", "uid": "u-1", "resourceVersion": "7"}  # fmt: skip
    assert event["metadata"] == {"generateName": "run.", "namespace": "ns"}
    assert (event["type"], event["reason"], event["message"], event["count"]) == (
        "Warning", "StartupDeadlineExceeded", "too slow", 1)  # fmt: skip
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-12-01T00:00:00Z"
    assert event["source"] == {"component": "speedrun-operator"} and event["reportingInstance"] == "op-0"


def test_long_messages_and_instances_are_cut_to_the_apiservers_limits() -> None:
    event = events.build(BODY, "Normal", "Running", "x" * 5000, "i" * 300, "2026-12-01T00:00:00Z")
    assert len(event["message"]) == events.MAX_MESSAGE and event["message"].endswith("...")
    assert len(event["reportingInstance"]) == events.MAX_INSTANCE


def test_post_creates_one_event_in_the_jobs_namespace() -> None:
    client = Recorder()
    events.post(client, BODY, "Normal", "Running", "2 training pods ready")  # type: ignore[arg-type]
    [(kind, namespace, event)] = client.created
    assert kind == kube.EVENT and namespace == "ns" and event["reason"] == "Running"


def test_a_refused_post_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="speedrun_operator.events"):
        events.post(Recorder(refuse=True), BODY, "Warning", "GangRestart", "restart 1")  # type: ignore[arg-type]
    assert "[ns/run] event GangRestart not posted: 403 Forbidden" in caplog.text
