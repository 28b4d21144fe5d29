"""Admission parity: what the CRD admits, the children's own validation admits too.

Each row is a SpeedrunJob whose training Job or pods the apiserver (or the kubelet) would refuse:
quantities that are not quantities, label keys and values that are not labels, malformed
tolerations, the metrics port on the rendezvous port, absurd counts, and manifests the trainer
cannot run in a cluster (storage on one node's disk). `kubectl create --dry-run=server` sends
each through the real kube-apiserver (OpenAPI patterns and limits, CEL rules), which must refuse it
naming the field; the pydantic model refuses the same rows (except the cluster-only ones, which
`speedrun run` accepts on one machine). A training Job the apiserver refuses after the SpeedrunJob
was admitted (a ValidatingAdmissionPolicy) fails the job with its message; fixed, the Job is made
and its pods go to the real nodes, where they wait on an image no registry holds (nothing trains).
Run: `pytest -m cluster tests/cluster/test_admission.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from speedrun_api.manifest import SpecError, parse_job
from tests.cluster.chart import NEVER_PULLED, PULL_REASONS
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.crd_install import dry_run, install_crd
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_run import served_namespace
from tests.cluster.real_nodes import RealNodes
from tests.support.helpers import tiny_manifest
from tests.support.overlay_cases import OVERLAY_ADMITTED, OVERLAY_REFUSED

pytestmark = pytest.mark.cluster

NAMESPACE = "admission-tests"
CRD_NAME = "speedrunjobs.speedrun.dev"


def doc(**changes: Any) -> dict[str, Any]:
    return tiny_manifest(**{"metadata.name": "admission", **changes})


def toleration(**fields: Any) -> dict[str, Any]:
    return doc(**{"spec.resources.tolerations": [fields]})


# (field the refusal names, manifest): refused by the CRD and by the model.
REFUSED = [
    ("spec.resources.cpu", doc(**{"spec.resources.cpu": "two"})),
    ("spec.resources.cpu", doc(**{"spec.resources.cpu": "-1"})),
    ("spec.resources.cpu", doc(**{"spec.resources.cpu": "1e1.5"})),
    ("spec.resources.memory", doc(**{"spec.resources.memory": "1GB"})),
    ("spec.resources.memory", doc(**{"spec.resources.memory": "1 Gi"})),
    ("spec.resources.nodeSelector", doc(**{"spec.resources.nodeSelector": {"bad key!": "x"}})),
    ("spec.resources.nodeSelector", doc(**{"spec.resources.nodeSelector": {"-leading": "x"}})),
    ("spec.resources.nodeSelector", doc(**{"spec.resources.nodeSelector": {"Not_A.Domain/name": "x"}})),
    ("spec.resources.nodeSelector", doc(**{"spec.resources.nodeSelector": {"pool": "x" * 64}})),
    ("spec.resources.nodeSelector", doc(**{"spec.resources.nodeSelector": {"pool": "a b"}})),
    ("spec.resources.topology", doc(**{"spec.resources.topology": "2x2x2!"})),
    ("spec.resources.priorityClassName", doc(**{"spec.resources.priorityClassName": "High_Priority"})),
    ("spec.runPolicy.queueName", doc(**{"spec.runPolicy.queueName": "team queue"})),
    ("spec.runPolicy.queueName", doc(**{"spec.runPolicy.queueName": "q" * 64})),
    ("spec.resources.tolerations", toleration(operator="Equal", value="x")),
    ("spec.resources.tolerations", toleration(key="gpu", operator="Exists", value="x")),
    ("spec.resources.tolerations", toleration(key="gpu", operator="Exists", effect="NoSchedule", tolerationSeconds=60)),
    ("spec.resources.tolerations", toleration(key="bad key", operator="Exists")),
    ("spec.resources.tolerations", toleration(key="gpu", value="not a label value")),
    ("spec.metrics.port", doc(**{"spec.metrics.port": 29400})),
    ("spec.resources.nodes", doc(**{"spec.resources.nodes": 1_000_000})),
    ("spec.storage.secretRef.name", doc(**{"spec.storage.secretRef": {"name": "My_Secret"}})),
    ("spec.image", doc(**{"spec.image": " registry.example/trainer:1"})),
    *OVERLAY_REFUSED,  # spec.podOverrides (api pod_overrides.py)
    # The name is the headless Service's (a DNS-1035 label): `speedrun plan` once took `1tiny`.
    ("metadata.name", doc(**{"metadata.name": "1tiny"})),
    # A name the table lacks is a GPU; one that says TPU cannot be run without the table's entry.
    ("spec.resources.accelerator", doc(**{"spec.resources.accelerator": "tpu-v9", "spec.resources.deviceFlops": 1e15})),
]

# Refused in a cluster only: `speedrun run` on one machine still takes them.
CLUSTER_ONLY = [
    ("spec.storage.uri", doc(**{"spec.storage.uri": "file:///data/runs"})),
    ("spec.storage.uri", doc(**{"spec.storage.uri": "/data/runs"})),
    (
        "spec.storage.uri",
        doc(
            **{
                "spec.storage.uri": "file:///data/runs",
                "spec.resources.nodes": None,
                "spec.resources.minNodes": 1,
                "spec.resources.maxNodes": 2,
            }
        ),
    ),
]

ADMITTED = [
    doc(**{"spec.resources.cpu": "1500m", "spec.resources.memory": "1.5Gi"}),
    doc(**{"spec.resources.cpu": "2", "spec.resources.memory": "4e9"}),
    doc(**{"spec.resources.cpu": ".5", "spec.resources.memory": "512M"}),
    doc(**{"spec.resources.nodeSelector": {"cloud.google.com/gke-nodepool": "gpu-pool_1", "empty": ""}}),
    doc(**{"spec.resources.priorityClassName": "speedrun.high"}),
    doc(**{"spec.runPolicy.queueName": "team-a.gpu_queue"}),
    toleration(operator="Exists"),
    toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),
    toleration(key="node.kubernetes.io/unreachable", operator="Exists", effect="NoExecute", tolerationSeconds=600),
    toleration(key="dedicated", value="speedrun", effect="NoSchedule"),
    doc(**{"spec.storage.uri": "file:///data/runs", "spec.resources.nodes": 1, "spec.train.batchSize": 4}),
    doc(**{"spec.storage.uri": "s3://bucket/runs"}),
    doc(**{"spec.runPolicy.activeDeadlineSeconds": 86400}),
    *OVERLAY_ADMITTED,  # their Jobs, too: tests/cluster/test_pod_overrides.py
    doc(**{"metadata.name": "a1"}),
    doc(**{"spec.resources.accelerator": "nvidia-b200", "spec.resources.deviceFlops": 2.25e15}),
]


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane, kubectl: Kubectl) -> Kubectl:
    return install_crd(control_plane, kubectl, NAMESPACE)


def model_errors(manifest: dict[str, Any]) -> list[str]:
    try:
        parse_job(manifest)
    except SpecError as err:
        return err.lines
    return []


@pytest.mark.parametrize(("field", "manifest"), REFUSED + CLUSTER_ONLY, ids=[f for f, _ in REFUSED + CLUSTER_ONLY])
def test_the_apiserver_refuses_naming_the_field(crd: Kubectl, field: str, manifest: dict[str, Any]) -> None:
    code, err, _ = dry_run(crd, manifest, NAMESPACE)
    assert code != 0 and field in err, err


@pytest.mark.parametrize(("field", "manifest"), REFUSED, ids=[f for f, _ in REFUSED])
def test_the_model_refuses_naming_the_field(field: str, manifest: dict[str, Any]) -> None:
    lines = model_errors(manifest)
    assert any(line.startswith(field) for line in lines), lines


@pytest.mark.parametrize(("field", "manifest"), CLUSTER_ONLY, ids=[f for f, _ in CLUSTER_ONLY])
def test_speedrun_run_still_takes_what_only_a_cluster_refuses(field: str, manifest: dict[str, Any]) -> None:
    assert model_errors(manifest) == []


@pytest.mark.parametrize("manifest", ADMITTED, ids=range(len(ADMITTED)))
def test_valid_values_are_admitted_by_both(crd: Kubectl, manifest: dict[str, Any]) -> None:
    code, err, _ = dry_run(crd, manifest, NAMESPACE)
    assert code == 0, err
    assert model_errors(manifest) == []


# ---- what the apiserver still refuses ends the job in Failed with its message ---------------------

REJECTING_NAMESPACE = "admission-policy"
# A cluster policy no CRD can foresee (ValidatingAdmissionPolicy, GA since 1.30): every Job in the
# namespace must carry a deadline. The training Job of a SpeedrunJob without
# runPolicy.activeDeadlineSeconds is refused with 422, after the SpeedrunJob itself was admitted.
POLICY_MESSAGE = "every Job in this namespace must set spec.activeDeadlineSeconds"
# Nothing trains here: the training pods' image is a ref no registry holds, so the real kubelet
# leaves them waiting (ErrImagePull, then ImagePullBackOff) and the job Pending, well inside the
# start-up deadline (runPolicy.startupDeadlineSeconds, 3600 s by default).


def deadline_policy(namespace: str) -> list[dict[str, Any]]:
    name = f"{namespace}-job-deadlines"
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": ["jobs"]}]},
                  "validations": [{"expression": "has(object.spec.activeDeadlineSeconds)",
                                   "message": POLICY_MESSAGE}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": namespace}}}}},
    ]  # fmt: skip


def test_a_child_the_apiserver_refuses_fails_the_job_with_its_message(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, tmp_path: Path
) -> None:
    with served_namespace(control_plane, REJECTING_NAMESPACE, tmp_path, **NEVER_PULLED) as served:
        kubectl.run(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": deadline_policy(REJECTING_NAMESPACE)}),
        )
        # The policy is enforced once the apiserver has compiled it: probe with a throw-away Job.
        probe = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
                 "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                "containers": [{"name": "c", "image": "none"}]}}}}  # fmt: skip
        wait_until(lambda: POLICY_MESSAGE in kubectl.run(
            "create", "--dry-run=server", "-n", REJECTING_NAMESPACE, "-f", "-", stdin=json.dumps(probe),
            check=False).stderr, 60, "the admission policy to be enforced")  # fmt: skip

        served.apply(kubectl, served.manifest("refused"))
        wait_until(lambda: served.phase("refused") == "Failed", 90, "phase Failed", interval=0.2)
        failed = served.condition("refused", "Failed")
        assert failed["reason"] == "ChildRejected" and POLICY_MESSAGE in failed["message"], failed
        assert "refused-train" in failed["message"], failed
        assert served.condition("refused", "Validated")["status"] == "True"
        assert served.job("refused") is None
        reasons = [e["reason"] for e in served.events("refused")]
        assert reasons == ["ChildRejected"], reasons

        # A spec edit that satisfies the policy runs the job again.
        kubectl.run("patch", "srj", "refused", "-n", REJECTING_NAMESPACE, "--type=merge",
                    "-p", json.dumps({"spec": {"runPolicy": {"activeDeadlineSeconds": 3600}}}))  # fmt: skip
        wait_until(lambda: served.job("refused") is not None, 90, "the training Job after the fix", interval=0.2)
        wait_until(lambda: served.phase("refused") == "Pending", 60, "phase Pending after the fix", interval=0.2)
        # Its pods went to the real nodes, where the kubelet refuses the image: they never run.
        wait_until(lambda: served.condition("refused", "Training").get("reason") in PULL_REASONS, 120,
                   "the kubelet's pull error in the Training condition", interval=0.5)  # fmt: skip
        assert served.phase("refused") == "Pending"
        served.delete(kubectl, "refused")
        kubectl.run(
            "delete",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": deadline_policy(REJECTING_NAMESPACE)}),
        )
