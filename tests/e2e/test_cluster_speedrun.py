"""E2E on the real control plane: a 2-node torchrun speedrun whose pods find each other through cluster DNS,
and the same under faults (a training pod killed, the operator restarted, the eval pod failing once,
a new spec re-created on an old run's storage).

The chart's operator (helm install, its ServiceAccount token) turns the CPU-tiny SpeedrunJob into
its children; Kubernetes' Job controller creates the Indexed Job's pods, the scheduler binds them,
and the node agent runs each in its own network namespace. The command line is the operator's,
unchanged: `--rdzv-endpoint=<name>-train-0.<name>:29400` resolves through CoreDNS from the
headless Service's EndpointSlice, and torch decides which agent hosts the store from that lookup.
S3 is moto's server on the pod network's host address (reachable from the pods, nothing beyond).
What a user sees is read with kubectl. Needs root (network namespaces); skips with the reason
otherwise. Run: `pytest -m cluster tests/e2e/test_cluster_speedrun.py`.
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

from speedrun_trainer.cli.launch import free_port
from tests.cluster.chart import ChartOperator, chart_operator, install_chart
from tests.cluster.control_plane import ControlPlane
from tests.cluster.kubectl import Kubectl
from tests.cluster.network import NamespaceNetwork, PodNetwork
from tests.cluster.node_agent import NodeAgent
from tests.cluster.prometheus import Prometheus, prometheus_binary
from tests.cluster.speedruns import S3_SECRET, create_s3_secret, moto_s3, s3_client
from tests.support.helpers import ROOT, tiny_manifest
from tests.support.s3 import GatedMotoServer

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = "speedruns-e2e"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
BUCKET = "e2e"
STEP_TIMEOUT = 240.0
STEPS, CHECKPOINT_EVERY, BATCH, SEQ_LEN = 60, 20, 8, 64
INDEX = "batch.kubernetes.io/job-completion-index"
PROMETHEUS_CONFIG = ROOT / "tests" / "data" / "prometheus" / "cluster.yml"


@pytest.fixture(scope="module")
def s3_server(pod_net: PodNetwork) -> Iterator[GatedMotoServer]:
    with moto_s3(pod_net, BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def s3_on_pod_network(s3_server: GatedMotoServer) -> str:
    return s3_server.url


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_nodes: NodeAgent, s3_on_pod_network: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    values = {"operator.progressInterval": "1", "operator.resyncInterval": "5"}
    release = install_chart(control_plane, "speedrun-e2e", NAMESPACE, values)
    control_plane.namespace(NAMESPACE)
    create_s3_secret(control_plane, NAMESPACE)
    overrides = {"SPEEDRUN_OPERATOR_METRICS_PORT": str(free_port()), "SPEEDRUN_OPERATOR_LIVENESS": ""}
    with chart_operator(control_plane, release, tmp_path_factory.mktemp("operator"), **overrides) as op:
        yield op
        control_plane.drain(NAMESPACE, SRJ_PATH)
    assert op.forbidden() == [], "the chart's RBAC refused the operator"


def manifest(name: str, s3: str, steps: int = STEPS, every: int = CHECKPOINT_EVERY, **changes: Any) -> dict[str, Any]:
    doc = tiny_manifest(**{"spec.train.steps": steps, "spec.train.checkpointEvery": every,
                           "spec.train.evalEvery": 50, **changes})  # fmt: skip
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    doc["spec"]["storage"] = {"uri": f"s3://{BUCKET}/{name}", "endpointUrl": s3, "secretRef": {"name": S3_SECRET}}
    return doc


def follow(
    cp: ControlPlane, nodes: NodeAgent, name: str, until: str, on_sample: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        status = (cp.admin.get(f"{SRJ_PATH}/{name}") or {}).get("status") or {}
        sample = {"phase": status.get("phase"), "step": (status.get("progress") or {}).get("step")}
        if not seen or seen[-1] != sample:
            seen.append(sample)
        if on_sample is not None:
            on_sample(sample)
        if sample["phase"] == until:
            return seen
        nodes.check()
        if sample["phase"] == "Failed" or time.monotonic() > deadline:
            raise AssertionError(f"{name}: waiting for {until}, got {status}\nseen {seen}\n{nodes.log_tails()}")
        time.sleep(0.2)


def test_two_node_speedrun_rendezvous_through_cluster_dns(
    control_plane: ControlPlane, kube_nodes: NodeAgent, pod_net: PodNetwork, kubectl: Kubectl,
    operator: ChartOperator, s3_on_pod_network: str, s3_server: GatedMotoServer,
) -> None:  # fmt: skip
    cp = control_plane
    # Rank 0 waits at its first checkpoint, gauges served, until status.progress shows a step: the
    # scrape is seen at work however fast this machine trains 60 steps.
    s3_server.hold(rf"/tiny/checkpoints/model_{CHECKPOINT_EVERY:06d}\.pt$")

    def release_once_progress_is_read(sample: dict[str, Any]) -> None:
        if sample["phase"] == "Training" and sample["step"] is not None:
            s3_server.release()

    kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest("tiny", s3_on_pod_network)))
    try:
        seen = follow(cp, kube_nodes, "tiny", "Succeeded", on_sample=release_once_progress_is_read)
    finally:
        s3_server.release()

    phases = [s["phase"] for i, s in enumerate(seen) if i == 0 or s["phase"] != seen[i - 1]["phase"]]
    assert phases[-3:] == ["Training", "Evaluating", "Succeeded"], seen
    steps = [s["step"] for s in seen if s["phase"] == "Training" and s["step"] is not None]
    assert steps and steps == sorted(steps) and steps[-1] <= STEPS, f"progress not read: {seen}"

    # What a user sees: kubectl's table and the published results.
    row = kubectl.run("get", "srj", "tiny", "-n", NAMESPACE, "--no-headers").stdout.split()
    assert row[:3] == ["tiny", "Succeeded", "2"], row
    info = json.loads(s3_client(s3_on_pod_network).get_object(Bucket=BUCKET, Key="tiny/speedrun_results.json")["Body"]
                      .read())["runs"][0]["run_info"]  # fmt: skip
    status = cp.admin.get(f"{SRJ_PATH}/tiny")["status"]
    assert status["results"]["bpb"] == info["eval/builtin://pydoc-topics/val/bpb"] and info["num_devices"] == 2
    assert info["total_tokens"] == STEPS * BATCH * SEQ_LEN

    # Two pods, two addresses on the pod network, found by name: the command line is the operator's.
    pods = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labels="batch.kubernetes.io/job-name=tiny-train")
    assert sorted(p["status"]["phase"] for p in pods) == ["Succeeded", "Succeeded"]
    subnet = ipaddress.ip_network(pod_net.net) if isinstance(pod_net, NamespaceNetwork) else None
    addresses = {p["status"]["podIP"] for p in pods}
    assert len(addresses) == 2 and subnet and all(ipaddress.ip_address(a) in subnet for a in addresses)
    command = pods[0]["spec"]["containers"][0]["command"]
    assert "--rdzv-endpoint=tiny-train-0.tiny:29400" in command
    logs = [kube_nodes.log(p["metadata"]["name"]) for p in pods]
    ranks = sorted(line for log in logs for line in log.splitlines() if line.startswith("worker rank"))
    assert ranks == ["worker rank 0/2 (local rank 0) on cpu", "worker rank 1/2 (local rank 0) on cpu"], logs
    job = cp.admin.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/tiny-train")["status"]
    # kube-controller-manager writes "0,1" for two indexes (ranges from three on); the emulator wrote "0-1".
    assert (job["succeeded"], job.get("failed", 0), job["completedIndexes"]) == (2, 0, "0,1")


# ---- faults: what a cluster does to a speedrun ------------------------------------------------------


def pods_of(cp: ControlPlane, job: str) -> list[dict[str, Any]]:
    found = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labels=f"batch.kubernetes.io/job-name={job}")
    return sorted(found, key=lambda p: p["metadata"]["creationTimestamp"] + p["metadata"]["name"])


def saved_steps(s3: str, name: str) -> list[int]:
    listing = s3_client(s3).list_objects_v2(Bucket=BUCKET, Prefix=f"{name}/checkpoints/").get("Contents") or []
    return sorted(int(m[1]) for o in listing if (m := re.search(r"meta_(\d+)\.json$", o["Key"])))


def wait_for(predicate: Any, what: str, timeout: float = STEP_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def test_killed_training_pod_is_replaced_and_training_resumes(
    control_plane: ControlPlane, kube_nodes: NodeAgent, operator: ChartOperator, s3_on_pod_network: str
) -> None:
    cp, steps, every = control_plane, 120, 20
    cp.admin.create(SRJ_PATH, manifest("crash", s3_on_pod_network, steps, every))
    wait_for(lambda: saved_steps(s3_on_pod_network, "crash"), "the first checkpoint")
    [victim] = [p for p in pods_of(cp, "crash-train") if p["metadata"]["labels"][INDEX] == "0"]
    kube_nodes.kill(victim["metadata"]["name"])
    before = saved_steps(s3_on_pod_network, "crash")
    assert before[-1] < steps, "training finished before the kill: make it longer"

    follow(cp, kube_nodes, "crash", "Evaluating")

    pods = pods_of(cp, "crash-train")  # the next attempt's: a gang restart replaced the failed Job and its pods
    codes = [p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods]
    assert codes == [0, 0], codes
    job = cp.admin.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/crash-train")["status"]
    assert job["succeeded"] == 2 and job.get("failed", 0) == 0
    status = cp.admin.get(f"{SRJ_PATH}/crash")["status"]
    assert status["restarts"] == 1  # one failure, one restart of the group
    logs = "\n".join(kube_nodes.log(p["metadata"]["name"]) for p in pods)
    resumed = [int(s) for s in re.findall(r"resumed from \S+/checkpoints/meta_\d+\.json at step (\d+)", logs)]
    assert resumed and resumed[0] in before, (resumed, before)
    assert saved_steps(s3_on_pod_network, "crash") == list(range(every, steps + 1, every))


def test_operator_restart_mid_training_duplicates_nothing(
    control_plane: ControlPlane, kube_nodes: NodeAgent, operator: ChartOperator, s3_on_pod_network: str
) -> None:
    cp, steps, every = control_plane, 200, 20  # the first checkpoint comes early even on a loaded machine
    cp.admin.create(SRJ_PATH, manifest("phoenix", s3_on_pod_network, steps, every))
    follow(cp, kube_nodes, "phoenix", "Training")
    before = [p["metadata"]["name"] for p in pods_of(cp, "phoenix-train")]

    operator.stop()
    try:
        try:
            wait_for(lambda: saved_steps(s3_on_pod_network, "phoenix"), "a checkpoint without the operator")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{kube_nodes.log_tails(80)}") from None
    finally:
        operator.start()

    seen = follow(cp, kube_nodes, "phoenix", "Succeeded")
    assert [s["step"] for s in seen if s["phase"] == "Training" and s["step"]], f"no progress after restart: {seen}"
    assert [p["metadata"]["name"] for p in pods_of(cp, "phoenix-train")] == before  # nothing re-created
    assert len(pods_of(cp, "phoenix-eval")) == 1
    events = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/events", fields="involvedObject.name=phoenix")
    reasons = [e["reason"] for e in events if e["involvedObject"]["kind"] == "SpeedrunJob"]
    assert len(reasons) == len(set(reasons)), f"a transition was announced twice: {reasons}"


def test_failed_eval_pod_is_retried_and_results_are_published_once(
    control_plane: ControlPlane, kube_nodes: NodeAgent, operator: ChartOperator, s3_on_pod_network: str
) -> None:
    cp = control_plane
    cp.admin.create(SRJ_PATH, manifest("retry", s3_on_pod_network, 20, 10))
    follow(cp, kube_nodes, "retry", "Evaluating")
    running = wait_for(lambda: [p for p in pods_of(cp, "retry-eval") if p["status"].get("phase") == "Running"],
                       "the eval pod running")  # fmt: skip
    kube_nodes.kill(running[0]["metadata"]["name"])

    follow(cp, kube_nodes, "retry", "Succeeded")

    pods = pods_of(cp, "retry-eval")
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Succeeded"]
    job = cp.admin.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/retry-eval")["status"]
    assert (job["failed"], job["succeeded"]) == (1, 1)
    keys = s3_client(s3_on_pod_network).list_objects_v2(Bucket=BUCKET, Prefix="retry/").get("Contents") or []
    assert [o["Key"] for o in keys if o["Key"].endswith("speedrun_results.json")] == ["retry/speedrun_results.json"]
    assert cp.admin.get(f"{SRJ_PATH}/retry")["status"].get("restarts", 0) == 0


def test_trainer_config_error_fails_at_once_naming_the_field(
    control_plane: ControlPlane, kube_nodes: NodeAgent, operator: ChartOperator, s3_on_pod_network: str
) -> None:
    # Valid for the CRD and the operator; only the trainer sees that 200 < the byte tokenizer's 257.
    # Its exit code 2 matches the Job's podFailurePolicy FailJob rule, applied by the real controller.
    changes = {"spec.model.vocabSize": 200, "spec.resources.nodes": 1, "spec.runPolicy.maxRestarts": 0}
    control_plane.admin.create(SRJ_PATH, manifest("vocab", s3_on_pod_network, 20, 10, **changes))
    with pytest.raises(AssertionError, match="phase': 'Failed'"):
        follow(control_plane, kube_nodes, "vocab", "Succeeded")
    status = control_plane.admin.get(f"{SRJ_PATH}/vocab")["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidConfig"
    assert "spec.model.vocabSize: 200 is smaller than" in failed["message"]
    job = control_plane.admin.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/vocab-train")["status"]
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


def test_prometheus_discovers_and_scrapes_rank_0_and_the_operator(
    control_plane: ControlPlane, kube_nodes: NodeAgent, operator: ChartOperator, s3_on_pod_network: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("needs the prometheus binary (Debian package `prometheus`, installed by .ci/run)")
    targets = tmp_path / "targets"
    targets.mkdir()
    values = {"targets_dir": str(targets),
              "operator_target": f"127.0.0.1:{operator.env['SPEEDRUN_OPERATOR_METRICS_PORT']}"}  # fmt: skip
    server = Prometheus(binary, tmp_path / "prometheus", PROMETHEUS_CONFIG, values)
    try:
        steps, log_every = 100, 10
        changes = {"spec.train.logEvery": log_every}
        control_plane.admin.create(SRJ_PATH, manifest("watched", s3_on_pod_network, steps, 50, **changes))

        def both_addressed() -> list[dict[str, Any]]:
            pods = [p for p in pods_of(control_plane, "watched-train") if p["status"].get("podIP")]
            return pods if len(pods) == 2 else []

        addressed = wait_for(both_addressed, "both training pods' addresses")
        (targets / "watched.json").write_text(json.dumps(pod_targets(addressed)))
        follow(control_plane, kube_nodes, "watched", "Evaluating")  # training is over: its samples are stored

        # Discovered through the apiserver and relabelled as the chart's PodMonitor: rank 0's metrics port.
        [rank0] = [p for p in pods_of(control_plane, "watched-train") if p["metadata"]["labels"][INDEX] == "0"]
        up = server.query('up{job="speedrun-trainer"}')
        assert [s["metric"]["pod"] for s in up] == [rank0["metadata"]["name"]]
        assert up[0]["metric"]["instance"].startswith(rank0["status"]["podIP"] + ":")

        selector = '{job="speedrun-trainer", speedrun_job="watched"}[10m]'
        scraped_steps = server.samples(f"speedrun_step{selector}")
        losses = server.samples(f"speedrun_train_loss{selector}")
        scraped = {int(scraped_steps[t]): losses[t] for t in scraped_steps if t in losses and scraped_steps[t] > 0}
        logged = {int(s): float(v) for s, v in LOGGED_LOSS.findall(kube_nodes.log(rank0["metadata"]["name"]))}
        assert scraped, f"no training-time scrape: {scraped_steps}"
        for step, loss in scraped.items():
            assert step % log_every == 0 and loss == pytest.approx(logged[step], abs=5e-5), (step, loss)

        [operator_up] = server.query('up{job="speedrun-operator"}')
        assert operator_up["value"][1] == "1"
        [training] = server.query('max_over_time(speedrun_operator_jobs{phase="Training"}[10m])')
        assert float(training["value"][1]) >= 1
    finally:
        server.close()


def test_a_new_spec_on_an_old_runs_storage_fails_and_publishes_nothing(
    control_plane: ControlPlane, kube_nodes: NodeAgent, kubectl: Kubectl, operator: ChartOperator,
    s3_on_pod_network: str,
) -> None:  # fmt: skip
    # Delete-and-recreate with a new spec on the same storage (what the operator tells users to do
    # after a spec edit) fails at once instead of "resuming" the old run under the new spec (issue 15).
    cp, s3 = control_plane, s3_on_pod_network
    kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest("reuse", s3, 20, 10)))
    follow(cp, kube_nodes, "reuse", "Succeeded")
    published = s3_client(s3).get_object(Bucket=BUCKET, Key="reuse/speedrun_results.json")["Body"].read()

    kubectl.run("delete", "srj", "reuse", "-n", NAMESPACE, "--wait=true", "--timeout=60s")
    wait_for(lambda: not pods_of(cp, "reuse-train") and not pods_of(cp, "reuse-eval"), "the old run's pods gone")
    changed = manifest("reuse", s3, 20, 10, **{"spec.train.optimizer.learningRate": 0.01})
    kubectl.run("apply", "-f", "-", stdin=json.dumps(changed))
    follow(cp, kube_nodes, "reuse", "Failed")
    status = cp.admin.get(f"{SRJ_PATH}/reuse")["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidConfig", failed
    assert "holds a run of another spec" in failed["message"], failed
    assert "spec.train.optimizer.learningRate" in failed["message"], failed
    jobs = cp.admin.list(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", labels="speedrun.dev/job=reuse")
    assert [j["metadata"]["name"] for j in jobs] == ["reuse-train"]  # no eval Job: nothing published
    assert s3_client(s3).get_object(Bucket=BUCKET, Key="reuse/speedrun_results.json")["Body"].read() == published
