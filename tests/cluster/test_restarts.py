"""Gang restarts that count only what the job did, and a deadline and a reason for every attempt.

The chart's operator (its RBAC enforced) drives SpeedrunJobs through Kubernetes' own Job
controller, scheduler and garbage collector; the training pods run the player image
(tests/cluster/players.py) in real containers on the session's real kubelets, each exiting when the
test says, as a torchrun agent would. Every job's pods are pinned to one node by its hostname
label (`spec.resources.nodeSelector`), so CPU requests decide what fits there and cordoning that
node stands for a node pool that is gone.
- A pod evicted through the real Eviction API (the apiserver adds `DisruptionTarget`, as for a
  drain or a spot VM's termination handler): the training Job fails on it (podFailurePolicy), the
  gang restarts, `status.restarts` stays 0, `status.disruptions` is 1 and the Event names the pod
  and its node (maxRestarts is 0: a counted restart would fail the run).
- A rank that never arrives (its pod cannot fit on the node) while the other runs and exits 1, as
  its agent would at its join timeout: no restart counted (maxRestarts 0); the next attempt starts
  at once, and when it fails the same way the one after waits 10 s (the restart backoff: its Job is
  created only then, the condition and `kubectl get` say when); the run fails at the start-up
  deadline instead, counted from the first attempt.
- A second attempt that cannot schedule (the node cordoned after a counted restart): Pending with
  the scheduler's reason and a Warning Event, then Failed at its own start-up deadline.
Run: `pytest -m cluster tests/cluster/test_restarts.py` (as root).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.cluster.chart import ChartOperator
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.players import PlayerImage, PodPlayers, played_operator
from tests.cluster.real_nodes import RealNodes
from tests.support.helpers import tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-restarts"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
JOBS_PATH, ATTEMPT = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", "speedrun.dev/attempt"
INDEX, JOB_NAME = "batch.kubernetes.io/job-completion-index", "batch.kubernetes.io/job-name"
HOSTNAME = "kubernetes.io/hostname"
POD_RESOURCES = {"spec.resources.cpu": "100m", "spec.resources.memory": "128Mi"}
TIMEOUT = 180.0  # generous: the machine is shared


def wait(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_nodes: RealNodes, player_image: PlayerImage, pod_players: PodPlayers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChartOperator]:  # fmt: skip
    # No gang (builders/placement.py): a rank that cannot fit while the other runs is the point of
    # a test here, and a gang would bind neither (test_placement.py shows that side).
    workdir = tmp_path_factory.mktemp("operator")
    values = {"operator.gangScheduling": "none"}
    with played_operator(control_plane, NAMESPACE, workdir, player_image, pod_players, **values) as op:
        yield op


class Restarts:
    """One namespace's SpeedrunJobs, pinned to `node`, read and acted on as the admin."""

    def __init__(self, cp: ControlPlane, kubectl: Kubectl, node: str) -> None:
        self.cp, self.kubectl, self.node = cp, kubectl, node

    def apply(self, name: str, **changes: Any) -> None:
        pinned = {"spec.resources.nodeSelector": {HOSTNAME: self.node}}
        doc = tiny_manifest(**{**POD_RESOURCES, **pinned, **changes})
        doc["metadata"] = {"name": name, "namespace": NAMESPACE}
        self.kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))

    def status(self, name: str) -> dict[str, Any]:
        """The status as the server holds it (counts that stayed 0 are never written: absent)."""
        return (self.cp.admin.get(f"{SRJ_PATH}/{name}") or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        wait(lambda: self.status(name).get("phase") == phase, f"{name} {phase} (now {self.status(name)})", timeout)
        return self.status(name)

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.cp.admin.list(PODS_PATH, labels=f"{JOB_NAME}={name}-train")

    def events(self, name: str) -> list[tuple[str, str, str]]:
        found = self.cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/events", fields=f"involvedObject.name={name}")
        found = [e for e in found if e["involvedObject"]["kind"] == "SpeedrunJob"]
        found.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [(e["type"], e["reason"], e.get("message", "")) for e in found]

    def event(self, name: str, reason: str) -> tuple[str, str, str] | None:
        return next((e for e in self.events(name) if e[1] == reason), None)

    def cordon(self, unschedulable: bool) -> None:
        self.cp.admin.patch(f"/api/v1/nodes/{self.node}", {"spec": {"unschedulable": unschedulable}})

    def delete(self, name: str) -> None:
        self.kubectl.run("delete", "srj", name, "-n", NAMESPACE, "--wait=false")


@pytest.fixture
def runs(control_plane: ControlPlane, kubectl: Kubectl, kube_nodes: RealNodes, operator: ChartOperator) -> Restarts:
    return Restarts(control_plane, kubectl, kube_nodes.names[0])


def metric(operator: ChartOperator, name: str) -> float:
    """A counter of the operator's /metrics (0 when absent)."""
    url = f"http://127.0.0.1:{operator.env['SPEEDRUN_OPERATOR_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.split(" ")[1]) for line in text.splitlines() if line.split(" ")[0] == name)


def playing(pod_players: PodPlayers, prefix: str, count: int) -> list[str] | None:
    found = pod_players.playing(prefix)
    return found if len(found) == count else None


def test_an_evicted_pod_restarts_the_gang_without_counting_a_restart(
    runs: Restarts, pod_players: PodPlayers, operator: ChartOperator
) -> None:
    pod_players.play("evicted-train-", namespace=NAMESPACE)
    runs.apply("evicted", **{"spec.runPolicy.maxRestarts": 0})
    runs.wait_phase("evicted", "Training")
    first = wait(lambda: playing(pod_players, "evicted-train-", 2), "both training pods playing")
    [rank1] = [p for p in runs.pods("evicted") if p["metadata"]["labels"][INDEX] == "1"]
    victim = rank1["metadata"]["name"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim, "namespace": NAMESPACE}}
    runs.cp.admin.create(f"{PODS_PATH}/{victim}/eviction", eviction)  # the apiserver adds DisruptionTarget
    # As torchrun's agent would once its peer is gone: the survivor exits 1 (if it still runs).
    wait(lambda: victim not in {p["metadata"]["name"] for p in runs.pods("evicted")}, "the evicted pod gone")
    pod_players.finish(next(n for n in first if n != victim), code=1, log="rendezvous closed: a peer left")

    event = wait(lambda: runs.event("evicted", "GangRestartAfterDisruption"), "the GangRestartAfterDisruption Event")
    # The pod's own DisruptionTarget reason ("was evicted ... EvictionByEvictionAPI") when the operator
    # reads the pod before the Job controller lets it go; once it is gone, the Job's message
    # ("was disrupted (DisruptionTarget)"). Either way the pod and its node are named.
    assert event[0] == "Warning" and f"pod {victim} on node {runs.node} was " in event[2], event
    assert "DisruptionTarget" in event[2] and "not counted" in event[2], event
    status = runs.status("evicted")
    assert (status.get("restarts", 0), status.get("disruptions", 0), status.get("attempt", 0)) == (0, 1, 1), status
    assert metric(operator, "speedrun_operator_training_disruptions_total") >= 1
    # The next attempt's pods run: training again, nothing counted, nothing failed.
    second = lambda: set(pod_players.playing("evicted-train-")) - set(first)
    wait(lambda: len(second()) == 2, "the second attempt's two pods playing")
    status = runs.wait_phase("evicted", "Training")
    assert (status.get("restarts", 0), status.get("disruptions", 0)) == (0, 1), status
    assert not [e for e in runs.events("evicted") if e[1] in ("GangRestart", "MaxRestartsExceeded")]
    runs.delete("evicted")


