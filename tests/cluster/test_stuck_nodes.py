"""A gang restart when a node is lost: its pod stuck Terminating no longer stalls the next attempt.

A 2-node SpeedrunJob runs as player pods (tests/cluster/players.py) on the session's real nodes,
one pod per node (each asks for more than half a node's CPU; the job tolerates the GPU node's
taint, so three nodes can take its pods). The kubelet of rank 1's node is stopped (a machine that
died or was partitioned: its container keeps running, nobody confirms anything) and rank 0 exits 1.
The Job controller fails the Job and deletes rank 1's pod, which stays Terminating (no kubelet);
the operator counts the restart and deletes the Job (Foreground), which stays too. After the node
lifecycle controller marks the node NotReady and unreachable (`--node-monitor-grace-period=30s`,
control_plane.py) and the pod's grace period plus the operator's margin pass
(stuck_pods.STUCK_MARGIN_SECONDS), the operator force-deletes the pod; the old Job goes and the
next attempt's Job and pods are created, scheduled on the nodes that remain.

A second run loses rank 1's node with no rank failing by itself: the operator marks the pod
Failed once the node is unreachable, the Job controller stops rank 0, and the gang restarts, counted as a disruption
(`status.disruptions`, not `restarts`; before, rank 0 waited in its collective until the process group's timeout).
What the design guarantees, asserted: the next attempt's Job never exists while the stuck pod
does (polled throughout), the force-delete is told in a Warning Event naming the pod and node,
the attempts' rendezvous ids differ (a straggler cannot join), and no new pod lands on the lost
node. The kubelet is started again at the end, so the session's nodes stay usable.
Before the fix the old Job stayed forever and the next attempt never came (the wait for it timed
out). Run: `pytest -m cluster tests/cluster/test_stuck_nodes.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.cluster.chart import ChartOperator
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.players import PlayerImage, PodPlayers, played_operator
from tests.cluster.real_nodes import CPU_NODES, GPU, RealNodes
from tests.support.helpers import tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-stuck"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
JOBS_PATH = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
ATTEMPT = "speedrun.dev/attempt"
INDEX = "batch.kubernetes.io/job-completion-index"
TIMEOUT = 180.0  # the node goes NotReady after 30 s, the pod is overdue 60 s after its deletion
GPU_TOLERATION = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_nodes: RealNodes, player_image: PlayerImage, pod_players: PodPlayers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChartOperator]:  # fmt: skip
    workdir = tmp_path_factory.mktemp("operator")
    values = {"operator.resyncInterval": "2"}
    with played_operator(control_plane, NAMESPACE, workdir, player_image, pod_players, **values) as op:
        yield op


def more_than_half_a_node(cp: ControlPlane, node: str) -> str:
    """A CPU request two of which do not fit on `node` (its allocatable CPU, read back)."""
    cpu = str((cp.admin.get(f"/api/v1/nodes/{node}") or {})["status"]["allocatable"]["cpu"])
    millis = int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)
    return f"{millis // 2 + 100}m"


def train_pods(cp: ControlPlane, name: str, attempt: str) -> list[dict[str, Any]]:
    pods = cp.admin.list(PODS_PATH, labels=f"batch.kubernetes.io/job-name={name}-train,{ATTEMPT}={attempt}")
    return sorted(pods, key=lambda p: p["metadata"]["labels"][INDEX])


def wait(predicate: Callable[[], Any], what: str) -> Any:
    return wait_until(predicate, TIMEOUT, what, interval=0.2)


def rdzv_id(pod_or_job: dict[str, Any]) -> str:
    spec = pod_or_job["spec"].get("template", {}).get("spec") or pod_or_job["spec"]
    return next(c for c in spec["containers"][0]["command"] if c.startswith("--rdzv-id="))


def start(cp: ControlPlane, kubectl: Kubectl, pod_players: PodPlayers, name: str) -> list[dict[str, Any]]:
    """A 2-node run of players, training: its two pods, on two nodes."""
    pod_players.play(f"{name}-train-", namespace=NAMESPACE)
    doc = tiny_manifest(**{"spec.resources.cpu": more_than_half_a_node(cp, CPU_NODES[0]),
                           "spec.resources.memory": "128Mi", "spec.resources.tolerations": GPU_TOLERATION,
                           "spec.runPolicy.maxRestarts": 2})  # fmt: skip
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    wait(lambda: status(cp, name).get("phase") == "Training", "Training")
    pods = wait(lambda: len(p := train_pods(cp, name, "0")) == 2 and len(pod_players.playing(f"{name}-train-")) == 2
                and p, "both players of attempt 0 running")  # fmt: skip
    assert pods[0]["spec"]["nodeName"] != pods[1]["spec"]["nodeName"], "each asks for more than half a node"
    return list(pods)


def status(cp: ControlPlane, name: str) -> dict[str, Any]:
    return (cp.admin.get(f"{SRJ_PATH}/{name}") or {}).get("status") or {}


def events(cp: ControlPlane, name: str, reason: str) -> list[dict[str, Any]]:
    found = cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/events", fields=f"involvedObject.name={name}")
    return [e for e in found if e["reason"] == reason]


def next_attempt(
    cp: ControlPlane, nodes: RealNodes, name: str, lost: str, restarts: int, disruptions: int
) -> list[dict[str, Any]]:
    """Attempt 1's pods, scheduled (never on the lost node) and ready; what the restart was counted as."""
    second = wait(lambda: len(p := train_pods(cp, name, "1")) == 2 and all(x["spec"].get("nodeName") for x in p)
                  and p, "attempt 1's pods scheduled")  # fmt: skip
    assert lost not in {p["spec"]["nodeName"] for p in second}, [p["spec"]["nodeName"] for p in second]
    wait(lambda: (cp.admin.get(f"{JOBS_PATH}/{name}-train") or {}).get("status", {}).get("ready") == 2,
         f"attempt 1 training\n{nodes.log_tails()}")  # fmt: skip
    # Every attempt starts Pending; Training once its ranks all run (lifecycle.py).
    now = wait(lambda: (s := status(cp, name)).get("phase") == "Training" and s, f"{name} Training again")
    assert (now.get("restarts", 0), now.get("disruptions", 0)) == (restarts, disruptions), now
    return list(second)


