"""The operator's lifecycle on the real control plane, with pods played instead of trained.

The chart's operator (helm install, its ServiceAccount token: the chart's RBAC is enforced) drives
SpeedrunJobs through Kubernetes' own Job controller, scheduler and garbage collector; its pods run
in real containers on the session's real kubelets (`kube_nodes`), from the player image (the
chart's `trainer.image`, tests/cluster/players.py): where training is not the point a pod is
played, serving rank 0's gauges and exiting when the test says, with the exit code, log line and
termination message the test gives; a pod not played runs until deleted, as a long trainer would.
Each pod asks for 100m CPU and 128Mi (the real nodes have the machine's 2 CPUs each, and a module's
pods outlive their test). What a user sees is read with kubectl where it fits.
Covers: the children (once, owned), Training -> Evaluating -> Succeeded with progress and results,
an invalid spec fixed by a new generation, the trainer's config error after a restart, Kueue's
label and admission, suspend/resume, spec edits reported not applied, the operator's metrics,
`speedrun render` == what the operator creates, orphan adoption, and the operator restarted
while no pod runs. The chart/RBAC/GC basics are in test_operator.py, real training in
tests/e2e/test_cluster_speedrun.py. Run: `pytest -m cluster tests/cluster/test_lifecycle.py`.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_trainer.cli.launch import free_port
from tests.cluster.chart import ChartOperator
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.players import PlayerImage, PodPlayers, played_operator
from tests.cluster.real_nodes import RealNodes
from tests.support.helpers import tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-life"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
JOBS_PATH = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
RESULTS = {"uri": "s3://speedrun-test/runs/x/speedrun_results.json", "bpb": 1.234, "core": None, "valLoss": 0.98,
           "modelFlops": 1.5e15, "hardwareFlops": 3.0e15, "trainingSeconds": 61.5,
           "timeToTargetSeconds": None}  # fmt: skip
GAUGES = {"step": 42, "total_steps": 300, "train_loss": 2.5, "tokens_per_second": 12345.0, "mfu": 0.31,
          "eta_seconds": 90.0}  # fmt: skip


# The pods' requests: the player needs little, and the real nodes have the machine's CPUs.
POD_RESOURCES = {"spec.resources.cpu": "100m", "spec.resources.memory": "128Mi"}
TIMEOUT = 120.0  # generous: the machine is shared, and a node's first pod pulls the player image


def wait(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_nodes: RealNodes, player_image: PlayerImage, pod_players: PodPlayers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChartOperator]:  # fmt: skip
    workdir = tmp_path_factory.mktemp("operator")
    with played_operator(control_plane, NAMESPACE, workdir, player_image, pod_players) as op:
        yield op


class Runs:
    """Reads of one namespace's SpeedrunJobs, their children and Events, as the admin."""

    def __init__(self, cp: ControlPlane, kubectl: Kubectl) -> None:
        self.cp, self.kubectl = cp, kubectl

    def apply(self, name: str, **changes: Any) -> dict[str, Any]:
        doc = tiny_manifest(**{**POD_RESOURCES, **changes})
        doc["metadata"] = {"name": name, "namespace": NAMESPACE}
        self.kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))
        return self.get(name)

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.kubectl.run("patch", "srj", name, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch))

    def get(self, name: str) -> dict[str, Any]:
        return self.cp.admin.get(f"{SRJ_PATH}/{name}") or {}

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        wait(lambda: self.status(name).get("phase") == phase, f"{name} {phase} (now {self.status(name)})", timeout)
        return self.status(name)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), None)

    def job(self, name: str) -> dict[str, Any] | None:
        return self.cp.admin.get(f"{JOBS_PATH}/{name}")

    def pods(self, job: str) -> list[dict[str, Any]]:
        return self.cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labels=f"batch.kubernetes.io/job-name={job}")

    def children(self, name: str) -> dict[str, list[str]]:
        paths = {"configmaps": "/api/v1", "services": "/api/v1", "jobs": "/apis/batch/v1"}
        return {plural: sorted(o["metadata"]["name"] for o in self.cp.admin.list(
                    f"{base}/namespaces/{NAMESPACE}/{plural}", labels=f"speedrun.dev/job={name}"))
                for plural, base in paths.items()}  # fmt: skip

    def uids(self, name: str) -> dict[str, str]:
        paths = {"configmaps": "/api/v1", "services": "/api/v1", "jobs": "/apis/batch/v1"}
        return {f"{plural}/{o['metadata']['name']}": o["metadata"]["uid"] for plural, base in paths.items()
                for o in self.cp.admin.list(f"{base}/namespaces/{NAMESPACE}/{plural}",
                                            labels=f"speedrun.dev/job={name}")}  # fmt: skip

    def events(self, name: str) -> list[tuple[str, str, str]]:
        found = self.cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/events", fields=f"involvedObject.name={name}")
        found = [e for e in found if e["involvedObject"]["kind"] == "SpeedrunJob"]
        found.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [(e["type"], e["reason"], e.get("message", "")) for e in found]


