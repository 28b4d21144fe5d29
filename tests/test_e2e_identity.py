"""E2E: delete-and-recreate with a new spec on the same storage (what the operator tells users to
do after a spec edit) fails at once with a clear message instead of "resuming" the old run,
training nothing and publishing the new spec with the old numbers (issue 15).

Run: `pytest -m e2e tests/test_e2e_identity.py`.
"""

from __future__ import annotations

import pytest

from tests.e2e_fixtures import E2E, STEP_TIMEOUT, e2e, speedrun_manifest  # noqa: F401 - e2e is a fixture
from tests.kube_emulator import wait_for
from tests.operator_fixtures import NAMESPACE, SRJ

pytestmark = pytest.mark.e2e


def test_a_new_spec_on_an_old_runs_storage_fails_and_publishes_nothing(e2e: E2E) -> None:  # noqa: F811
    e2e.apply(speedrun_manifest("reuse", e2e.bucket, steps=20, checkpoint_every=10))
    e2e.follow("reuse", "Succeeded", timeout=3 * STEP_TIMEOUT)  # pods starting, training, evaluating
    published = e2e.read_json("reuse/speedrun_results.json")

    e2e.cluster.delete(*SRJ, NAMESPACE, "reuse")
    wait_for(lambda: e2e.runs.get("reuse") is None, what="the SpeedrunJob gone")
    wait_for(lambda: e2e.children("reuse")["jobs"] == [], what="its Jobs gone")

    changed = speedrun_manifest("reuse", e2e.bucket, steps=20, checkpoint_every=10,
                                **{"spec.train.optimizer.learningRate": 0.01})
    e2e.apply(changed)
    e2e.follow("reuse", "Failed", timeout=2 * STEP_TIMEOUT)
    failed = e2e.runs.condition("reuse", "Failed")
    assert failed["reason"] == "InvalidConfig", failed
    assert "holds a run of another spec" in failed["message"], failed
    assert "spec.train.optimizer.learningRate" in failed["message"], failed
    assert e2e.runs.children("reuse")["jobs"] == ["reuse-train"]  # no eval Job: nothing published
    assert e2e.read_json("reuse/speedrun_results.json") == published