def test_a_rank_that_never_arrives_burns_no_restart_before_the_startup_deadline(
    runs: Restarts, pod_players: PodPlayers, operator: ChartOperator
) -> None:
    pod_players.play("lonely-train-", namespace=NAMESPACE)
    # 1.1 CPU a pod on a 2-CPU node: one rank runs, the other never fits (Unschedulable).
    runs.apply("lonely", **{"spec.resources.cpu": "1100m", "spec.runPolicy.maxRestarts": 0,
                            "spec.runPolicy.startupDeadlineSeconds": 120})  # fmt: skip
    [alone] = wait(lambda: playing(pod_players, "lonely-train-", 1), "one rank playing")
    shown = lambda: runs.condition("lonely", "Training")
    wait(lambda: shown().get("reason") == "Unschedulable" and shown()["message"].startswith("1 of 2 training pods"),
         "one rank ready, the other Unschedulable")  # fmt: skip
    assert runs.status("lonely")["phase"] == "Pending"
    pod_players.finish(alone, code=1, log="RendezvousTimeoutError: the other nodes did not join")

    event = wait(lambda: runs.event("lonely", "GangRestartBeforeStart"), "the GangRestartBeforeStart Event")
    assert "attempt 0 failed before all 2 nodes joined" in event[2] and "RendezvousTimeoutError" in event[2], event
    status = runs.status("lonely")
    assert (status.get("restarts", 0), status.get("attempt", 0), status["phase"]) == (0, 1, "Pending"), status
    assert status.get("startupStartTime"), status
    assert metric(operator, "speedrun_operator_training_early_restarts_total") >= 1
    assert "next attempt now" in event[2] and "nextAttemptTime" not in status, (event, status)
    # The next attempt is just as stuck, and its rank gives up too: the second failure in a row
    # waits 10 s before the next attempt's Job is created (the restart backoff).
    # (Picked by its attempt label: attempt 0's other rank may still be bound once the CPU is free.)
    attempt_1 = lambda: {p["metadata"]["name"] for p in runs.pods("lonely") if p["metadata"]["labels"][ATTEMPT] == "1"}
    again = wait(lambda: sorted(set(pod_players.playing("lonely-train-")) & attempt_1()), "attempt 1's rank playing")
    pod_players.finish(again[0], code=1, log="RendezvousTimeoutError: the other nodes did not join")

    def second_failure() -> dict[str, Any] | None:
        status = runs.status("lonely")
        return status if status.get("startupFailures") == 2 or status.get("phase") == "Failed" else None

    status = wait(second_failure, "a second failure before start")
    assert status.get("startupFailures") == 2, (status, runs.events("lonely"))
    after = status["nextAttemptTime"]
    listed = runs.kubectl.run("get", "srj", "lonely", "-n", NAMESPACE, "-o", "wide").stdout  # Next-Attempt
    assert after in listed or runs.status("lonely").get("nextAttemptTime") is None, listed
    cond = runs.condition("lonely", "Training")
    assert cond["reason"] == "FailedBeforeStart", cond
    assert f"attempt 1 failed before all 2 nodes joined; next attempt in 10 s, at {after}" in cond["message"], cond
    third = lambda: (j := runs.cp.admin.get(f"{JOBS_PATH}/lonely-train")) and j["metadata"]["labels"][ATTEMPT] == "2"
    job = wait(lambda: third() and runs.cp.admin.get(f"{JOBS_PATH}/lonely-train"), "the third attempt's Job")
    assert job["metadata"]["creationTimestamp"] >= after, (job["metadata"], after)
    # The deadline, counted from the first attempt, ends the run.
    status = runs.wait_phase("lonely", "Failed")
    failed = runs.condition("lonely", "Failed")
    assert failed["reason"] == "StartupDeadlineExceeded" and "(120 s)" in failed["message"], failed
    assert status.get("restarts", 0) == 0, status
    assert not [e for e in runs.events("lonely") if e[1] in ("GangRestart", "MaxRestartsExceeded")]
    runs.delete("lonely")


