"""E2E under faults: what a cluster does to a speedrun, done to real processes here.

- a training pod is SIGKILLed after a checkpoint: the Job replaces it, torchrun re-rendezvouses,
  training resumes from the checkpoint and ends at exactly the planned step;
- the operator stops and comes back mid-training: it adopts what exists, creates nothing twice,
  and the job completes;
- the first eval pod dies: the eval Job retries, results are published once;
- invalid manifests: rejected by the CRD at apply time, or Failed by the operator with a message
  that names the field, before anything runs; a config only the trainer can find invalid (exit
  code 2) fails the Job at once (the pods run `python -m speedrun_trainer.train.torchrun`, which keeps it).
Run: `pytest -m e2e tests/test_e2e_faults.py` (the fixtures are in tests/e2e_fixtures.py).
"""

from __future__ import annotations

import re

import pytest

from tests.e2e_fixtures import E2E, STEP_TIMEOUT, e2e, speedrun_manifest  # noqa: F401 - e2e is a fixture
from tests.kube_emulator import ApiError, wait_for
from tests.operator_fixtures import NAMESPACE, SRJ

pytestmark = pytest.mark.e2e

INDEX = "batch.kubernetes.io/job-completion-index"


def _terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def _running(e2e: E2E, job: str) -> list[dict]:  # noqa: F811
    return [p for p in e2e.kubelet.pods(job) if (p.get("status") or {}).get("phase") == "Running"]


def _meta_steps(e2e: E2E, name: str) -> list[int]:  # noqa: F811
    return [int(m[1]) for k in e2e.keys(f"{name}/checkpoints/") if (m := re.search(r"meta_(\d+)\.json$", k))]


def test_killed_training_pod_is_replaced_and_training_resumes_from_the_checkpoint(e2e: E2E) -> None:  # noqa: F811
    steps, every = 100, 20
    e2e.apply(speedrun_manifest("crash", e2e.bucket, steps=steps, checkpoint_every=every))
    wait_for(lambda: _meta_steps(e2e, "crash"), timeout=STEP_TIMEOUT, what="the first checkpoint")

    # The victim is index 0, which hosts the rendezvous store: index 1's agent loses the store and
    # fails too, so the Job replaces both. (Replacing only index 1 makes the surviving agent's
    # re-rendezvous hang for 60 s unless TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, the workaround of
    # https://github.com/pytorch/pytorch/issues/135712, which the training pods do not set yet.)
    [victim] = [p for p in e2e.kubelet.pods("crash-train") if p["metadata"]["labels"][INDEX] == "0"]
    e2e.kubelet.kill(victim["metadata"]["name"])
    saved_before_kill = _meta_steps(e2e, "crash")
    assert saved_before_kill[-1] < steps, "training finished before the kill: make it longer"

    e2e.follow("crash", "Evaluating")

    # Two failures within backoffLimit (runPolicy.maxRestarts 3): both indexes were replaced once.
    pods = e2e.kubelet.pods("crash-train")
    assert [(p["metadata"]["labels"][INDEX], p["status"]["phase"]) for p in pods] == [
        ("0", "Failed"),
        ("1", "Failed"),
        ("0", "Succeeded"),
        ("1", "Succeeded"),
    ]
    assert [_terminated(p)["exitCode"] for p in pods] == [137, 1, 0, 0]  # 137 = 128 + SIGKILL
    job = e2e.runs.job("crash-train")["status"]
    assert (job["failed"], job["succeeded"], job["completedIndexes"]) == (2, 2, "0-1")
    assert e2e.status("crash")["restarts"] == 2

    # Resumed from a checkpoint saved before the kill, and trained to exactly `steps`.
    logs = "\n".join(e2e.kubelet.log(p["metadata"]["name"]) for p in pods)
    resumed = [int(s) for s in re.findall(r"resumed from \S+/checkpoints/meta_\d+\.json at step (\d+)", logs)]
    assert resumed and resumed[0] in saved_before_kill, (resumed, saved_before_kill)
    summary = e2e.read_json("crash/train_summary.json")
    assert summary["step"] == steps and summary["tokens"] == steps * 8 * 64
    assert _meta_steps(e2e, "crash") == list(range(every, steps + 1, every))