@pytest.fixture
def runs(control_plane: ControlPlane, kubectl: Kubectl, operator: ChartOperator) -> Runs:
    return Runs(control_plane, kubectl)


def exposition(values: dict[str, float]) -> str:
    return "".join(f"# TYPE speedrun_{k} gauge\nspeedrun_{k} {v}\n" for k, v in values.items())


def test_apply_trains_evaluates_and_succeeds_with_exactly_its_children(
    runs: Runs, pod_players: PodPlayers, player_image: PlayerImage, kubectl: Kubectl
) -> None:
    port = free_port()
    pod_players.play("happy-train-", metrics_port=port, exposition=exposition(GAUGES), namespace=NAMESPACE)
    pod_players.play("happy-eval-", namespace=NAMESPACE)
    uid = runs.apply("happy", **{"spec.metrics.port": port})["metadata"]["uid"]
    status = runs.wait_phase("happy", "Training")
    assert status["startTime"] and status["nodes"] == "2" and status["observedGeneration"] == 1
    assert runs.condition("happy", "Validated")["status"] == "True"
    assert runs.condition("happy", "Training")["status"] == "True"

    progress = wait(lambda: runs.status("happy").get("progress"), "status.progress from rank 0's gauges")
    assert (progress["step"], progress["totalSteps"], progress["trainLoss"]) == (42, 300, 2.5)
    assert progress["tokensPerSecond"] == 12345.0 and progress["etaSeconds"] == 90.0
    assert progress["mfu"] == pytest.approx(0.31)

    assert runs.children("happy") == {"configmaps": ["happy-run"], "services": ["happy"], "jobs": ["happy-train"]}
    for path in ("/api/v1/namespaces/{ns}/configmaps/happy-run", "/api/v1/namespaces/{ns}/services/happy",
                 "/apis/batch/v1/namespaces/{ns}/jobs/happy-train"):  # fmt: skip
        [owner] = runs.cp.admin.get(path.format(ns=NAMESPACE))["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["kind"], owner["controller"]) == (uid, "SpeedrunJob", True)
    config = runs.cp.admin.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/happy-run")["data"]["run.json"]
    assert json.loads(config)["spec"]["train"]["steps"] == 20
    job = runs.job("happy-train")["spec"]
    assert job["completions"] == job["parallelism"] == 2 and job["completionMode"] == "Indexed"
    container = job["template"]["spec"]["containers"][0]
    assert f"--rdzv-id={uid}-0" in container["command"]  # the run's and the attempt's
    assert "--rdzv-endpoint=happy-train-0.happy:29400" in container["command"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SPEEDRUN_STORAGE_URI"] == f"s3://speedrun-test/runs/{NAMESPACE}/happy"  # the chart's default
    assert container["image"] == player_image.ref  # the chart's trainer.image

    assert len(pod_players.finish("happy-train-")) == 2
    runs.wait_phase("happy", "Evaluating")
    command = runs.job("happy-eval")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:6] == ["python", "-m", "speedrun_trainer.train.torchrun", "--nnodes=1", "--nproc-per-node=1",
                           "--standalone"]  # fmt: skip
    wait(lambda: pod_players.playing("happy-eval-"), "the eval pod running")
    pod_players.finish("happy-eval-", message=json.dumps(RESULTS))

    status = runs.wait_phase("happy", "Succeeded")
    assert status["results"] == {k: v for k, v in RESULTS.items() if v is not None} and status["completionTime"]
    [eval_pod] = runs.pods("happy-eval")  # a real container: the kubelet read its /dev/termination-log
    [container_status] = eval_pod["status"]["containerStatuses"]
    assert container_status["imageID"].startswith(f"{player_image.repository}@sha256:"), container_status
    terminated = container_status["state"]["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (0, json.dumps(RESULTS)), terminated
    for type_ in ("Evaluated", "ResultsPublished", "Succeeded"):
        assert runs.condition("happy", type_)["status"] == "True", type_
    assert runs.condition("happy", "Training")["reason"] == "TrainingSucceeded"
    reasons = ["PodsPending", "Running", "TrainingSucceeded", "EvaluationSucceeded"]
    assert [r for _, r, _ in wait(lambda: len(runs.events("happy")) >= 4 and runs.events("happy"), "4 Events")] \
        == reasons  # fmt: skip
    assert runs.children("happy")["jobs"] == ["happy-eval", "happy-train"]
    row = kubectl.run("get", "srj", "happy", "-n", NAMESPACE, "--no-headers").stdout.split()
    assert row[:3] == ["happy", "Succeeded", "2"], row


def test_an_invalid_spec_fails_and_a_fixed_generation_runs(runs: Runs) -> None:
    # 64 CPUs a pod: no real node fits one, so the fixed generation's pods stay Pending (Unschedulable).
    runs.apply("invalid", **{"spec.train.batchSize": 12, "spec.train.deviceBatchSize": 8, "spec.resources.cpu": "64"})
    status = runs.wait_phase("invalid", "Failed")
    validated = runs.condition("invalid", "Validated")
    assert validated["message"].startswith("spec.train.batchSize: must divide evenly")
    assert runs.condition("invalid", "Failed")["message"] == validated["message"] and status["completionTime"]
    assert runs.children("invalid") == {"configmaps": [], "services": [], "jobs": []}

    runs.patch("invalid", {"spec": {"train": {"batchSize": 16}}})
    wait(lambda: runs.job("invalid-train"), "the training Job after the fix")
    assert runs.wait_phase("invalid", "Pending")["observedGeneration"] == 2
    assert runs.condition("invalid", "Failed") is None
    unschedulable = wait(
        lambda: [e for e in runs.events("invalid") if e[1] == "Unschedulable"], "the scheduler's reason"
    )
    assert "Insufficient cpu" in unschedulable[0][2], unschedulable  # the real scheduler's words


def test_trainer_config_error_after_a_restart_fails_at_once_with_its_log_line(
    runs: Runs, pod_players: PodPlayers
) -> None:
    pod_players.play("badconfig-train-", namespace=NAMESPACE)
    runs.apply("badconfig")
    runs.wait_phase("badconfig", "Training")
    first_attempt = wait(lambda: _all_playing(pod_players, "badconfig-train-", 2), "both training pods")
    pod_players.finish(first_attempt[0], code=1, log="NCCL timeout")  # rank 0
    wait(lambda: runs.status("badconfig").get("restarts") == 1, "restarts == 1")

    # The first attempt's rank 1 was stopped by the Job controller, not asked to exit: leave it out.
    second = lambda: set(pod_players.playing("badconfig-train-")) - set(first_attempt)
    wait(lambda: len(second()) == 2, "the second attempt's two pods running")
    log = "loading config\nworld size 3 does not divide batchSize 16"
    pod_players.finish("badconfig-train-", code=2, log=log)  # the trainer's "invalid config" exit code
    runs.wait_phase("badconfig", "Failed")
    failed = runs.condition("badconfig", "Failed")
    assert failed["reason"] == "InvalidConfig", failed
    assert "matching FailJob rule" in failed["message"], failed  # the real Job controller's words
    assert "world size 3 does not divide batchSize 16" in failed["message"], failed
    assert runs.events("badconfig")[-1][:2] == ("Warning", "InvalidConfig")
    assert runs.job("badconfig-eval") is None


def _all_playing(pod_players: PodPlayers, prefix: str, count: int) -> list[str] | None:
    playing = pod_players.playing(prefix)
    return playing if len(playing) == count else None


def test_kueue_queue_label_keeps_the_job_suspended_until_admitted(runs: Runs, pod_players: PodPlayers) -> None:
    pod_players.play("queued-train-", namespace=NAMESPACE)
    runs.apply("queued", **{"spec.runPolicy.queueName": "cpu-queue"})
    job = wait(lambda: runs.job("queued-train"), "the training Job")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cpu-queue" and job["spec"]["suspend"] is True
    runs.wait_phase("queued", "Queued")
    assert runs.pods("queued-train") == []  # the real Job controller starts nothing while suspended

    runs.cp.admin.patch(f"{JOBS_PATH}/queued-train", {"spec": {"suspend": False}})  # what Kueue's admission does
    runs.wait_phase("queued", "Training")
    assert runs.job("queued-train")["spec"]["suspend"] is False  # the operator leaves it to Kueue


def test_suspend_stops_the_pods_and_resume_starts_new_ones(runs: Runs, pod_players: PodPlayers) -> None:
    pod_players.play("pausable-train-", namespace=NAMESPACE)
    runs.apply("pausable")
    runs.wait_phase("pausable", "Training")
    before = {p["metadata"]["name"] for p in runs.pods("pausable-train")}

    runs.patch("pausable", {"spec": {"runPolicy": {"suspend": True}}})
    runs.wait_phase("pausable", "Suspended")
    assert runs.job("pausable-train")["spec"]["suspend"] is True
    assert runs.condition("pausable", "Suspended")["status"] == "True"
    wait(lambda: not runs.pods("pausable-train"), "the Job controller deleting the pods")

    runs.patch("pausable", {"spec": {"runPolicy": {"suspend": False}}})
    runs.wait_phase("pausable", "Training")
    assert runs.condition("pausable", "Suspended")["reason"] == "Resumed"
    assert not {p["metadata"]["name"] for p in runs.pods("pausable-train")} & before
    assert not [e for e in runs.events("pausable") if e[1] == "SpecChangeIgnored"]


def test_spec_edits_after_start_are_reported_not_applied(runs: Runs, pod_players: PodPlayers) -> None:
    pod_players.play("edited-train-", namespace=NAMESPACE)
    runs.apply("edited")
    runs.wait_phase("edited", "Training")
    template = runs.job("edited-train")["spec"]["template"]

    runs.patch("edited", {"spec": {"train": {"steps": 400}}})
    event = wait(lambda: [e for e in runs.events("edited") if e[1] == "SpecChangeIgnored"], "the Event")
    assert event[0][0] == "Warning" and event[0][2].startswith("spec.train.steps: ")
    assert runs.job("edited-train")["spec"]["template"] == template
    wait(lambda: runs.status("edited").get("observedGeneration") == 2, "observedGeneration 2")


def test_operator_serves_its_metrics(runs: Runs, operator: ChartOperator) -> None:
    runs.apply("counted", **{"spec.train.batchSize": 12, "spec.train.deviceBatchSize": 8})
    runs.wait_phase("counted", "Failed")

    def scrape() -> str:
        url = f"http://127.0.0.1:{operator.env['SPEEDRUN_OPERATOR_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    text = wait(lambda: 'speedrun_operator_failures_total{reason="InvalidSpec"}' in scrape() and scrape(), "metrics")
    assert 'speedrun_operator_jobs{phase="Failed"}' in text
    assert 'speedrun_operator_reconcile_duration_seconds_count{handler="create"}' in text
    assert "speedrun_operator_training_restarts_total" in text


def test_render_matches_what_the_operator_creates(runs: Runs, tmp_path: Path) -> None:
    """`speedrun render` and the operator share builders: the same command, the rendezvous id aside."""
    from speedrun_operator.operator_commands import main

    runs.apply("rendered")
    live = wait(lambda: runs.job("rendered-train"), "the training Job")
    manifest = tmp_path / "rendered.yaml"
    doc = tiny_manifest(**POD_RESOURCES)
    doc["metadata"] = {"name": "rendered", "namespace": NAMESPACE}
    manifest.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out.json"
    with pytest.MonkeyPatch.context() as mp, out.open("w") as stdout:
        mp.setattr("sys.stdout", stdout)
        assert main(["render", str(manifest), "-o", "json"]) == 0
    [rendered] = [o for o in json.loads(out.read_text())["items"] if o["metadata"]["name"] == "rendered-train"]
    command = rendered["spec"]["template"]["spec"]["containers"][0]["command"]
    live_command = live["spec"]["template"]["spec"]["containers"][0]["command"]
    # Offline there is no uid, so the rendezvous id is the name; everything else is equal.
    assert [c for c in command if not c.startswith("--rdzv-id")] == [
        c for c in live_command if not c.startswith("--rdzv-id")
    ]


def test_orphaned_children_are_adopted_not_duplicated(runs: Runs) -> None:
    orphan = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"run.json": "{}"},
              "metadata": {"name": "adopter-run", "labels": {"speedrun.dev/job": "adopter",
                                                              "speedrun.dev/role": "config"}}}  # fmt: skip
    orphan_uid = runs.cp.admin.create(f"/api/v1/namespaces/{NAMESPACE}/configmaps", orphan)["metadata"]["uid"]
    uid = runs.apply("adopter")["metadata"]["uid"]
    wait(lambda: runs.job("adopter-train"), "the training Job")
    adopted = runs.cp.admin.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/adopter-run")
    assert adopted["metadata"]["uid"] == orphan_uid
    assert [ref["uid"] for ref in adopted["metadata"]["ownerReferences"]] == [uid]
    assert runs.children("adopter")["configmaps"] == ["adopter-run"]


