"""stuck_pods.py: which pods of a replaced attempt are force-deleted, and which are left to stop."""

from __future__ import annotations

from typing import Any

import pytest

from speedrun_operator import kube, stuck_pods


@pytest.fixture(autouse=True)
def _fresh_node_reads() -> Any:
    stuck_pods.forget_nodes()  # fail_lost's reads are shared by every pass: none from another test
    yield
    stuck_pods.forget_nodes()


JOB_UID = "job-uid-0"
DELETED = "2026-01-01T00:00:00Z"  # the pods' deletionTimestamp (their grace period already in it)
LATER = "2026-01-01T00:00:31Z"  # past it by more than STUCK_MARGIN_SECONDS
SOON = "2026-01-01T00:00:10Z"


def pod(name: str, node: str | None, deleted: str | None = DELETED, owner: str = JOB_UID) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "ownerReferences": [{"uid": owner}]}
    if deleted:
        meta["deletionTimestamp"] = deleted
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}}


def node(ready: str, *taints: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": "Ready", "status": ready}]},
            "spec": {"taints": [{"key": t, "effect": "NoExecute"} for t in taints]}}  # fmt: skip


UNREACHABLE = node("Unknown", stuck_pods.TAINT_UNREACHABLE)


@pytest.mark.parametrize(
    ("found", "lost"),
    [
        (None, True),  # the Node object is gone
        (UNREACHABLE, True),  # the kubelet stopped reporting: the node lifecycle controller's taint
        (node("False", stuck_pods.TAINT_OUT_OF_SERVICE), True),  # an admin's word: shut down
        (node("True"), False),  # its kubelet answers: the pod is stopping
        (node("True", stuck_pods.TAINT_UNREACHABLE), False),  # Ready again, taint not yet removed
        (node("False", "node.kubernetes.io/not-ready"), False),  # the kubelet reports, NotReady
        (node("Unknown"), False),  # not tainted (yet): not called lost
    ],
)
def test_a_node_is_lost_only_when_no_kubelet_can_confirm(found: dict[str, Any] | None, lost: bool) -> None:
    assert (stuck_pods.node_lost(found) is not None) == lost


def test_only_overdue_pods_on_lost_nodes_are_stuck() -> None:
    pods = [pod("a", "lost"), pod("b", "fine"), pod("c", "lost", deleted=None), pod("d", None)]
    nodes = {"lost": UNREACHABLE, "fine": node("True")}
    assert [p.name for p in stuck_pods.stuck(pods, nodes, LATER)] == ["a"]
    assert stuck_pods.stuck(pods, nodes, SOON) == []  # within the margin: its kubelet may still confirm
    assert stuck_pods.stuck(pods, {}, LATER) == []  # a node not read (403) is never called lost