def remove(cp: ControlPlane, name: str) -> None:
    """The run and its pods gone: the next test's pods need the nodes' CPU."""
    cp.admin.delete(f"{SRJ_PATH}/{name}")
    wait(lambda: not cp.admin.list(PODS_PATH, labels=f"speedrun.dev/job={name}"), f"the pods of {name} gone")


def test_a_pod_stuck_on_a_lost_node_does_not_stall_the_restart_and_attempts_never_overlap(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, pod_players: PodPlayers,
    operator: ChartOperator,
) -> None:  # fmt: skip
    cp = control_plane
    rank_0, rank_1 = start(cp, kubectl, pod_players, "stuck")
    lost, stuck_uid = rank_1["spec"]["nodeName"], rank_1["metadata"]["uid"]

    kube_nodes.stop_kubelet(lost)
    try:
        pod_players.finish(rank_0["metadata"]["name"], code=1, log="NCCL: rank 1 unreachable")
        wait(lambda: status(cp, "stuck").get("restarts") == 1, "restarts == 1")

        # Until the next attempt's Job exists, poll: never both it and the stuck pod at once.
        seen_stuck, next_job = False, None
        deadline = time.monotonic() + TIMEOUT
        while next_job is None:
            assert time.monotonic() < deadline, (
                f"no next attempt within {TIMEOUT} s (status {status(cp, 'stuck')})\n{kube_nodes.log_tails()}"
            )
            old = [p for p in cp.admin.list(PODS_PATH) if p["metadata"]["uid"] == stuck_uid]
            job = cp.admin.get(f"{JOBS_PATH}/stuck-train")
            attempt = ((job or {}).get("metadata", {}).get("labels") or {}).get(ATTEMPT)
            if attempt == "1":
                next_job = job
                assert not old, f"attempt 1's Job exists while attempt 0's pod does: {old[0]['status']}"
            elif old and old[0]["metadata"].get("deletionTimestamp"):
                seen_stuck = True
            time.sleep(0.2)
        assert seen_stuck, "rank 1's pod was never seen Terminating"

        [event] = events(cp, "stuck", "StuckPodsForceDeleted")
        assert event["type"] == "Warning" and "unreachable" in event["message"], event
        assert rank_1["metadata"]["name"] in event["message"] and lost in event["message"], event
        assert rdzv_id(next_job) != rdzv_id(rank_1), "a straggler of attempt 0 could join attempt 1"
        next_attempt(cp, kube_nodes, "stuck", lost, restarts=1, disruptions=0)
    finally:
        kube_nodes.start_kubelet(lost)  # back, it finds the force-deleted pod gone and stops its container
        remove(cp, "stuck")


def test_a_lost_node_fails_the_running_attempt_at_once_and_the_next_one_starts(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, pod_players: PodPlayers,
    operator: ChartOperator,
) -> None:  # fmt: skip
    """No rank fails by itself: rank 1's node is lost, rank 0 would wait in its collective until the
    process group's timeout. The operator marks rank 1's pod Failed once the node is unreachable,
    the Job controller stops rank 0 (never asked to exit by the test), and the gang restarts."""
    cp = control_plane
    rank_0, rank_1 = start(cp, kubectl, pod_players, "lost")
    lost = rank_1["spec"]["nodeName"]
    kube_nodes.stop_kubelet(lost)
    try:
        # A lost node is a disruption: not counted against maxRestarts (lifecycle.py).
        wait(lambda: status(cp, "lost").get("disruptions") == 1, f"disruptions == 1\n{kube_nodes.log_tails()}")
        [event] = events(cp, "lost", "NodeLost")
        assert event["type"] == "Warning" and rank_1["metadata"]["name"] in event["message"], event
        assert f"on node {lost} (unreachable" in event["message"], event
        next_attempt(cp, kube_nodes, "lost", lost, restarts=0, disruptions=1)
        uids = {p["metadata"]["uid"] for p in cp.admin.list(PODS_PATH)}
        assert not uids & {rank_0["metadata"]["uid"], rank_1["metadata"]["uid"]}, "attempt 0's pods are gone"
    finally:
        kube_nodes.start_kubelet(lost)
        remove(cp, "lost")
