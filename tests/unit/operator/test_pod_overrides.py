"""spec.podOverrides and the chart's trainer.podOverrides: refusals, the merge, and what the
builders make of them (api pod_overrides.py, operator builders/pod_overrides.py).

The same on the real apiserver: tests/cluster/test_pod_overrides.py and the overlay rows of
tests/cluster/test_admission.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_api import k8s_schemas
from speedrun_api.manifest import SpecError, parse_job
from speedrun_api.pod_overrides import RESERVED_MOUNT_PATHS, RESERVED_VOLUMES
from speedrun_operator.builders import build_eval_job, build_train_job
from speedrun_operator.builders.pod_overrides import merge_affinity
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import ROOT
from tests.support.kube_admission import CustomResourceSchema
from tests.support.overlay_cases import EVERY_FIELD, OVERLAY_ADMITTED, OVERLAY_REFUSED, every_field, overlay

SETTINGS = OperatorSettings(default_storage_uri="s3://bucket/runs")
CRD = CustomResourceSchema(yaml.safe_load((ROOT / "crds" / "speedrunjob.yaml").read_text().split("\n", 2)[2]))
OPENAPI = Path("/root/go/pkg/mod/k8s.io/kubernetes@v1.36.3/api/openapi-spec/v3/api__v1_openapi.json")


def pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod(job)["containers"][0]["env"]}


def with_chart(overlay_: dict[str, Any], **settings: Any) -> OperatorSettings:
    return OperatorSettings(default_storage_uri="s3://bucket/runs", pod_overrides=json.dumps(overlay_), **settings)


@pytest.mark.parametrize(("field", "manifest"), OVERLAY_REFUSED, ids=[f for f, _ in OVERLAY_REFUSED])
def test_the_model_refuses_naming_the_field(field: str, manifest: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as err:
        parse_job(manifest)
    assert any(line.startswith(field) for line in err.value.lines), err.value.lines


@pytest.mark.parametrize("manifest", OVERLAY_ADMITTED, ids=range(len(OVERLAY_ADMITTED)))
def test_admitted_overlays_pass_the_model_and_the_crd_schema(manifest: dict[str, Any]) -> None:
    parse_job(manifest)
    assert CRD.validate(CRD.default(manifest)) == []


def test_the_training_pods_take_every_field() -> None:
    job = build_train_job(parse_job(every_field("big")), SETTINGS)
    spec, meta = pod(job), job["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "nlp" and meta["labels"]["speedrun.dev/job"] == "big"
    assert meta["annotations"] == EVERY_FIELD["annotations"]
    assert spec["imagePullSecrets"] == [{"name": "registry-cred"}]
    assert spec["serviceAccountName"] == "trainer-identity" and spec["automountServiceAccountToken"] is True
    assert env(job)["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Mi"}
    assert {"config", "dshm", "tmp", "cache", "datasets", "extra-config"} == set(volumes)
    mounts = [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]]
    assert mounts[-2:] == ["/datasets", "/etc/extra"] and "/etc/speedrun" in mounts
    assert spec["affinity"] == EVERY_FIELD["affinity"]
    assert EVERY_FIELD["tolerations"][0] in spec["tolerations"]
    assert spec["securityContext"]["supplementalGroups"] == [4242] and spec["securityContext"]["runAsNonRoot"]
    assert spec["hostNetwork"] and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["containers"][0]["resources"]["limits"]["vpc.amazonaws.com/efa"] == "32"
    own = spec["containers"][0]["securityContext"]
    assert own["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]} and own["readOnlyRootFilesystem"]


def test_the_eval_pod_takes_the_overlay_but_not_the_network_fields() -> None:
    job = build_eval_job(parse_job(every_field("big")), SETTINGS)
    spec = pod(job)
    assert spec["serviceAccountName"] == "trainer-identity" and "HF_TOKEN" in env(job)
    assert spec["affinity"] == EVERY_FIELD["affinity"]
    assert "hostNetwork" not in spec and "rdma/hca" not in spec["containers"][0].get("resources", {}).get("limits", {})


def test_a_tpu_runs_eval_pod_on_cpu_takes_no_affinity_and_no_accelerator_toleration() -> None:
    doc = overlay(
        "tpu",
        affinity=EVERY_FIELD["affinity"],
        tolerations=[{"key": "google.com/tpu", "operator": "Exists"}, {"key": "dedicated", "operator": "Exists"}],
    )
    doc["spec"]["resources"] = {"accelerator": "tpu-v5e", "topology": "2x2", "nodes": 1, "procsPerNode": 1}
    doc["spec"]["train"]["batchSize"] = 128
    job = parse_job(doc)
    train, evaluation = pod(build_train_job(job, SETTINGS)), pod(build_eval_job(job, SETTINGS))
    assert "affinity" in train and "affinity" not in evaluation
    assert {"key": "dedicated", "operator": "Exists"} in evaluation["tolerations"]
    assert all(t.get("key") != "google.com/tpu" for t in evaluation["tolerations"])


def test_the_jobs_overlay_wins_over_the_charts_field_by_field() -> None:
    chart = {
        "labels": {"tier": "gpu", "team": "platform"},
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"}, {"name": "NCCL_IB_HCA", "value": "chart"}, {"name": "OWN"}],
        "volumes": [{"name": "datasets", "hostPath": {"path": "/mnt/data"}}, {"name": "models", "emptyDir": {}}],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "imagePullSecrets": [{"name": "chart-cred"}],
        "serviceAccountName": "chart-sa",
        "securityContext": {"supplementalGroups": [1], "fsGroupChangePolicy": "Always"},
        "affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}, "nodeAffinity": {}},
        "shmSize": "1Gi",
    }
    doc = every_field("merge")
    doc["spec"]["env"] = {"OWN": "from spec.env"}
    job = build_train_job(parse_job(doc), with_chart(chart, service_account="settings-sa"))
    spec, labels = pod(job), job["spec"]["template"]["metadata"]["labels"]
    assert labels["tier"] == "gpu" and labels["team"] == "nlp"
    variables = [e["name"] for e in spec["containers"][0]["env"]]
    assert variables.count("NCCL_IB_HCA") == 1 and env(job)["NCCL_IB_HCA"]["value"] == "mlx5"
    assert env(job)["NCCL_DEBUG"]["value"] == "WARN" and env(job)["OWN"]["value"] == "from spec.env"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["datasets"] and "models" in volumes  # the job's datasets replaced the chart's
    assert "/models" in [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]]
    assert {"key": "gpu", "operator": "Exists"} in spec["tolerations"] and len(spec["tolerations"]) == 2
    assert spec["imagePullSecrets"] == [{"name": "chart-cred"}, {"name": "registry-cred"}]
    assert spec["serviceAccountName"] == "trainer-identity"
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert spec["securityContext"]["supplementalGroups"] == [4242]
    assert (
        "podAffinity" in spec["affinity"]
        and spec["affinity"]["nodeAffinity"] == EVERY_FIELD["affinity"]["nodeAffinity"]
    )
    assert {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"]["sizeLimit"] == "256Mi"


def test_the_charts_overlay_alone_and_the_settings_service_account() -> None:
    job = parse_job(overlay("plain"))
    assert (
        pod(build_train_job(job, with_chart({}, service_account="settings-sa")))["serviceAccountName"] == "settings-sa"
    )
    spec = pod(build_train_job(job, with_chart({"serviceAccountName": "chart-sa", "shmSize": "8Gi"})))
    assert spec["serviceAccountName"] == "chart-sa" and spec["automountServiceAccountToken"] is False
    assert {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    plain = pod(build_train_job(job, SETTINGS))
    assert {v["name"]: v for v in plain["volumes"]}["dshm"]["emptyDir"] == {"medium": "Memory"}


def test_required_node_terms_of_the_builders_and_the_overlay_are_anded() -> None:
    def term(key: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": key, "operator": "Exists"}]}

    def required(*keys: str) -> dict[str, Any]:
        terms = [term(k) for k in keys]
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}

    merged = merge_affinity(required("a", "b"), required("c"))
    terms = merged["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = [[e["key"] for e in t["matchExpressions"]] for t in terms]
    assert keys == [["a", "c"], ["b", "c"]]  # (a OR b) AND c
    assert merge_affinity({}, required("c")) == required("c")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"labels": {"speedrun.dev/role": "x"}}', "labels: speedrun.dev/role is the operator's"),
        ('{"volumes": [{"name": "a"}]}', "volumes: [0]: give exactly one volume source"),
        ('{"hostNetwork": true}', "hostNetwork: unknown field"),
    ],
)
def test_a_chart_overlay_the_spec_would_refuse_stops_the_operator(value: str, problem: str) -> None:
    line = OperatorSettings(pod_overrides=value).problem()
    assert line is not None and line.startswith("SPEEDRUN_OPERATOR_POD_OVERRIDES") and problem in line, line
    assert "\n" not in line


def test_the_operators_own_fields_cannot_be_overlaid() -> None:
    for change in (
        {"volumes": [{"name": "cache", "emptyDir": {}}]},
        {"env": [{"name": "SPEEDRUN_RUN_ID", "value": "x"}]},
    ):
        with pytest.raises(SpecError):
            parse_job(overlay(**change))
    doc = overlay(volumes=[{"name": "data", "emptyDir": {}}], volumeMounts=[{"name": "data", "mountPath": "/tmp"}])
    with pytest.raises(SpecError, match=r"spec\.podOverrides\.volumeMounts"):
        parse_job(doc)


def test_the_reserved_volumes_and_mount_paths_are_the_builders_own() -> None:
    # The api package cannot import the operator's builders, so it keeps their names in a list of its
    # own (RESERVED_VOLUMES, RESERVED_MOUNT_PATHS): they must be exactly what the builders make.
    for built in (build_train_job(parse_job(overlay()), SETTINGS), build_eval_job(parse_job(overlay()), SETTINGS)):
        assert sorted(v["name"] for v in pod(built)["volumes"]) == sorted(RESERVED_VOLUMES)
        mounts = pod(built)["containers"][0]["volumeMounts"]
        assert sorted(m["mountPath"] for m in mounts) == sorted(RESERVED_MOUNT_PATHS)


@pytest.mark.skipif(not OPENAPI.is_file(), reason="needs Kubernetes' OpenAPI document (the Go module cache)")
def test_the_vendored_schemas_are_kubernetes_own() -> None:
    stored = json.loads(k8s_schemas.VENDORED.read_text())
    assert stored == json.loads(json.dumps(k8s_schemas.vendor(OPENAPI)))


def test_the_python_check_reads_the_schema_as_the_apiserver() -> None:
    volume = k8s_schemas.schema("Volume")
    assert k8s_schemas.problems(volume, {"name": "a", "emptyDir": {"sizeLimit": 5}}, "v") == []
    assert k8s_schemas.problems(volume, {"name": "a", "emptyDir": {"sizeLimit": True}}, "v")
    assert k8s_schemas.problems(volume, {"name": "a", "hostPath": {}}, "v") == ["v.hostPath.path: required"]
    assert k8s_schemas.problems(volume, {"name": 3}, "v") == ["v.name: must be of type string"]
    claim = {"name": "a", "ephemeral": {"volumeClaimTemplate": {"metadata": {"labels": {"x": "y"}}, "spec": {}}}}
    assert k8s_schemas.problems(volume, copy.deepcopy(claim), "v") == []
