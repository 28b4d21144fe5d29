"""Speedruns in real containers: the built images, moto S3, and the chart's operator on a real node.

Shared by the e2e modules that run SpeedrunJobs on the real kubelets (tests/e2e/test_real_*.py):
- `built_images` (session): the operator and trainer images built from the Dockerfile by buildah
  (tests/support/images.py), pushed to one loopback registry the real nodes trust. Session-scoped
  so that every module shares the one registry and each node's containerd pulls the 3.3 GB trainer
  image once per session;
- `s3` (session): moto's S3 server on an address the pods reach, the results' and checkpoints' store;
- `chart_operator(...)`: helm installs the chart with those images into a namespace of its own
  (a release of its own, so two modules' RBAC objects never collide), waits for the operator pod
  to be Ready on a real node, and yields a `RealSpeedruns` to drive and read jobs there. At the end
  the Deployment goes first, else its ReplicaSet re-creates the pod the nodes' teardown deletes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.cluster.api import ApiError
from tests.cluster.chart import install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.real_nodes import RealNodes, real_node_pod
from tests.cluster.speedruns import REAL_BUCKET as BUCKET
from tests.cluster.speedruns import S3_SECRET, create_s3_secret, saved_steps, srj_events
from tests.support import images
from tests.support.helpers import tiny_manifest, with_changes
from tests.support.s3 import GatedMotoServer

# Generous: the first pull of the trainer image into each node's containerd takes minutes.
OPERATOR_READY_TIMEOUT, RUN_TIMEOUT = 600.0, 1500.0
UNSEEN_TIMEOUT = 180.0  # a Ready operator sets a phase at once; none by then is a broken operator
OPERATOR_LABELS = "app.kubernetes.io/component=operator"


def split(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


def pod_log(cp: ControlPlane, pod: dict[str, Any], previous: bool = False, lines: int | None = 40) -> str:
    """The container's log through the apiserver (the kubelet's API): its last `lines`, or all of it."""
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/log"
    query = {**({"tailLines": str(lines)} if lines else {}), **({"previous": "true"} if previous else {})}
    try:
        return str(cp.admin.request("GET", path, query=query, raw=True))
    except ApiError as err:  # the log is a diagnostic: its absence must not hide the failure
        return f"(no log: {err})"


@dataclass
class RealSpeedruns:
    """SpeedrunJobs in one namespace served by the chart's operator in its container."""

    cp: ControlPlane
    kubectl: Kubectl
    namespace: str
    s3_url: str
    seen: dict[str, list[str | None]] = field(default_factory=dict)  # the phases `follow` saw, per job

    @property
    def srj_path(self) -> str:
        return f"/apis/speedrun.dev/v1alpha1/namespaces/{self.namespace}/speedrunjobs"

    def manifest(self, name: str, **changes: Any) -> dict[str, Any]:
        """The CPU-tiny job; dotted keys change it."""
        doc = tiny_manifest(**{"spec.train.evalEvery": 50})
        doc["metadata"] = {"name": name, "namespace": self.namespace}
        return with_changes(doc, **changes)

    def apply(self, doc: dict[str, Any]) -> None:
        self.kubectl.run("apply", "-f", "-", stdin=json.dumps(doc))

    def delete(self, name: str) -> None:
        self.kubectl.run("delete", "srj", name, "-n", self.namespace, "--wait=false")

    def srj(self, name: str) -> dict[str, Any]:
        return self.cp.admin.get(f"{self.srj_path}/{name}") or {}

    def status(self, name: str) -> dict[str, Any]:
        return self.srj(name).get("status") or {}

    def phase(self, name: str) -> str | None:
        return self.status(name).get("phase")

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def events(self, name: str) -> list[dict[str, Any]]:
        found = srj_events(self.cp, self.namespace, name)
        return sorted(found, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.events(name)]

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.cp.admin.list(f"/api/v1/namespaces/{self.namespace}/pods", labels=f"speedrun.dev/job={name}")

    def jobs(self, name: str) -> list[dict[str, Any]]:
        return self.cp.admin.list(f"/apis/batch/v1/namespaces/{self.namespace}/jobs", labels=f"speedrun.dev/job={name}")

    def operator_pods(self) -> list[dict[str, Any]]:
        return self.cp.admin.list(f"/api/v1/namespaces/{self.namespace}/pods", labels=OPERATOR_LABELS)

    def saved_steps(self, name: str) -> list[int]:
        return saved_steps(self.s3_url, BUCKET, f"runs/{self.namespace}/{name}/checkpoints/")

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = RUN_TIMEOUT) -> Any:
        return wait_until(predicate, timeout, what, interval=1.0)

    def follow(self, name: str, end: str) -> dict[str, Any]:
        """Wait for a terminal phase; assert it is `end`, with the pods and the operator's log if not."""
        deadline, seen = time.monotonic() + RUN_TIMEOUT, self.seen.setdefault(name, [])
        while True:
            status = self.status(name)
            phase = status.get("phase")
            if not seen or seen[-1] != phase:
                seen.append(phase)
            if phase in ("Succeeded", "Failed") or time.monotonic() > deadline:
                break
            if phase is None and time.monotonic() > deadline - RUN_TIMEOUT + UNSEEN_TIMEOUT:
                break  # the operator never took the job up: its log says why
            time.sleep(1)
        if phase != end:
            where = {p["metadata"]["name"]: (p["spec"].get("nodeName"), p["status"]["phase"]) for p in self.pods(name)}
            logs = "\n".join(pod_log(self.cp, p) for p in self.operator_pods())
            raise AssertionError(f"{name} ended {phase} (seen {seen}); pods {where}; status {status}\n"
                                 f"operator log:\n{logs}")  # fmt: skip
        return status


