"""The chart's opt-in NetworkPolicies (templates/networkpolicy.yaml), read as a CNI would.

`helm template` with ci/network-policy-values.yaml; a small evaluator of the rendered policies
(pod and namespace selectors with matchLabels and `In` expressions, ports, policy types) asks the
question the progress scrape depends on: may the operator's pod open a connection to rank 0 of a
training pod the builders make, on its metrics port, with every pod otherwise denied? And the
paths the operator needs besides: the apiserver, DNS. (No CNI enforces policies in the cluster
tier, so this is where the policy's meaning is checked; lint and the OpenAPI schemas: test_helm.py.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_api.manifest import load_job
from speedrun_operator.builders import build_eval_job, build_train_job
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import ROOT

CHART = ROOT / "charts" / "speedrun-operator"
VALUES = CHART / "ci" / "network-policy-values.yaml"
RELEASE_NS = "speedrun"


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    cmd = [str(helm), "template", "rel", str(CHART), "--namespace", RELEASE_NS, "--kube-version", "1.32", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def ns_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


def peer_matches(peer: dict[str, Any], labels: dict[str, str], namespace: str, own_ns: str) -> bool:
    if "ipBlock" in peer:
        return False
    pods_ok = selects(peer.get("podSelector", {}), labels)
    ns_ok = selects(peer["namespaceSelector"], ns_labels(namespace)) if "namespaceSelector" in peer else (
        namespace == own_ns)  # fmt: skip
    return pods_ok and ns_ok


def port_ok(rule: dict[str, Any], port: int, protocol: str = "TCP") -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def allowed(pols: list[dict[str, Any]], direction: str, pod: tuple[dict[str, str], str],
            peer: tuple[dict[str, str], str] | None, port: int, protocol: str = "TCP") -> bool:  # fmt: skip
    """Whether `pod` may send (Egress) or take (Ingress) a connection to/from `peer` (None: an
    address outside the cluster) on `port`, when every pod selected by a policy is denied the rest."""
    labels, namespace = pod
    mine = [p for p in pols if p["metadata"]["namespace"] == namespace and selects(p["spec"]["podSelector"], labels)
            and direction in p["spec"]["policyTypes"]]  # fmt: skip
    if not mine:
        return True  # no policy isolates the pod in this direction
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in mine:
        for rule in policy["spec"].get(key) or []:
            if not port_ok(rule, port, protocol):
                continue
            peers = rule.get(peers_key)
            if not peers:
                return True
            if peer is not None and any(peer_matches(p, *peer, namespace) for p in peers):
                return True
    return False


@pytest.fixture(scope="module")
def rendered(helm: Path) -> list[dict[str, Any]]:
    return render(helm, "--values", str(VALUES))


def operator_pod(objects: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    return deployment["spec"]["template"]["metadata"]["labels"], RELEASE_NS


def pod_of(job: dict[str, Any], namespace: str) -> tuple[dict[str, str], str]:
    return {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-completion-index": "0"}, namespace


def test_the_operator_reaches_rank_0_metrics_in_served_namespaces_only(rendered: list[dict[str, Any]]) -> None:
    pols, op = policies(rendered), operator_pod(rendered)
    job = load_job(ROOT / "examples" / "tiny-cpu.yaml")
    train, evaluation = build_train_job(job, OperatorSettings()), build_eval_job(job, OperatorSettings())
    port = job.spec.metrics.port
    for namespace in ("research", "leaderboard"):
        rank0 = pod_of(train, namespace)
        assert allowed(pols, "Egress", op, rank0, port), namespace
        assert allowed(pols, "Ingress", rank0, op, port), namespace
        assert allowed(pols, "Egress", op, rank0, 9500)  # another job's spec.metrics.port, listed
        assert not allowed(pols, "Egress", op, rank0, 22)
    assert not allowed(pols, "Egress", op, pod_of(train, "elsewhere"), port), "a namespace not served"
    assert not allowed(pols, "Egress", op, pod_of(evaluation, "research"), port), "the eval pod serves nothing"
    stranger = ({"app": "web"}, "research")
    assert not allowed(pols, "Ingress", pod_of(train, "research"), stranger, port)


def test_the_operator_reaches_the_apiserver_and_dns_and_is_scraped_from_monitoring(
    rendered: list[dict[str, Any]],
) -> None:
    pols, op = policies(rendered), operator_pod(rendered)
    [operator_policy] = [p for p in pols if p["metadata"]["namespace"] == RELEASE_NS]
    api_rule = operator_policy["spec"]["egress"][0]
    assert api_rule["to"] == [{"ipBlock": {"cidr": "10.0.0.2/32"}}]
    assert {p["port"] for p in api_rule["ports"]} == {443, 6443}
    assert allowed(pols, "Egress", op, None, 53, "UDP") and allowed(pols, "Egress", op, None, 53, "TCP")
    prometheus = ({"app.kubernetes.io/name": "prometheus"}, "monitoring")
    assert allowed(pols, "Ingress", op, prometheus, 9090)
    assert not allowed(pols, "Ingress", op, ({"app": "web"}, "research"), 9090)
    assert not allowed(pols, "Ingress", op, prometheus, 22)


def test_no_policy_unless_asked_and_cluster_wide_selects_every_namespace(helm: Path) -> None:
    assert policies(render(helm)) == []
    objects = render(helm, "--set", "networkPolicy.enabled=true", "--set", "rbac.clusterWide=true")
    [only] = policies(objects)  # no namespaces to put the trainers' side in
    job = load_job(ROOT / "examples" / "tiny-cpu.yaml")
    assert allowed([only], "Egress", operator_pod(objects), pod_of(build_train_job(job, OperatorSettings()), "any"),
                   job.spec.metrics.port)  # fmt: skip
