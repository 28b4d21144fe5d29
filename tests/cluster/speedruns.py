"""Real speedruns on the control plane: one namespace, S3 and chart operator per test module.

The e2e speedruns with faults (tests/e2e/test_cluster_*.py: rendezvous under start-up skew, gang
restart, Job TTL, a killed pod, an operator restart) each need the same: moto's S3 on the pod
network's host address (real containers reach it, nothing beyond does), the chart installed into
the module's own namespace with the trainer image built from the Dockerfile (`built_images`), and
its operator run as a process of the test with the chart's ServiceAccount token, so a test can
stop and start it at will (the operator in its own pod is tests/e2e/test_real_*.py's subject).
The training and eval pods run that trainer image on the real kubelets (`kube_nodes`), pulled on
every node before the first test so that no wait races a session's first 3.3 GB pull.
`speedrun_env(...)` yields a `Speedruns` holding all of it (`moto_s3(...)` the S3 part alone);
every wait is on a condition with a generous timeout (the machine is shared), never a sleep of
fixed length.

    @pytest.fixture(scope="module")
    def runs(control_plane, kube_nodes, pod_net, built_images, tmp_path_factory):
        with speedrun_env(control_plane, kube_nodes, pod_net, tmp_path_factory, "speedruns-gang",
                          built_images=built_images) as env:
            yield env
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from speedrun_trainer.cli.launch import free_port
from tests.cluster.api import ApiError
from tests.cluster.chart import ChartOperator
from tests.cluster.control_plane import ControlPlane
from tests.cluster.network import PodNetwork
from tests.cluster.operator_run import chart_operator_in
from tests.cluster.real_nodes import CPU_NODES, RealNodes
from tests.support import images
from tests.support.helpers import tiny_manifest
from tests.support.s3 import S3_CREDENTIALS, GatedMotoServer

S3_SECRET = "speedrun-s3"
BUCKET = "runs"
REAL_BUCKET = "real"  # the session's `s3` fixture's (fixtures.py)
TIMEOUT = 600.0  # a real container's start-up (torch's import) on a loaded machine, then the run
INDEX = "batch.kubernetes.io/job-completion-index"
# The CPU nodes, where the CPU-tiny jobs run (as a cluster keeps CPU jobs off its GPU nodes): the
# trainer image is pulled on those only, ~9 GB (content + unpacked) of the machine's disk each.
CPU_POOL = {"speedrun.test/pool": "cpu"}


@dataclass
class Speedruns:
    cp: ControlPlane
    nodes: RealNodes
    namespace: str
    s3: str
    operator: ChartOperator
    gate: GatedMotoServer  # the S3 server at `s3`, whose PUTs a test can hold
    node_selector: dict[str, str] = field(default_factory=dict)  # every job's spec.resources.nodeSelector

    @property
    def srj_path(self) -> str:
        return f"/apis/speedrun.dev/v1alpha1/namespaces/{self.namespace}/speedrunjobs"

    def manifest(self, name: str, steps: int, every: int, **changes: Any) -> dict[str, Any]:
        doc = tiny_manifest(**{"spec.train.steps": steps, "spec.train.checkpointEvery": every,
                               "spec.train.evalEvery": 1000, "spec.resources.nodeSelector": self.node_selector,
                               **changes})  # fmt: skip
        doc["metadata"] = {"name": name, "namespace": self.namespace}
        doc["spec"]["storage"] = {"uri": f"s3://{BUCKET}/{name}", "endpointUrl": self.s3,
                                  "secretRef": {"name": S3_SECRET}}  # fmt: skip
        return doc

    def create(self, doc: dict[str, Any]) -> None:
        self.cp.admin.create(self.srj_path, doc)

    def status(self, name: str) -> dict[str, Any]:
        return (self.cp.admin.get(f"{self.srj_path}/{name}") or {}).get("status") or {}

    def job(self, name: str) -> dict[str, Any] | None:
        return self.cp.admin.get(f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}")

    def pods(self, job: str) -> list[dict[str, Any]]:
        found = self.cp.admin.list(f"/api/v1/namespaces/{self.namespace}/pods",
                                   labels=f"batch.kubernetes.io/job-name={job}")  # fmt: skip
        return sorted(found, key=lambda p: p["metadata"]["creationTimestamp"] + p["metadata"]["name"])

    def events(self, name: str) -> list[dict[str, Any]]:
        return srj_events(self.cp, self.namespace, name)

    def log(self, pod: dict[str, Any]) -> str:
        """All the pod's container has logged, through the apiserver (the kubelet's API)."""
        from tests.cluster.real_speedrun import pod_log  # it imports this module's constants

        return pod_log(self.cp, pod, lines=None)

    def saved_steps(self, name: str) -> list[int]:
        return saved_steps(self.s3, BUCKET, f"{name}/checkpoints/")

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            self.nodes.check()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.nodes.log_tails()}")
            time.sleep(0.2)
        return value

    def follow(self, name: str, until: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Wait for phase `until`; fail at once on another terminal phase."""

        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            if status.get("phase") == "Failed" and until != "Failed":
                raise AssertionError(f"{name}: waiting for {until}, got {status}\n{self.nodes.log_tails()}")
            return status if status.get("phase") == until else None

        return self.wait_for(reached, f"{name} {until}", timeout)


