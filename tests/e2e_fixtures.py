"""Fixtures for the e2e tests (tests/test_e2e_*.py): a whole speedrun on this machine, no cluster.

`e2e` is one emulated cluster (tests/kube_emulator.py) with the process kubelet
(tests/process_kubelet.py) running its pods as local processes, the real operator
(`kopf run -m speedrun_operator.main` in kopf's KopfRunner, as tests/operator_fixtures.py starts
it; stoppable and restartable), and a fresh bucket on moto's S3 server, whose credentials reach
the pods as in a cluster: a Secret named by `spec.storage.secretRef`, read through secretKeyRef env.
`prometheus` is a real Prometheus server (Debian's /usr/bin/prometheus) with the scrape config in
tests/data/prometheus/; the test skips when the binary is absent.

Import the fixtures by name into a test module: `from tests.e2e_fixtures import e2e  # noqa: F401`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import string
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kopf.testing import KopfRunner

from tests.helpers import tiny_manifest
from tests.kube_emulator import EmulatedCluster, wait_for
from tests.operator_fixtures import NAMESPACE, Speedruns, emulated_cluster, free_port, start_operator
from tests.process_kubelet import ProcessKubelet

if TYPE_CHECKING:
    from tests.conftest import S3Bucket

S3_SECRET = "speedrun-s3"
PROMETHEUS_CONFIG = Path(__file__).parent / "data" / "prometheus" / "prometheus.yml"
PROMETHEUS_BINARY = "prometheus"
STEP_TIMEOUT = 120.0  # one phase of a tiny run on 2 busy cores takes well under a minute


def speedrun_manifest(
    name: str, bucket: S3Bucket, *, steps: int, checkpoint_every: int, eval_every: int = 50, **overrides: Any
) -> dict[str, Any]:
    """The CPU-tiny manifest (2 nodes x 1 process, tests/helpers.tiny_manifest's shapes) stored in
    `bucket` under `<name>/`, with a free metrics port; dotted keys override, e.g. {"spec.x": 1}."""
    train = {"steps": steps, "checkpointEvery": checkpoint_every, "evalEvery": eval_every}
    overrides = {**{f"spec.train.{k}": v for k, v in train.items()}, **overrides}
    doc = tiny_manifest(**overrides)
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    doc["spec"]["storage"] = {
        "uri": f"{bucket.uri}/{name}",
        "endpointUrl": bucket.endpoint_url,
        "secretRef": {"name": S3_SECRET},
    }
    # The trainer's metrics server binds 0.0.0.0: pods here share the host's ports (harness limit).
    doc["spec"]["metrics"] = {"port": free_port()}
    return doc


class E2E:
    """Test-side verbs over the cluster, the process kubelet, the operator and the bucket."""

    def __init__(self, cluster: EmulatedCluster, kubelet: ProcessKubelet, bucket: S3Bucket) -> None:
        self.cluster, self.kubelet, self.bucket = cluster, kubelet, bucket
        self.runs = Speedruns(cluster)
        self.operator_metrics_port = free_port()
        self._operator: contextlib.ExitStack | None = None

    # -- the operator

    def start_operator(self) -> KopfRunner:
        assert self._operator is None, "the operator is already running"
        self._operator = contextlib.ExitStack()
        return self._operator.enter_context(start_operator(self.operator_metrics_port))

    def stop_operator(self) -> None:
        if self._operator is not None:
            stack, self._operator = self._operator, None
            stack.close()

    # -- the SpeedrunJob

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.runs.apply(manifest)

    def status(self, name: str) -> dict[str, Any]:
        return self.runs.status(name)

    def follow(self, name: str, until: str, timeout: float = STEP_TIMEOUT) -> list[dict[str, Any]]:
        """Poll the status until phase `until`; returns every distinct (phase, progress.step) seen.

        Fails early when the job ends Failed unexpectedly, with the pods' log tails."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name)
            sample = {"phase": status.get("phase"), "step": (status.get("progress") or {}).get("step")}
            if not seen or seen[-1] != sample:
                seen.append(sample)
            if sample["phase"] == until:
                return seen
            self.kubelet.check()
            if sample["phase"] == "Failed" or time.monotonic() > deadline:
                raise AssertionError(
                    f"{name}: waiting for {until}, got {status}\nseen {seen}\n{self.kubelet.log_tails()}"
                )
            time.sleep(0.1)

    def children(self, name: str) -> dict[str, list[str]]:
        """Every object labelled as the job's, by kind (pods included)."""
        out = self.runs.children(name)
        pods = self.cluster.list("v1", "pods", NAMESPACE, {"speedrun.dev/job": name})
        return {**out, "pods": sorted(p["metadata"]["name"] for p in pods)}

    # -- storage, read with the test's own client

    def keys(self, prefix: str) -> list[str]:
        pages = self.bucket.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket.name, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def read_json(self, key: str) -> Any:
        return json.loads(self.bucket.client().get_object(Bucket=self.bucket.name, Key=key)["Body"].read())


@pytest.fixture
def e2e(tmp_path: Path, s3_bucket: S3Bucket) -> Iterator[E2E]:
    """A cluster with the process kubelet and the operator running, and the S3 Secret in place."""
    with emulated_cluster(tmp_path) as cluster, ProcessKubelet(cluster, NAMESPACE, tmp_path / "pods") as kubelet:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": S3_SECRET},
            "type": "Opaque",
            "data": {k: base64.b64encode(s3_bucket.env[k].encode()).decode()
                     for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        }
        cluster.create("v1", "secrets", NAMESPACE, secret)
        env = E2E(cluster, kubelet, s3_bucket)
        env.start_operator()
        try:
            yield env
        finally:
            env.stop_operator()
            print(kubelet.log_tails())  # shown by pytest when the test failed
    kubelet.check()


class Prometheus:
    """A Prometheus server on loopback with tests/data/prometheus/prometheus.yml, and its query API."""

    def __init__(self, binary: str, workdir: Path, operator_target: str) -> None:
        self.workdir = workdir
        self.targets_dir = workdir / "targets"
        self.targets_dir.mkdir(parents=True)
        config = string.Template(PROMETHEUS_CONFIG.read_text()).substitute(
            targets_dir=self.targets_dir, operator_target=operator_target
        )
        (workdir / "prometheus.yml").write_text(config)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        wait_for(self._ready, timeout=30, what=f"Prometheus ready at {self.url}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            output = (self.workdir / "prometheus.log").read_text()
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {output}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def set_targets(self, name: str, groups: list[dict[str, Any]]) -> None:
        """Write a file_sd target file (`[{"targets": [...], "labels": {...}}]`), atomically."""
        tmp = self.targets_dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_dir / f"{name}.json")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (vector or matrix) through /api/v1/query."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus(e2e: E2E, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the operator (static target) and the trainer pods (file_sd, see the config)."""
    binary = shutil.which(PROMETHEUS_BINARY) or shutil.which(PROMETHEUS_BINARY, path="/usr/bin")
    if binary is None:
        pytest.skip("needs the prometheus binary (Debian package `prometheus`, installed by .ci/run)")
    server = Prometheus(binary, tmp_path / "prometheus", f"127.0.0.1:{e2e.operator_metrics_port}")
    try:
        yield server
    finally:
        server.close()
