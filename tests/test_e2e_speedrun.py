"""E2E: one SpeedrunJob from `kubectl apply` to published results, with no cluster.

The CPU-tiny manifest (2 nodes x 1 process) goes to the emulated API; the real operator creates
its children; the process kubelet (tests/process_kubelet.py) runs the two training pods as
torchrun agents that rendezvous over loopback, then the eval pod; checkpoints and
speedrun_results.json land in moto's S3 server, reached with the credentials of a Secret named by
spec.storage.secretRef; the operator reads progress from rank 0 and the results from the eval
pod's termination message. Run: `pytest -m e2e tests/test_e2e_speedrun.py`.
"""

from __future__ import annotations

import pytest

from tests.e2e_fixtures import E2E, STEP_TIMEOUT, e2e, speedrun_manifest  # noqa: F401 - e2e is a fixture

pytestmark = pytest.mark.e2e

STEPS, CHECKPOINT_EVERY = 100, 25  # 1-4 s of training: the 1 s progress timer may see any number of steps
BATCH, SEQ_LEN = 8, 64  # tests/helpers.tiny_manifest


def test_speedrun_trains_evaluates_and_publishes(e2e: E2E) -> None:  # noqa: F811
    e2e.apply(speedrun_manifest("tiny", e2e.bucket, steps=STEPS, checkpoint_every=CHECKPOINT_EVERY))

    # Three phases to wait through (pods starting, training, evaluating), STEP_TIMEOUT each: one
    # budget for all of them timed out at a load average of 15 on 2 cores (issue 15).
    seen = e2e.follow("tiny", "Succeeded", timeout=3 * STEP_TIMEOUT)

    phases = [s["phase"] for i, s in enumerate(seen) if i == 0 or s["phase"] != seen[i - 1]["phase"]]
    assert phases[-3:] == ["Training", "Evaluating", "Succeeded"], seen
    # What the operator guarantees (not how many 1 s samples a short run happens to give): the
    # progress it shows never goes back nor past the horizon, and is the final step once Succeeded.
    steps = [s["step"] for s in seen if s["step"] is not None]
    assert steps == sorted(steps) and all(0 <= s <= STEPS for s in steps), f"progress went back: {seen}"
    assert seen[-1] == {"phase": "Succeeded", "step": STEPS}, seen

    # The results: the file in the bucket and status.results agree exactly.
    status = e2e.status("tiny")
    info = e2e.read_json("tiny/speedrun_results.json")["runs"][0]["run_info"]
    results = status["results"]
    assert results["uri"] == f"{e2e.bucket.uri}/tiny/speedrun_results.json"
    assert results["bpb"] == info["eval/builtin://pydoc-topics/val/bpb"]
    assert results["valLoss"] == info["val_loss"] and results["modelFlops"] == info["model_flops"]
    assert results["trainingSeconds"] == info["training_time"] > 0
    assert results["trainingSteps"] == info["training_steps"] == STEPS == status["progress"]["step"]
    assert info["training_steps"] == STEPS and info["num_devices"] == 2
    assert info["total_tokens"] == STEPS * BATCH * SEQ_LEN
    assert info["eval/builtin://pydoc-topics/val/bpb"] < info["initial_bpb"]  # it learned something

    # Checkpoints every CHECKPOINT_EVERY steps, each complete; the summary of a 2-process run.
    saved = range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY)
    checkpoints = e2e.keys("tiny/checkpoints/")
    assert [k for k in checkpoints if "meta_" in k] == [f"tiny/checkpoints/meta_{s:06d}.json" for s in saved]
    assert {f"tiny/checkpoints/model_{s:06d}.pt" for s in saved} <= set(checkpoints)
    summary = e2e.read_json("tiny/train_summary.json")
    assert summary["step"] == STEPS and summary["world_size"] == 2

    # Exactly the children, once each; both ranks joined, through one pod per completion index.
    assert e2e.runs.children("tiny") == {
        "configmaps": ["tiny-run"],
        "services": ["tiny"],
        "jobs": ["tiny-eval", "tiny-train"],
    }
    train_pods = e2e.kubelet.pods("tiny-train")
    assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in train_pods) == ["0", "1"]
    addresses = {p["status"]["podIP"] for p in train_pods}
    assert len(addresses) == 2 and all(a.startswith("127.0.") and a != "127.0.0.1" for a in addresses)
    ranks = sorted(
        line for p in train_pods for line in e2e.kubelet.log(p["metadata"]["name"]).splitlines()
        if line.startswith("worker rank")
    )
    assert ranks == ["worker rank 0/2 (local rank 0) on cpu", "worker rank 1/2 (local rank 0) on cpu"]
    train_job = e2e.runs.job("tiny-train")["status"]
    assert (train_job["succeeded"], train_job["failed"], train_job["completedIndexes"]) == (2, 0, "0-1")
    assert [p["status"]["phase"] for p in e2e.kubelet.pods("tiny-eval")] == ["Succeeded"]
    assert status.get("restarts", 0) == 0
    assert [reason for _, reason, _ in e2e.runs.events("tiny")][-3:] == [
        "Running",
        "TrainingSucceeded",
        "EvaluationSucceeded",
    ]