def srj_events(cp: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events the operator recorded on one SpeedrunJob, in the order the apiserver lists them."""
    found = cp.admin.list(f"/api/v1/namespaces/{namespace}/events", fields=f"involvedObject.name={name}")
    return [e for e in found if e["involvedObject"]["kind"] == "SpeedrunJob"]


def saved_steps(s3_url: str, bucket: str, prefix: str) -> list[int]:
    """The checkpoints under `prefix` in S3 (each `meta_<step>.json` is written last, once its shards are in)."""
    listing = s3_client(s3_url).list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents")
    return sorted(int(m[1]) for o in listing or [] if (m := re.search(r"meta_(\d+)\.json$", o["Key"])))


def create_s3_secret(cp: ControlPlane, namespace: str, name: str = S3_SECRET) -> None:
    """The Secret holding moto's credentials that the jobs' `storage.secretRef` (or the chart's
    `operator.defaultStorageSecret`) names."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
              "data": {k: base64.b64encode(S3_CREDENTIALS[k].encode()).decode()
                       for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}  # fmt: skip
    cp.admin.create(f"/api/v1/namespaces/{namespace}/secrets", secret)


def s3_client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")  # fmt: skip


@contextlib.contextmanager
def speedrun_env(
    cp: ControlPlane, nodes: RealNodes, pod_net: PodNetwork, tmp: pytest.TempPathFactory, namespace: str,
    values: dict[str, str] | None = None, *, built_images: dict[str, images.Image] | None = None,
) -> Iterator[Speedruns]:  # fmt: skip
    """S3 on the pod network + the chart in `namespace` + its operator; drained on exit.

    With `built_images` the chart's trainer image is the one built from the Dockerfile, pulled on
    the CPU nodes before the first job, and every job's nodeSelector is CPU_POOL, a label the CPU
    nodes carry meanwhile (without, `values` name the trainer image and jobs go anywhere)."""
    from tests.cluster.real_speedrun import pull_on_every_node, split  # it imports this module's constants

    trainer: dict[str, str] = {}
    if built_images is not None:
        repository, tag = split(built_images["trainer"].ref)
        trainer = {"trainer.image.repository": repository, "trainer.image.tag": tag}
    with moto_s3(pod_net, BUCKET) as s3:
        chart_values = {"operator.progressInterval": "1", "operator.resyncInterval": "5", **trainer, **(values or {})}
        with chart_operator_in(cp, namespace, tmp.mktemp("operator"), chart_values) as op:
            create_s3_secret(cp, namespace)
            if built_images is None:
                yield Speedruns(cp, nodes, namespace, s3.url, op, s3)
                return
            with labelled(cp, CPU_NODES, CPU_POOL):
                pull_on_every_node(cp, nodes, namespace, built_images["trainer"].ref, on=list(CPU_NODES))
                yield Speedruns(cp, nodes, namespace, s3.url, op, s3, CPU_POOL)


@contextlib.contextmanager
def labelled(cp: ControlPlane, names: tuple[str, ...], labels: dict[str, str]) -> Iterator[None]:
    """Nodes carrying `labels` inside the block (`kubectl label node`); removed after it."""

    def patch(values: dict[str, str | None]) -> None:
        for name in names:
            cp.admin.request("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"labels": values}},
                             content_type="application/merge-patch+json")  # fmt: skip

    patch(dict(labels))
    try:
        yield
    finally:
        with contextlib.suppress(ApiError):
            patch(dict.fromkeys(labels))


@contextlib.contextmanager
def moto_s3(pod_net: PodNetwork, bucket: str) -> Iterator[GatedMotoServer]:
    """moto's S3 server on the pod network's host address (the pods reach it, nothing beyond does)
    holding an empty `bucket`; its PUTs can be held (GatedMotoServer). Skips without that address."""
    if pod_net.reason:
        pytest.skip(f"real speedruns on the control plane: {pod_net.reason}")
    server = GatedMotoServer(pod_net.host_ip, free_port()).start()
    s3_client(server.url).create_bucket(Bucket=bucket)
    try:
        yield server
    finally:
        server.stop()


class JobRecorder:
    """Every version of the namespace's batch Jobs, as a watch delivers them (a background thread).

    `versions(name)` lists (event type, Job) in order; `uids(name)` the distinct Jobs of that
    name ever seen: a re-created Job shows up even if it lived for a moment only."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp, self.path = cp, f"/apis/batch/v1/namespaces/{namespace}/jobs"
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"jobs-{namespace}", daemon=True)

    def __enter__(self) -> JobRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError, ApiError):
                for kind, job in self.cp.admin.watch(self.path, resource_version=version, timeout_seconds=5):
                    if kind == "ERROR":  # e.g. 410 Gone: the version expired; list afresh
                        version = ""
                        break
                    self.seen.append((kind, job))
                    version = job["metadata"]["resourceVersion"]

    def versions(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return [(k, j) for k, j in list(self.seen) if j["metadata"]["name"] == name]

    def uids(self, name: str) -> list[str]:
        return list(dict.fromkeys(j["metadata"]["uid"] for _, j in self.versions(name)))


def true_conditions(job: dict[str, Any]) -> list[str]:
    return [c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