def pull_on_every_node(cp: ControlPlane, nodes: RealNodes, namespace: str, ref: str,
                       on: list[str] | None = None) -> None:  # fmt: skip
    """Have each untainted node's kubelet (where a CPU job's pods can land; or those named `on`) pull
    `ref`: a pod running `true` in it on each, to Succeeded.

    A test of a pod that never starts for another reason (a missing Secret: the kubelet pulls the
    image before it reads the Secret) must not race its start-up deadline against the 3.3 GB
    trainer pull of a session's first use, which takes from seconds to minutes with the machine's load."""
    pods = f"/api/v1/namespaces/{namespace}/pods"
    targets = on if on is not None else [n for n in nodes.names if not nodes.specs[n].taints]
    names = [f"pull-{node}" for node in targets]
    for name, node in zip(names, targets, strict=True):
        cp.admin.create(pods, real_node_pod(name, ref, [], node=node, command=["true"]))

    def pulled() -> bool:
        found = [(cp.admin.get(f"{pods}/{name}") or {}).get("status") or {} for name in names]
        phases = [status.get("phase") for status in found]
        assert "Failed" not in phases, f"a pull pod failed: {found}"  # e.g. Evicted: the disk is full
        return all(phase == "Succeeded" for phase in phases)

    wait_until(pulled, OPERATOR_READY_TIMEOUT, f"{ref} pulled on every real node", interval=1.0)
    for name in names:
        cp.admin.delete(f"{pods}/{name}")


Served = tuple[RealSpeedruns, dict[str, Any]]  # a namespace's jobs, and its Ready operator pod


def wait_for_operator(cp: ControlPlane, namespace: str, not_named: str = "") -> dict[str, Any]:
    """The operator pod once Ready (not the one named `not_named`: the pod a test deleted)."""
    deadline = time.monotonic() + OPERATOR_READY_TIMEOUT
    while True:
        pods = [p for p in cp.admin.list(f"/api/v1/namespaces/{namespace}/pods", labels=OPERATOR_LABELS)
                if p["metadata"]["name"] != not_named and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        for pod in pods:
            if ready(pod):
                return pod
            crashed = [c for c in pod["status"].get("containerStatuses") or [] if c.get("restartCount", 0) >= 2]
            if crashed:
                raise AssertionError(f"the operator container keeps failing: {crashed}\n{pod_log(cp, pod, True)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the operator pod is not Ready after {OPERATOR_READY_TIMEOUT:.0f} s: "
                                 f"{[p.get('status') for p in pods]}")  # fmt: skip
        time.sleep(1)


@contextmanager
def chart_operator(cp: ControlPlane, kubectl: Kubectl, namespace: str, release: str,
                   built_images: dict[str, images.Image], s3: GatedMotoServer) -> Iterator[Served]:  # fmt: skip
    """The chart installed by helm with the built images: (the namespace's jobs, the Ready operator pod)."""
    operator_repo, operator_tag = split(built_images["operator"].ref)
    trainer_repo, trainer_tag = split(built_images["trainer"].ref)
    values = {
        "replicaCount": "1",
        "image.repository": operator_repo, "image.tag": operator_tag,
        "trainer.image.repository": trainer_repo, "trainer.image.tag": trainer_tag,
        "operator.defaultStorageUri": f"s3://{BUCKET}/runs", "operator.defaultStorageEndpointUrl": s3.url,
        "operator.defaultStorageSecret": S3_SECRET,
        "operator.progressInterval": "1", "operator.resyncInterval": "5",
    }  # fmt: skip
    install_chart(cp, release, namespace, values)
    create_s3_secret(cp, namespace)
    runs = RealSpeedruns(cp, kubectl, namespace, s3.url)
    try:
        yield runs, wait_for_operator(cp, namespace)
    finally:
        for path in (runs.srj_path, f"/apis/apps/v1/namespaces/{namespace}/deployments"):
            for item in cp.admin.list(path):
                cp.admin.delete(f"{path}/{item['metadata']['name']}")
