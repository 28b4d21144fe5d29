"""Children (operator/speedrun_operator/handlers/children.py): get-or-create once, and never adopt
what another controller owns."""

from __future__ import annotations

import threading
from typing import Any

import pytest


class FakeKube:
    """Just enough of KubeClient for ensure_child: one dict per kind."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.creates = 0

    def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def create(self, kind: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.creates += 1
        self.objects[body["metadata"]["name"]] = body
        return body

    def patch(self, kind: Any, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.objects[name]["metadata"].update(patch["metadata"])
        return self.objects[name]


OWNER = {
    "apiVersion": "speedrun.dev/v1alpha1",
    "kind": "SpeedrunJob",
    "metadata": {"name": "j", "namespace": "n", "uid": "u1"},
}


def test_ensure_child_creates_once_then_gets() -> None:
    from speedrun_operator import kube
    from speedrun_operator.handlers.children import ensure_child

    client = FakeKube()
    manifest = {"metadata": {"name": "j-run", "labels": {"speedrun.dev/job": "j"}}}
    first = ensure_child(client, kube.CONFIGMAP, manifest, OWNER)  # type: ignore[arg-type]
    second = ensure_child(client, kube.CONFIGMAP, manifest, OWNER)  # type: ignore[arg-type]
    assert client.creates == 1 and first is second
    assert first["metadata"]["ownerReferences"][0]["uid"] == "u1" and "ownerReferences" not in manifest["metadata"]


def test_ensure_child_refuses_what_another_controller_owns() -> None:
    from speedrun_operator import kube
    from speedrun_operator.handlers.children import ChildConflict, ensure_child

    client = FakeKube()
    stranger = {"kind": "Job", "name": "other", "uid": "u0", "controller": True}
    client.objects["j-run"] = {"metadata": {"name": "j-run", "namespace": "n", "ownerReferences": [stranger]}}
    with pytest.raises(ChildConflict, match="controlled by Job other"):
        ensure_child(client, kube.CONFIGMAP, {"metadata": {"name": "j-run"}}, OWNER)  # type: ignore[arg-type]
    client.objects["j-run"] = {"metadata": {"name": "j-run", "namespace": "n", "labels": {}}}
    with pytest.raises(ChildConflict, match="not made for this SpeedrunJob"):
        ensure_child(client, kube.CONFIGMAP, {"metadata": {"name": "j-run"}}, OWNER)  # type: ignore[arg-type]


def test_ensure_job_builds_and_ensures_what_its_pods_need_only_when_it_is_missing() -> None:
    from speedrun_operator import kube
    from speedrun_operator.handlers.children import ensure_job

    client, built = FakeKube(), []

    def build() -> dict[str, Any]:
        built.append("job")
        return {"metadata": {"name": "j-train", "labels": {"speedrun.dev/job": "j"}}}

    def needs() -> list[tuple[Any, dict[str, Any]]]:
        built.append("needs")
        return [(kube.CONFIGMAP, {"metadata": {"name": "j-run"}}), (kube.SERVICE, {"metadata": {"name": "j-rdzv"}})]

    first = ensure_job(client, OWNER, "j-train", build, needs)  # type: ignore[arg-type]
    assert built == ["needs", "job"] and set(client.objects) == {"j-run", "j-rdzv", "j-train"}
    assert list(client.objects)[-1] == "j-train"  # once what its pods need exists
    del client.objects["j-run"]  # gone while the Job exists: the pods have read it already
    assert ensure_job(client, OWNER, "j-train", build, needs) is first  # type: ignore[arg-type]
    assert built == ["needs", "job"] and client.creates == 3


class MeetingKube(FakeKube):
    """The ConfigMap's and the Service's creates must both be in flight before either returns (a
    sequential caller breaks the barrier); `refuse` names a create that then fails."""

    def __init__(self, refuse: str = "") -> None:
        super().__init__()
        self.meeting, self.refuse = threading.Barrier(2, timeout=10), refuse

    def create(self, kind: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind.kind in ("ConfigMap", "Service"):
            self.meeting.wait()
        if body["metadata"]["name"] == self.refuse:
            from speedrun_operator import kube

            raise kube.KubeError(422, "Invalid", f"{self.refuse} refused")
        return super().create(kind, namespace, body)


def test_what_a_job_needs_is_created_side_by_side_and_the_job_only_after_it_all_exists() -> None:
    from speedrun_operator import kube
    from speedrun_operator.handlers.children import ensure_job

    def needs() -> list[tuple[Any, dict[str, Any]]]:
        return [(kube.CONFIGMAP, {"metadata": {"name": "j-run"}}), (kube.SERVICE, {"metadata": {"name": "j-rdzv"}})]

    def build() -> dict[str, Any]:
        return {"metadata": {"name": "j-train", "labels": {"speedrun.dev/job": "j"}}}

    client = MeetingKube()
    ensure_job(client, OWNER, "j-train", build, needs)  # type: ignore[arg-type]
    assert set(client.objects) == {"j-run", "j-rdzv", "j-train"}
    refused = MeetingKube(refuse="j-rdzv")
    with pytest.raises(kube.KubeError, match="j-rdzv refused"):
        ensure_job(refused, OWNER, "j-train", build, needs)  # type: ignore[arg-type]
    assert set(refused.objects) == {"j-run"}  # no Job whose pods would wait for a Service