def test_operator_restarted_after_training_ended_adopts_and_finishes(
    runs: Runs, pod_players: PodPlayers, operator: ChartOperator
) -> None:
    pod_players.play("phoenix-train-", namespace=NAMESPACE)
    pod_players.play("phoenix-eval-", namespace=NAMESPACE)
    runs.apply("phoenix")
    runs.wait_phase("phoenix", "Training")
    before = runs.uids("phoenix")
    assert sorted(before) == ["configmaps/phoenix-run", "jobs/phoenix-train", "services/phoenix"]

    operator.stop()
    try:
        pod_players.finish("phoenix-train-")  # training ends while no operator runs
        wait(lambda: (runs.job("phoenix-train") or {}).get("status", {}).get("succeeded") == 2, "the Job complete")
    finally:
        operator.start()

    runs.wait_phase("phoenix", "Evaluating")
    after = runs.uids("phoenix")
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(after) == sorted([*before, "jobs/phoenix-eval"])
    wait(lambda: pod_players.playing("phoenix-eval-"), "the eval pod running")
    pod_players.finish("phoenix-eval-", message=json.dumps({"uri": "s3://x/r.json", "bpb": 2.0, "core": 0.1}))
    status = runs.wait_phase("phoenix", "Succeeded")
    assert (status["results"]["bpb"], status["results"]["core"]) == (2.0, 0.1)
    assert runs.uids("phoenix") == after
    reasons = [r for _, r, _ in runs.events("phoenix")]
    assert reasons == ["PodsPending", "Running", "TrainingSucceeded", "EvaluationSucceeded"], reasons
