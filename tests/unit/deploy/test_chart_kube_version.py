"""The chart's `kubeVersion` floor against the API fields the operator actually sends.

A field the apiserver does not know is dropped (built-in kinds) or refused (CRD schema keywords),
so an operator on a cluster older than its newest field silently misbehaves: a Job without its
successPolicy never completes early, a pod without the completion-index label is never found
as rank 0. Each entry of FIELD_FLOORS is a path into what the operator creates, with the first
Kubernetes minor where it is served by default (beta on by default, or GA), from the
feature-gate tables in k8s.io/kubernetes pkg/features/kube_features.go and
k8s.io/apiextensions-apiserver pkg/features/kube_features.go. The test renders every example
through the operator's builders (Jobs, Service, ConfigMap), reads the CRD the chart installs,
collects the fields present, and requires Chart.yaml's floor to be at least the newest of them.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from speedrun_api.manifest import load_job, parse_job
from speedrun_operator import labels as L
from speedrun_operator.builders import build_all
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import ROOT

CHART = ROOT / "charts" / "speedrun-operator"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

# (kind, dotted path; `[]` walks a list) -> (minor version served by default, what it is)
FIELD_FLOORS: dict[tuple[str, str], tuple[int, str]] = {
    ("Job", "spec.completionMode"): (24, "Indexed Jobs, GA 1.24"),
    ("Job", "spec.suspend"): (24, "suspended Jobs (Kueue), GA 1.24"),
    ("Job", "spec.ttlSecondsAfterFinished"): (23, "TTL after finished, GA 1.23"),
    ("Job", "spec.podFailurePolicy"): (26, "JobPodFailurePolicy, beta on by default 1.26, GA 1.31"),
    ("Job", "spec.backoffLimitPerIndex"): (29, "JobBackoffLimitPerIndex, beta 1.29, GA 1.33"),
    ("Job", "spec.maxFailedIndexes"): (29, "JobBackoffLimitPerIndex, beta 1.29, GA 1.33"),
    ("Job", "spec.podReplacementPolicy"): (29, "JobPodReplacementPolicy, beta 1.29, GA 1.34"),
    ("Job", "spec.successPolicy"): (31, "JobSuccessPolicy, beta on by default 1.31, GA 1.33"),
    ("Job", "spec.managedBy"): (32, "JobManagedBy, beta 1.32, GA 1.35"),
    ("Job", "spec.template.spec.hostUsers"): (33, "UserNamespacesSupport, beta on by default 1.33"),
    ("CRD", "spec.versions[].schema.openAPIV3Schema..x-kubernetes-validations"): (
        29, "CEL validation rules (CustomResourceValidationExpressions), GA 1.29"),
    ("CRD", "spec.versions[].schema.openAPIV3Schema..x-kubernetes-validations[].fieldPath"): (
        28, "fieldPath/reason of CEL rules (KEP-2876), 1.28"),
    ("CRD", "spec.versions[].selectableFields"): (31, "CustomResourceFieldSelectors, beta 1.31, GA 1.32"),
}  # fmt: skip
# What the operator relies on besides fields: rank 0 is found by the completion-index pod label.
USED_LABELS = {L.LABEL_COMPLETION_INDEX: (28, "batch.kubernetes.io/job-completion-index pod label, 1.28")}


def chart_floor() -> int:
    """The minor version of Chart.yaml's `kubeVersion: ">=1.N.0-0"`."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*1\.(\d+)\.\d+(-0)?", constraint.strip())
    assert match, f"kubeVersion {constraint!r}: expected a lone floor '>=1.N.0-0'"
    return int(match.group(1))


def present(node: Any, path: str) -> bool:
    """Whether `path` exists in `node`: dots separate keys, `[]` walks a list, `..` any depth."""
    if path == "":
        return True
    if path.startswith("."):  # `..key`: the rest anywhere below
        rest = path[1:]
        if present(node, rest):
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
        return any(present(child, path) for child in children)
    head, _, rest = path.partition(".")
    walk_list = head.endswith("[]")
    key = head.removesuffix("[]")
    if not isinstance(node, dict) or key not in node:
        return False
    value = node[key]
    if walk_list:
        return isinstance(value, list) and any(present(item, rest) for item in value)
    return present(value, rest)


def created_objects() -> list[dict[str, Any]]:
    """What the operator creates for every example, and for each as an elastic run too (minNodes/
    maxNodes: the training Job gets a successPolicy), since users set what no example does."""
    crd = yaml.safe_load((CHART / "crds" / "speedrunjob.yaml").read_text())
    objects = [{**crd, "kind": "CRD"}]
    for example in EXAMPLES:
        objects += build_all(load_job(example), OperatorSettings())
        manifest = yaml.safe_load(example.read_text())
        resources = manifest["spec"]["resources"]
        nodes = resources.get("nodes") or 1
        if nodes >= 2 and "topology" not in resources:  # a TPU slice's host count is fixed
            del resources["nodes"]
            resources.update(minNodes=1, maxNodes=nodes)
            objects += build_all(parse_job(manifest), OperatorSettings())
    return objects


def required_floor(objects: list[dict[str, Any]]) -> dict[str, int]:
    """`<kind> <path>: why` -> minor, for every listed field present in `objects`."""
    needed = {}
    for (kind, path), (minor, why) in FIELD_FLOORS.items():
        if any(o.get("kind") == kind and present(o, path) for o in objects):
            needed[f"{kind} {path}: {why}"] = minor
    return needed


def test_present_walks_keys_lists_and_any_depth() -> None:
    job = {"spec": {"successPolicy": {"rules": []}, "template": {"spec": {"containers": [{"name": "x"}]}}}}
    assert present(job, "spec.successPolicy") and not present(job, "spec.managedBy")
    assert present({"a": [{"b": 1}, {}]}, "a[].b") and not present({"a": [{}]}, "a[].b")
    assert present({"x": {"y": [{"z": {"rule": 1}}]}}, "x..rule") and not present({"x": {}}, "x..rule")
    objects = [{"kind": "Job", **job}]
    assert required_floor(objects) == {f"Job spec.successPolicy: {FIELD_FLOORS['Job', 'spec.successPolicy'][1]}": 31}


def test_the_chart_floor_covers_every_field_the_operator_sends() -> None:
    needed = required_floor(created_objects())
    needed.update({f"label {k}: {why}": minor for k, (minor, why) in USED_LABELS.items()})
    assert any(key.startswith("Job spec.podFailurePolicy") for key in needed), "the walk found no Job field"
    assert any(key.startswith("Job spec.successPolicy") for key in needed), "no elastic run was rendered"
    floor = chart_floor()
    too_new = {k: f"1.{v}" for k, v in needed.items() if v > floor}
    assert not too_new, f"Chart.yaml kubeVersion >=1.{floor} but the operator sends: {too_new}"
