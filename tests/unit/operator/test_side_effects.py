"""What a status owes its Jobs (operator/speedrun_operator/handlers/side_effects.py): only the
patches still missing, so that every pass can send them again until the Jobs show them."""

from __future__ import annotations

from typing import Any

import pytest

from speedrun_api.status import SpeedrunJobStatus
from speedrun_operator import conditions as C
from speedrun_operator.handlers import side_effects

NOW = "2026-01-01T00:00:00Z"


def status(phase: str, failed: str | None = None, trained: bool = False) -> SpeedrunJobStatus:
    conditions = []
    if failed:
        conditions = C.set_condition(conditions, C.FAILED, C.TRUE, failed, "", NOW, 1)
    if trained:
        conditions = C.set_condition(conditions, C.TRAINING, C.FALSE, C.REASON_TRAINING_SUCCEEDED, "", NOW, 1)
    return SpeedrunJobStatus(phase=phase, conditions=conditions)


def job(name: str, end: str | None = None, **spec: Any) -> dict[str, Any]:
    conditions = [{"type": end, "status": "True"}] if end else []
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec, "status": {"conditions": conditions}}


STARTUP = status("Failed", C.REASON_STARTUP_DEADLINE)


@pytest.mark.parametrize(
    ("name", "st", "train", "evaluation", "ttl", "want"),
    [
        ("start-up failure: stop with the TTL", STARTUP, job("t"), None, 60,
         [("t", {"activeDeadlineSeconds": 30, "ttlSecondsAfterFinished": 60})]),
        ("start-up failure, no TTL asked: stop only", STARTUP, job("t"), None, None,
         [("t", {"activeDeadlineSeconds": 30})]),
        ("start-up failure already stopped, now Failed: TTL only", STARTUP,
         job("t", "Failed", activeDeadlineSeconds=30), None, 60, [("t", {"ttlSecondsAfterFinished": 60})]),
        ("everything holds: nothing", STARTUP,
         job("t", "Failed", activeDeadlineSeconds=30, ttlSecondsAfterFinished=60), None, 60, []),
        ("training failed: its TTL", status("Failed", C.REASON_DEADLINE), job("t", "Failed"), None, 60,
         [("t", {"ttlSecondsAfterFinished": 60})]),
        ("evaluating: the training Job's TTL, not the running eval's", status("Evaluating", trained=True),
         job("t", "Complete"), job("e"), 60, [("t", {"ttlSecondsAfterFinished": 60})]),
        ("succeeded: both", status("Succeeded", trained=True), job("t", "Complete"), job("e", "Complete"), 60,
         [("t", {"ttlSecondsAfterFinished": 60}), ("e", {"ttlSecondsAfterFinished": 60})]),
        ("training: nothing recorded yet", status("Training"), job("t"), None, 60, []),
        ("only the start-up deadline stops a running Job", status("Failed", C.REASON_CHILD_REJECTED), job("t"),
         None, 60, []),
    ],
)  # fmt: skip
def test_owed(name: str, st: SpeedrunJobStatus, train: Any, evaluation: Any, ttl: int | None, want: list) -> None:
    acts = side_effects.owed(st, train, evaluation, ttl, startup_deadline=30)
    assert [(j["metadata"]["name"], p["spec"]) for j, p in acts] == want, name


def test_a_job_being_deleted_is_owed_nothing() -> None:
    going = job("t", "Failed")
    going["metadata"]["deletionTimestamp"] = NOW
    assert side_effects.owed(STARTUP, going, None, 60, 30) == []


def test_run_policy_is_read_from_the_raw_body_with_the_defaults() -> None:
    assert side_effects.run_policy({"spec": {"runPolicy": {"ttlSecondsAfterFinished": 5}}}) == (5, 3600)
    assert side_effects.run_policy({"spec": "not a mapping"}) == (None, 3600)


class _Client:
    def __init__(self, refuse: bool) -> None:
        self.refuse, self.patches = refuse, []

    def patch(self, kind, namespace, name, patch, subresource=None):
        if self.refuse:
            raise side_effects.kube.KubeError(422, "Invalid", "denied by a policy")
        self.patches.append((name, patch))


def test_a_refused_patch_is_logged_not_raised_and_owed_again() -> None:
    acts = side_effects.owed(STARTUP, job("t"), None, 60, 30)
    assert side_effects.hold(_Client(refuse=True), acts) == 0  # the caller's pass goes on
    client = _Client(refuse=False)
    assert side_effects.hold(client, side_effects.owed(STARTUP, job("t"), None, 60, 30)) == 1
    assert client.patches == [("t", {"spec": {"activeDeadlineSeconds": 30, "ttlSecondsAfterFinished": 60}})]
