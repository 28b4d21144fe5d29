"""E2E on the real control plane: a 2-node torchrun speedrun whose pods find each other through cluster DNS.

The chart's operator (helm install, its ServiceAccount token) turns the CPU-tiny SpeedrunJob into
its children; Kubernetes' Job controller creates the Indexed Job's pods, the scheduler binds them,
and the node agent runs each in its own network namespace. The command line is the operator's,
unchanged: `--rdzv-endpoint=<name>-train-0.<name>:29400` resolves through CoreDNS from the
headless Service's EndpointSlice, and torch decides which agent hosts the store from that lookup.
S3 is moto's server on the pod network's host address (reachable from the pods, nothing beyond).
What a user sees is read with kubectl. Needs root (network namespaces); skips with the reason
otherwise. Run: `pytest -m cluster tests/test_cluster_e2e.py`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from speedrun_trainer.cli.launch import free_port
from tests.cluster.chart import ChartOperator, chart_operator, install_chart
from tests.cluster.control_plane import ControlPlane
from tests.cluster.fixtures import Kubectl
from tests.cluster.network import NamespaceNetwork, PodNetwork
from tests.cluster.node_agent import NodeAgent
from tests.conftest import S3_CREDENTIALS
from tests.helpers import tiny_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACE = "speedruns-e2e"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
S3_SECRET = "speedrun-s3"
BUCKET = "e2e"
STEP_TIMEOUT = 240.0
STEPS, CHECKPOINT_EVERY, BATCH, SEQ_LEN = 60, 20, 8, 64


@pytest.fixture(scope="module")
def s3_on_pod_network(pod_net: PodNetwork) -> Iterator[str]:
    if not isinstance(pod_net, NamespaceNetwork):
        pytest.skip(f"the cluster e2e needs per-pod network namespaces: {pod_net.reason}")
    server = ThreadedMotoServer(ip_address=pod_net.host_ip, port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client(url).create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()


def client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")  # fmt: skip


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_nodes: NodeAgent, s3_on_pod_network: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    values = {"operator.progressInterval": "1", "operator.resyncInterval": "5"}
    release = install_chart(control_plane, "speedrun-e2e", NAMESPACE, values)
    control_plane.namespace(NAMESPACE)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET}, "type": "Opaque",
              "data": {k: base64.b64encode(S3_CREDENTIALS[k].encode()).decode()
                       for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}  # fmt: skip
    control_plane.admin.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    overrides = {"SPEEDRUN_OPERATOR_METRICS_PORT": str(free_port()), "SPEEDRUN_OPERATOR_LIVENESS": ""}
    with chart_operator(control_plane, release, tmp_path_factory.mktemp("operator"), **overrides) as op:
        yield op
    assert op.forbidden() == [], "the chart's RBAC refused the operator"


def manifest(name: str, s3: str) -> dict[str, Any]:
    doc = tiny_manifest(**{"spec.train.steps": STEPS, "spec.train.checkpointEvery": CHECKPOINT_EVERY,
                           "spec.train.evalEvery": 50})  # fmt: skip
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    doc["spec"]["storage"] = {"uri": f"s3://{BUCKET}/{name}", "endpointUrl": s3, "secretRef": {"name": S3_SECRET}}
    return doc


def follow(cp: ControlPlane, nodes: NodeAgent, name: str, until: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        status = (cp.admin.get(f"{SRJ_PATH}/{name}") or {}).get("status") or {}
        sample = {"phase": status.get("phase"), "step": (status.get("progress") or {}).get("step")}
        if not seen or seen[-1] != sample:
            seen.append(sample)
        if sample["phase"] == until:
            return seen
        nodes.check()
        if sample["phase"] == "Failed" or time.monotonic() > deadline:
            raise AssertionError(f"{name}: waiting for {until}, got {status}\nseen {seen}\n{nodes.log_tails()}")
        time.sleep(0.2)


def test_two_node_speedrun_rendezvous_through_cluster_dns(
    control_plane: ControlPlane, kube_nodes: NodeAgent, pod_net: PodNetwork, kubectl: Kubectl,
    operator: ChartOperator, s3_on_pod_network: str,
) -> None:  # fmt: skip
    cp = control_plane
    kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest("tiny", s3_on_pod_network)))

    seen = follow(cp, kube_nodes, "tiny", "Succeeded")

    phases = [s["phase"] for i, s in enumerate(seen) if i == 0 or s["phase"] != seen[i - 1]["phase"]]
    assert phases[-3:] == ["Training", "Evaluating", "Succeeded"], seen
    steps = [s["step"] for s in seen if s["phase"] == "Training" and s["step"] is not None]
    assert steps and steps == sorted(steps) and steps[-1] <= STEPS, f"progress not read: {seen}"

    # What a user sees: kubectl's table and the published results.
    row = kubectl.run("get", "srj", "tiny", "-n", NAMESPACE, "--no-headers").stdout.split()
    assert row[:3] == ["tiny", "Succeeded", "2"], row
    info = json.loads(client(s3_on_pod_network).get_object(Bucket=BUCKET, Key="tiny/speedrun_results.json")["Body"]
                      .read())["runs"][0]["run_info"]  # fmt: skip
    status = cp.admin.get(f"{SRJ_PATH}/tiny")["status"]
    assert status["results"]["bpb"] == info["eval/paloma/c4_en/bpb"] and info["num_devices"] == 2
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