def test_a_second_attempt_that_cannot_schedule_shows_its_reason_and_fails_at_its_deadline(
    runs: Restarts, pod_players: PodPlayers
) -> None:
    pod_players.play("stranded-train-", namespace=NAMESPACE)
    runs.apply("stranded", **{"spec.runPolicy.maxRestarts": 2, "spec.runPolicy.startupDeadlineSeconds": 45})
    runs.wait_phase("stranded", "Training")
    first = wait(lambda: playing(pod_players, "stranded-train-", 2), "both training pods playing")
    runs.cordon(True)  # the node pool is gone: the next attempt's pods cannot be placed
    try:
        pod_players.finish(first[0], code=1, log="CUDA error: an illegal memory access was encountered")
        wait(lambda: runs.status("stranded").get("restarts") == 1, "restarts == 1")
        event = wait(lambda: runs.event("stranded", "Unschedulable"), "the second attempt's Unschedulable Event")
        assert event[0] == "Warning" and event[2].startswith("Pending: 0 of 2 training pods ready"), event
        assert "unschedulable" in event[2], event  # the real scheduler's words: the node is cordoned
        cond = runs.condition("stranded", "Training")
        assert (cond["status"], runs.status("stranded")["phase"]) == ("False", "Pending"), cond
        status = runs.wait_phase("stranded", "Failed")
    finally:
        runs.cordon(False)
    failed = runs.condition("stranded", "Failed")
    assert failed["reason"] == "StartupDeadlineExceeded" and "(45 s)" in failed["message"], failed
    assert "0 of 2 ready" in failed["message"] and "Unschedulable" in failed["message"], failed
    assert (status.get("restarts", 0), status.get("attempt", 0)) == (1, 1), status
    runs.delete("stranded")