class FakeKube:
    def __init__(self, nodes: dict[str, dict[str, Any] | None], forbidden: set[str] = frozenset()) -> None:
        self.nodes, self.forbidden = nodes, forbidden
        self.deleted: list[tuple[str, str, dict[str, Any]]] = []
        self.read: list[str] = []

    def get(self, kind: kube.Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert kind is kube.NODE and namespace is None
        self.read.append(name)
        if name in self.forbidden:
            raise kube.KubeError(403, "Forbidden", "nodes is forbidden")
        return self.nodes.get(name)

    def delete(self, kind: kube.Kind, namespace: str | None, name: str, **options: Any) -> None:
        self.deleted.append((kind.kind, f"{namespace}/{name}", options))


def test_release_force_deletes_by_uid_only_the_replaced_jobs_stuck_pods() -> None:
    job = {"metadata": {"name": "run-train", "namespace": "ns", "uid": JOB_UID}}
    pods = [pod("old-0", "gone"), pod("old-1", "fine"), pod("new-0", "lost2", owner="job-uid-1"),
            pod("old-2", "hidden")]  # fmt: skip
    client = FakeKube({"fine": node("True"), "lost2": UNREACHABLE}, forbidden={"hidden"})
    released = stuck_pods.release(client, job, pods, LATER)  # type: ignore[arg-type]
    assert [p.describe() for p in released] == ["old-0 on node gone (the Node is gone)"]
    assert client.deleted == [("Pod", "ns/old-0", {"grace_seconds": 0, "uid": "uid-old-0"})]
    assert "lost2" not in client.read  # another attempt's pod: its node is not even read


def test_release_reads_no_node_before_a_pod_is_overdue() -> None:
    job = {"metadata": {"name": "run-train", "namespace": "ns", "uid": JOB_UID}}
    client = FakeKube({"lost": UNREACHABLE})
    assert stuck_pods.release(client, job, [pod("old-0", "lost")], SOON) == []  # type: ignore[arg-type]
    assert client.read == [] and client.deleted == []


class PatchingKube(FakeKube):
    def __init__(self, nodes: dict[str, dict[str, Any] | None]) -> None:
        super().__init__(nodes)
        self.patched: list[tuple[str, dict[str, Any], str | None]] = []

    def patch(self, kind: kube.Kind, namespace: str | None, name: str, body: dict[str, Any],
              subresource: str | None = None) -> dict[str, Any]:  # fmt: skip
        self.patched.append((f"{namespace}/{name}", body, subresource))
        return {}


def running(name: str, node: str, is_ready: bool, owner: str = JOB_UID) -> dict[str, Any]:
    out = pod(name, node, deleted=None, owner=owner)
    out["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(is_ready)}]}
    return out


def test_fail_lost_marks_failed_only_the_running_attempts_not_ready_pods_on_lost_nodes() -> None:
    job = {"metadata": {"name": "run-train", "namespace": "ns", "uid": JOB_UID}}
    pods = [running("r0", "fine", False), running("r1", "lost", False), running("r2", "lost", True),
            running("other", "lost", False, owner="job-uid-9"), pod("gone", "lost")]  # fmt: skip
    client = PatchingKube({"fine": node("True"), "lost": UNREACHABLE})
    marked = stuck_pods.fail_lost(client, job, pods)  # type: ignore[arg-type]
    assert [p.name for p in marked] == ["r1"]
    [(where, body, subresource)] = client.patched
    assert (where, subresource, body["status"]["phase"], body["status"]["reason"]) == (
        "ns/r1",
        "status",
        "Failed",
        "NodeLost",
    )
    assert "node lost is lost" in body["status"]["message"] and "unreachable" in body["status"]["message"]
    assert sorted(client.read) == ["fine", "lost"]  # only the nodes of pods not Ready


def test_fail_lost_reads_no_node_while_every_pod_is_ready() -> None:
    job = {"metadata": {"name": "run-train", "namespace": "ns", "uid": JOB_UID}}
    client = PatchingKube({"lost": UNREACHABLE})
    assert stuck_pods.fail_lost(client, job, [running("r0", "lost", True)]) == []  # type: ignore[arg-type]
    assert client.read == [] and client.patched == []


def test_fail_lost_reuses_a_recent_node_read_and_release_never_does(monkeypatch: pytest.MonkeyPatch) -> None:
    job = {"metadata": {"name": "run-train", "namespace": "ns", "uid": JOB_UID}}
    clock = [1000.0]
    monkeypatch.setattr(stuck_pods.time, "monotonic", lambda: clock[0])
    client = PatchingKube({"starting": node("True")})
    for _ in range(3):  # three passes while a pod pulls its image
        assert stuck_pods.fail_lost(client, job, [running("r0", "starting", False)]) == []  # type: ignore[arg-type]
    assert client.read == ["starting"]
    clock[0] += stuck_pods.NODE_READ_TTL_SECONDS
    client.nodes["starting"] = UNREACHABLE  # lost since: seen once the read is old enough
    assert [p.name for p in stuck_pods.fail_lost(client, job, [running("r0", "starting", False)])] == ["r0"]  # type: ignore[arg-type]
    stuck_pods.release(client, job, [pod("old-0", "starting")], LATER)  # type: ignore[arg-type]
    assert client.read == ["starting"] * 3  # release read it again at once