def test_operator_restart_mid_training_duplicates_nothing_and_the_job_completes(e2e: E2E) -> None:  # noqa: F811
    steps, every = 200, 50  # the restart lands after step 50, with ~150 steps (seconds) left to observe
    e2e.apply(speedrun_manifest("phoenix", e2e.bucket, steps=steps, checkpoint_every=every))
    e2e.follow("phoenix", "Training")
    before = e2e.children("phoenix")

    e2e.stop_operator()
    wait_for(lambda: _meta_steps(e2e, "phoenix"), timeout=STEP_TIMEOUT, what="a checkpoint without the operator")
    conditions = e2e.runs.job("phoenix-train")["status"].get("conditions") or []
    assert not [c for c in conditions if c["type"] == "Complete"], "training finished before the restart"
    e2e.start_operator()

    seen = e2e.follow("phoenix", "Succeeded")
    resumed_steps = [s["step"] for s in seen if s["phase"] == "Training" and s["step"] is not None]
    assert resumed_steps and resumed_steps[-1] > every, f"no progress read after the restart: {seen}"
    after = e2e.children("phoenix")
    assert after["configmaps"] == ["phoenix-run"] and after["services"] == ["phoenix"]
    assert after["jobs"] == ["phoenix-eval", "phoenix-train"]
    train_pods = [p for p in after["pods"] if p.startswith("phoenix-train-")]
    assert train_pods == before["pods"] and len(train_pods) == 2  # the same pods: nothing was re-created
    assert len([p for p in after["pods"] if p.startswith("phoenix-eval-")]) == 1
    for name in ("phoenix-run", "phoenix"):
        kind = ("v1", "configmaps") if name.endswith("-run") else ("v1", "services")
        [owner] = e2e.cluster.get(*kind, NAMESPACE, name)["metadata"]["ownerReferences"]
        assert owner["name"] == "phoenix"
    reasons = [reason for _, reason, _ in e2e.runs.events("phoenix")]
    assert len(reasons) == len(set(reasons)), f"a transition was announced twice: {reasons}"
    assert e2e.read_json("phoenix/train_summary.json")["step"] == steps


def test_failed_eval_pod_is_retried_and_results_are_published_once(e2e: E2E) -> None:  # noqa: F811
    e2e.apply(speedrun_manifest("retry", e2e.bucket, steps=20, checkpoint_every=10))
    e2e.follow("retry", "Evaluating")
    first = wait_for(lambda: _running(e2e, "retry-eval"), timeout=STEP_TIMEOUT, what="the eval pod running")[0]
    e2e.kubelet.kill(first["metadata"]["name"])

    e2e.follow("retry", "Succeeded")

    pods = e2e.kubelet.pods("retry-eval")
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Succeeded"]
    assert _terminated(pods[0])["exitCode"] == 137
    job = e2e.runs.job("retry-eval")["status"]
    assert (job["failed"], job["succeeded"]) == (1, 1)
    assert e2e.runs.children("retry")["jobs"] == ["retry-eval", "retry-train"]  # retried inside the one Job
    assert [k for k in e2e.keys("retry/") if k.endswith("speedrun_results.json")] == ["retry/speedrun_results.json"]
    info = e2e.read_json("retry/speedrun_results.json")["runs"][0]["run_info"]
    assert e2e.status("retry")["results"]["bpb"] == info["eval/builtin://pydoc-topics/val/bpb"]
    reasons = [reason for _, reason, _ in e2e.runs.events("retry")]
    assert reasons.count("EvaluationSucceeded") == 1 and "EvaluationFailed" not in reasons
    assert e2e.status("retry").get("restarts", 0) == 0  # eval retries are not training restarts


def test_invalid_manifests_fail_with_a_field_named_message(e2e: E2E) -> None:  # noqa: F811
    # The CRD's CEL rules reject this one at apply time, as `kubectl apply` would show.
    rejected = speedrun_manifest("rejected", e2e.bucket, steps=20, checkpoint_every=10, **{"spec.model.numHeads": 3})
    with pytest.raises(ApiError) as err:
        e2e.apply(rejected)
    assert err.value.status == 422 and "hiddenDim" in str(err.value)

    # This one passes the CRD (the rule has no CEL twin); the operator's validation fails it.
    invalid = speedrun_manifest("invalid", e2e.bucket, steps=20, checkpoint_every=10,
                                **{"spec.train.deviceBatchSize": 3})
    e2e.apply(invalid)
    e2e.follow("invalid", "Failed")
    failed = e2e.runs.condition("invalid", "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.train.batchSize: must divide evenly into micro-batches")
    assert e2e.children("invalid") == {"configmaps": [], "services": [], "jobs": [], "pods": []}
    assert e2e.cluster.get(*SRJ, NAMESPACE, "invalid")["status"]["phase"] == "Failed"


def test_trainer_config_error_fails_at_once_naming_the_field(e2e: E2E) -> None:  # noqa: F811
    # Valid for the CRD and the operator; only the trainer sees that 200 < the byte tokenizer's 257.
    manifest = speedrun_manifest("vocab", e2e.bucket, steps=20, checkpoint_every=10,
                                 **{"spec.model.vocabSize": 200, "spec.resources.nodes": 1,
                                    "spec.runPolicy.maxRestarts": 0})
    e2e.apply(manifest)
    e2e.follow("vocab", "Failed")
    failed = e2e.runs.condition("vocab", "Failed")
    assert failed["reason"] == "InvalidConfig"
    assert "spec.model.vocabSize: 200 is smaller than" in failed["message"]
