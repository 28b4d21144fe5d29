"""E2E on the real control plane: a 2-node torchrun speedrun whose pods find each other through cluster DNS,
and the same under faults (a training pod killed, the operator restarted, the eval pod failing once,
a new spec re-created on an old run's storage).

The chart's operator (helm install, its ServiceAccount token, run by the test so that it can be
stopped) turns the CPU-tiny SpeedrunJob into its children; Kubernetes' Job controller creates the
Indexed Job's pods, the scheduler binds them to the real nodes, and their kubelets run each in a
container of the trainer image built from the Dockerfile (tests/cluster/speedruns.py). The
command line is the operator's, unchanged: `--rdzv-endpoint=<name>-train-0.<name>:29400`
resolves through CoreDNS from the headless Service's EndpointSlice, and torch decides which agent
hosts the store from that lookup. A killed pod is a container SIGKILLed through its node's
containerd (`kube_nodes.kill`). S3 is moto's server on the pod network's host address (reachable
from the pods, nothing beyond). What a user sees is read with kubectl. Needs root (real nodes);
skips with the reason otherwise. Run: `pytest -m cluster tests/e2e/test_cluster_speedrun.py`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.cluster.kubectl import Kubectl
from tests.cluster.network import PodNetwork
from tests.cluster.prometheus import Prometheus, prometheus_binary
from tests.cluster.real_nodes import RealNodes
from tests.cluster.speedruns import BUCKET, INDEX, TIMEOUT, Speedruns, s3_client, speedrun_env
from tests.support import images
from tests.support.helpers import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = "speedruns-e2e"
STEPS, CHECKPOINT_EVERY, BATCH, SEQ_LEN = 60, 20, 8, 64
PROMETHEUS_CONFIG = ROOT / "tests" / "data" / "prometheus" / "cluster.yml"


@pytest.fixture(scope="module")
def runs(
    control_plane: ControlPlane, kube_nodes: RealNodes, pod_net: PodNetwork,
    built_images: dict[str, images.Image], tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Speedruns]:  # fmt: skip
    with speedrun_env(control_plane, kube_nodes, pod_net, tmp_path_factory, NAMESPACE,
                      built_images=built_images) as env:  # fmt: skip
        yield env


def manifest(runs: Speedruns, name: str, steps: int = STEPS, every: int = CHECKPOINT_EVERY, **changes: Any) -> Any:
    return runs.manifest(name, steps, every, **{"spec.train.evalEvery": 50, **changes})


def follow(
    runs: Speedruns, name: str, until: str, on_sample: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Wait for phase `until` (failing at once on Failed); the (phase, step) samples seen on the way."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = runs.status(name)
        sample = {"phase": status.get("phase"), "step": (status.get("progress") or {}).get("step")}
        if not seen or seen[-1] != sample:
            seen.append(sample)
        if on_sample is not None:
            on_sample(sample)
        if sample["phase"] == until:
            return seen
        runs.nodes.check()
        if sample["phase"] == "Failed" or time.monotonic() > deadline:
            raise AssertionError(f"{name}: waiting for {until}, got {status}\nseen {seen}\n{runs.nodes.log_tails()}")
        time.sleep(0.2)


def results(runs: Speedruns, name: str) -> bytes:
    return bytes(s3_client(runs.s3).get_object(Bucket=BUCKET, Key=f"{name}/speedrun_results.json")["Body"].read())


def test_two_node_speedrun_rendezvous_through_cluster_dns(
    runs: Speedruns, kube_nodes: RealNodes, kubectl: Kubectl, built_images: dict[str, images.Image]
) -> None:
    # Rank 0 waits at its first checkpoint, gauges served, until status.progress shows a step: the
    # scrape is seen at work however fast this machine trains 60 steps.
    runs.gate.hold(rf"/tiny/checkpoints/model_{CHECKPOINT_EVERY:06d}\.pt$")

    def release_once_progress_is_read(sample: dict[str, Any]) -> None:
        if sample["phase"] == "Training" and sample["step"] is not None:
            runs.gate.release()

    kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest(runs, "tiny")))
    try:
        seen = follow(runs, "tiny", "Succeeded", on_sample=release_once_progress_is_read)
    finally:
        runs.gate.release()

    phases = [s["phase"] for i, s in enumerate(seen) if i == 0 or s["phase"] != seen[i - 1]["phase"]]
    assert phases[-3:] == ["Training", "Evaluating", "Succeeded"], seen
    steps = [s["step"] for s in seen if s["phase"] == "Training" and s["step"] is not None]
    assert steps and steps == sorted(steps) and steps[-1] <= STEPS, f"progress not read: {seen}"

    # What a user sees: kubectl's table and the published results.
    row = kubectl.run("get", "srj", "tiny", "-n", NAMESPACE, "--no-headers").stdout.split()
    assert row[:3] == ["tiny", "Succeeded", "2"], row
    info = json.loads(results(runs, "tiny"))["runs"][0]["run_info"]
    status = runs.status("tiny")
    assert status["results"]["bpb"] == info["eval/builtin://pydoc-topics/val/bpb"] and info["num_devices"] == 2
    assert info["total_tokens"] == STEPS * BATCH * SEQ_LEN

    # Two pods in the trainer image, each with an address from its real node's pod subnet, found
    # by name: the command line is the operator's.
    pods = runs.pods("tiny-train")
    assert sorted(p["status"]["phase"] for p in pods) == ["Succeeded", "Succeeded"]
    assert {c["image"] for p in pods for c in p["spec"]["containers"]} == {built_images["trainer"].ref}
    addresses = {p["status"]["podIP"]: kube_nodes.nodes[p["spec"]["nodeName"]].address.pod_subnet for p in pods}
    assert len(addresses) == 2, addresses
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(net) for ip, net in addresses.items()), addresses
    command = pods[0]["spec"]["containers"][0]["command"]
    assert "--rdzv-endpoint=tiny-train-0.tiny:29400" in command
    logs = [runs.log(p) for p in pods]
    ranks = sorted(line for log in logs for line in log.splitlines() if line.startswith("worker rank"))
    assert ranks == ["worker rank 0/2 (local rank 0) on cpu", "worker rank 1/2 (local rank 0) on cpu"], logs
    job = (runs.job("tiny-train") or {})["status"]
    # kube-controller-manager writes "0,1" for two indexes (ranges from three on).
    assert (job["succeeded"], job.get("failed", 0), job["completedIndexes"]) == (2, 0, "0,1")


# ---- faults: what a cluster does to a speedrun ------------------------------------------------------


def test_killed_training_pod_is_replaced_and_training_resumes(runs: Speedruns) -> None:
    steps, every = 120, 20
    runs.gate.hold(rf"/crash/checkpoints/model_{2 * every:06d}\.pt$")  # the kill lands mid-training
    try:
        runs.create(manifest(runs, "crash", steps, every))
        runs.wait_for(lambda: runs.saved_steps("crash"), "the first checkpoint")
        [victim] = [p for p in runs.pods("crash-train") if p["metadata"]["labels"][INDEX] == "0"]
        runs.nodes.kill(victim)
        before = runs.saved_steps("crash")
    finally:
        runs.gate.release()
    assert before[-1] < steps, "training finished before the kill: make it longer"

    follow(runs, "crash", "Evaluating")

    pods = runs.pods("crash-train")  # the next attempt's: a gang restart replaced the failed Job and its pods
    codes = [p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods]
    assert codes == [0, 0], codes
    job = (runs.job("crash-train") or {})["status"]
    assert job["succeeded"] == 2 and job.get("failed", 0) == 0
    assert runs.status("crash")["restarts"] == 1  # one failure, one restart of the group
    logs = "\n".join(runs.log(p) for p in pods)
    resumed = [int(s) for s in re.findall(r"resumed from \S+/checkpoints/meta_\d+\.json at step (\d+)", logs)]
    assert resumed and resumed[0] in before, (resumed, before)
    assert runs.saved_steps("crash") == list(range(every, steps + 1, every))


def test_operator_restart_mid_training_duplicates_nothing(runs: Speedruns) -> None:
    steps, every = 200, 20
    # Rank 0 waits at its second checkpoint until the restarted operator reads progress again:
    # training cannot end while the operator is away, however fast the machine trains.
    runs.gate.hold(rf"/phoenix/checkpoints/model_{2 * every:06d}\.pt$")
    runs.create(manifest(runs, "phoenix", steps, every))
    try:
        follow(runs, "phoenix", "Training")
        before = [p["metadata"]["name"] for p in runs.pods("phoenix-train")]

        runs.operator.stop()
        try:
            runs.wait_for(lambda: runs.saved_steps("phoenix"), "a checkpoint without the operator")
        finally:
            runs.operator.start()

        def release_once_progress_is_read(sample: dict[str, Any]) -> None:
            if sample["phase"] == "Training" and sample["step"] is not None:
                runs.gate.release()

        seen = follow(runs, "phoenix", "Succeeded", on_sample=release_once_progress_is_read)
    finally:
        runs.gate.release()

    assert [s["step"] for s in seen if s["phase"] == "Training" and s["step"]], f"no progress after restart: {seen}"
    assert [p["metadata"]["name"] for p in runs.pods("phoenix-train")] == before  # nothing re-created
    assert len(runs.pods("phoenix-eval")) == 1
    reasons = [e["reason"] for e in runs.events("phoenix")]
    assert len(reasons) == len(set(reasons)), f"a transition was announced twice: {reasons}"


def test_failed_eval_pod_is_retried_and_results_are_published_once(runs: Speedruns) -> None:
    runs.create(manifest(runs, "retry", 20, 10))
    follow(runs, "retry", "Evaluating")
    running = runs.wait_for(lambda: [p for p in runs.pods("retry-eval") if p["status"].get("phase") == "Running"],
                            "the eval pod running")  # fmt: skip
    runs.nodes.kill(running[0])

    follow(runs, "retry", "Succeeded")

    pods = runs.pods("retry-eval")
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Succeeded"]
    job = (runs.job("retry-eval") or {})["status"]
    assert (job["failed"], job["succeeded"]) == (1, 1)
    keys = s3_client(runs.s3).list_objects_v2(Bucket=BUCKET, Prefix="retry/").get("Contents") or []
    assert [o["Key"] for o in keys if o["Key"].endswith("speedrun_results.json")] == ["retry/speedrun_results.json"]
    assert runs.status("retry").get("restarts", 0) == 0


def test_trainer_config_error_fails_at_once_naming_the_field(runs: Speedruns) -> None:
    # Valid for the CRD and the operator; only the trainer sees that 200 < the byte tokenizer's 257.
    # Its exit code 2 matches the Job's podFailurePolicy FailJob rule, applied by the real controller.
    changes = {"spec.model.vocabSize": 200, "spec.resources.nodes": 1, "spec.runPolicy.maxRestarts": 0}
    runs.create(manifest(runs, "vocab", 20, 10, **changes))
    with pytest.raises(AssertionError, match="phase': 'Failed'"):
        follow(runs, "vocab", "Succeeded")
    failed = next(c for c in runs.status("vocab")["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidConfig"
    assert "spec.model.vocabSize: 200 is smaller than" in failed["message"]
    job = (runs.job("vocab-train") or {})["status"]
    reasons = {c["type"]: c.get("reason") for c in job["conditions"]}
    assert reasons.get("Failed") == "PodFailurePolicy", job["conditions"]


LOGGED_LOSS = re.compile(r"\bstep\s+(\d+)/\d+ \| loss (\d+\.\d+)")


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Prometheus' kubernetes_sd pod role yields: one target per declared container port."""
    groups = []
    for pod in pods:
        meta, ip = pod["metadata"], pod["status"]["podIP"]
        labels = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
                  for k, v in meta["labels"].items()}  # fmt: skip
        labels |= {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"]}
        for port in (p for c in pod["spec"]["containers"] for p in c.get("ports") or []):
            groups.append(
                {
                    "targets": [f"{ip}:{port['containerPort']}"],
                    "labels": {**labels, "__meta_kubernetes_pod_container_port_name": port.get("name", "")},
                }
            )
    return groups


def test_prometheus_discovers_and_scrapes_rank_0_and_the_operator(runs: Speedruns, tmp_path: Path) -> None:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("needs the prometheus binary (Debian package `prometheus`, installed by .ci/run)")
    targets = tmp_path / "targets"
    targets.mkdir()
    values = {"targets_dir": str(targets),
              "operator_target": f"127.0.0.1:{runs.operator.env['SPEEDRUN_OPERATOR_METRICS_PORT']}"}  # fmt: skip
    server = Prometheus(binary, tmp_path / "prometheus", PROMETHEUS_CONFIG, values)
    selector = '{job="speedrun-trainer", speedrun_job="watched"}'
    try:
        steps, log_every = 100, 10
        # Rank 0 waits at its first checkpoint, gauges served, until a training-time scrape is
        # stored: one is seen however fast this machine trains.
        runs.gate.hold(r"/watched/checkpoints/model_000050\.pt$")
        try:
            runs.create(manifest(runs, "watched", steps, 50, **{"spec.train.logEvery": log_every}))

            def both_addressed() -> list[dict[str, Any]]:
                pods = [p for p in runs.pods("watched-train") if p["status"].get("podIP")]
                return pods if len(pods) == 2 else []

            addressed = runs.wait_for(both_addressed, "both training pods' addresses")
            (targets / "watched.json").write_text(json.dumps(pod_targets(addressed)))
            runs.wait_for(lambda: server.query(f"speedrun_step{selector} > 0"), "a training-time scrape of rank 0")
        finally:
            runs.gate.release()
        follow(runs, "watched", "Evaluating")  # training is over: its samples are stored

        # Discovered through the apiserver and relabelled as the chart's PodMonitor: rank 0's metrics port.
        [rank0] = [p for p in runs.pods("watched-train") if p["metadata"]["labels"][INDEX] == "0"]
        up = server.query('up{job="speedrun-trainer"}')
        assert [s["metric"]["pod"] for s in up] == [rank0["metadata"]["name"]]
        assert up[0]["metric"]["instance"].startswith(rank0["status"]["podIP"] + ":")

        scraped_steps = server.samples(f"speedrun_step{selector}[10m]")
        losses = server.samples(f"speedrun_train_loss{selector}[10m]")
        scraped = {int(scraped_steps[t]): losses[t] for t in scraped_steps if t in losses and scraped_steps[t] > 0}
        logged = {int(s): float(v) for s, v in LOGGED_LOSS.findall(runs.log(rank0))}
        assert scraped, f"no training-time scrape: {scraped_steps}"
        for step, loss in scraped.items():
            assert step % log_every == 0 and loss == pytest.approx(logged[step], abs=5e-5), (step, loss)

        [operator_up] = server.query('up{job="speedrun-operator"}')
        assert operator_up["value"][1] == "1"
        [training] = server.query('max_over_time(speedrun_operator_jobs{phase="Training"}[10m])')
        assert float(training["value"][1]) >= 1
    finally:
        server.close()


def test_a_new_spec_on_an_old_runs_storage_fails_and_publishes_nothing(runs: Speedruns, kubectl: Kubectl) -> None:
    # Delete-and-recreate with a new spec on the same storage (what the operator tells users to do
    # after a spec edit) fails at once instead of "resuming" the old run under the new spec (issue 15).
    kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest(runs, "reuse", 20, 10)))
    follow(runs, "reuse", "Succeeded")
    published = results(runs, "reuse")

    kubectl.run("delete", "srj", "reuse", "-n", NAMESPACE, "--wait=true", "--timeout=60s")
    runs.wait_for(lambda: not runs.pods("reuse-train") and not runs.pods("reuse-eval"), "the old run's pods gone")
    changed = manifest(runs, "reuse", 20, 10, **{"spec.train.optimizer.learningRate": 0.01})
    kubectl.run("apply", "-f", "-", stdin=json.dumps(changed))
    follow(runs, "reuse", "Failed")
    failed = next(c for c in runs.status("reuse")["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidConfig", failed
    assert "holds a run of another spec" in failed["message"], failed
    assert "spec.train.optimizer.learningRate" in failed["message"], failed
    jobs = runs.cp.admin.list(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", labels="speedrun.dev/job=reuse")
    assert [j["metadata"]["name"] for j in jobs] == ["reuse-train"]  # no eval Job: nothing published
    assert results(runs, "reuse") == published
