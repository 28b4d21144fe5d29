"""The Helm chart, checked without a cluster.

`helm lint --strict` and `helm template` with every values file in charts/speedrun-operator/ci/;
each rendered built-in object validated offline against Kubernetes 1.32's OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail); the CRD, ServiceMonitor and PodMonitor,
which those schemas do not cover, checked structurally. Then the chart against the operator's
own code: the environment it sets is what settings.py reads, the RBAC covers every kind
kube.py touches (and no more), the PodMonitor selects the pods the builders create, the dashboard
queries metrics that exist.

    pytest tests/unit/deploy/test_helm.py     # helm from tests/support/helm_tool.py, cached under .cache/helm/
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from speedrun_api.crd import render_crd
from speedrun_api.manifest import load_job
from speedrun_operator import kube
from speedrun_operator import labels as L
from speedrun_operator.builders import build_train_job
from speedrun_operator.operator_commands import kopf_run_argv
from speedrun_operator.operator_metrics import REGISTRY, serve
from speedrun_operator.settings import DEFAULT_TPU_TRAINER_IMAGE, DEFAULT_TRAINER_IMAGE, OperatorSettings, env_name
from speedrun_operator.training_progress import METRIC_FIELDS
from tests.support.helpers import ROOT

CHART = ROOT / "charts" / "speedrun-operator"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.32"  # kind v0.27's default node image
RELEASE, NAMESPACE = "rel", "speedrun"
# Kinds the Kubernetes schemas do not describe; checked structurally below.
NOT_BUILTIN = {"CustomResourceDefinition", "ServiceMonitor", "PodMonitor"}

# The monitors render only where the cluster serves their kinds (.Capabilities.APIVersions);
# `render` plays a cluster with the Prometheus Operator's CRDs unless told otherwise.
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor")

_renders: dict[tuple[str, ...], list[dict[str, Any]]] = {}


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


def render(
    helm: Path, *args: str, chart: Path = CHART, release: str = RELEASE, apis: tuple[str, ...] = MONITORING_APIS
) -> list[dict[str, Any]]:
    """`helm template` -> the objects (cached per arguments; CRDs included)."""
    key = (str(chart), release, *args, *apis)
    if key not in _renders:
        api_args = [arg for api in apis for arg in ("--api-versions", api)]
        proc = run_helm(
            helm, "template", release, str(chart), "--namespace", NAMESPACE,
            "--kube-version", KUBE_VERSION, "--include-crds", *api_args, *args,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        _renders[key] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return _renders[key]


def values_args(path: Path) -> list[str]:
    return ["--values", str(path)]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# ---- lint and offline schema validation --------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_lint_is_clean(helm: Path, values: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *values_args(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_builtin_object_is_valid_for_kubernetes(helm: Path, values: Path) -> None:
    objects = render(helm, *values_args(values))
    errors = []
    for obj in objects:
        if obj["kind"] in NOT_BUILTIN:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {err.message} at {list(err.path)}")
    assert not errors, "\n".join(errors)
    assert {"Deployment", "ServiceAccount"} <= {o["kind"] for o in objects}


def test_values_files_cover_the_interesting_cases() -> None:
    names = {p.stem for p in VALUES_FILES}
    assert {"default-values", "cluster-wide-values", "monitoring-values", "custom-image-values"} <= names


# ---- the CRD -----------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_one(helm: Path) -> None:
    generated = render_crd()
    assert (ROOT / "crds" / "speedrunjob.yaml").read_text() == generated, "run `speedrun crd`"
    assert (CHART / "crds" / "speedrunjob.yaml").read_text() == generated, "run `speedrun crd`"
    rendered = one(render(helm), "CustomResourceDefinition")
    assert rendered == yaml.safe_load(generated)


def test_crd_is_structural(helm: Path) -> None:
    crd = one(render(helm), "CustomResourceDefinition")
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert spec["names"]["shortNames"] == ["srj"]
    [version] = spec["versions"]
    assert version["served"] and version["storage"] and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["type"] == "object" and {"spec", "status"} <= set(schema["properties"])

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title"} & set(node)
            if node.get("x-kubernetes-int-or-string"):  # structural's one union: Kubernetes' quantities
                assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], where
                forbidden -= {"anyOf"}
            assert not forbidden, f"{where}: not structural: {sorted(forbidden)}"
            if "properties" in node:
                assert node.get("type") == "object", f"{where}: properties without type: object"
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(schema, "openAPIV3Schema")
    # The CRD object itself against apiextensions.k8s.io/v1 (JSONSchemaProps included).
    kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)


# ---- the operator Deployment and its settings --------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_operator_env_is_what_settings_read(helm: Path, values: Path) -> None:
    objects = render(helm, *values_args(values))
    env = operator_env(objects)
    ours = {name for name in env if name.startswith("SPEEDRUN_")}
    assert ours == {env_name(f.name) for f in fields(OperatorSettings)}
    settings = OperatorSettings.from_env(env)  # raises on a value the operator cannot parse
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert settings.liveness.endswith(f":{ports['health']}/healthz")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    if settings.metrics_port:
        assert ports["http-metrics"] == settings.metrics_port
    else:
        assert "http-metrics" not in ports and not by_kind(objects, "Service")
    assert container["command"] == ["speedrun", "operator"]


def test_defaults_serve_the_release_namespace_with_the_default_trainer_image(helm: Path) -> None:
    settings = OperatorSettings.from_env(operator_env(render(helm)))
    assert settings.trainer_image == DEFAULT_TRAINER_IMAGE
    assert settings.tpu_trainer_image == DEFAULT_TPU_TRAINER_IMAGE
    assert settings.trainer_env_vars() == {} and settings.problem() is None
    assert settings.namespaces == (NAMESPACE,)
    assert not settings.leader_election
    assert settings.metrics_port == 9090
    argv = kopf_run_argv(settings)
    assert argv[argv.index("--namespace") + 1] == NAMESPACE and "--standalone" in argv


def test_cluster_wide_serves_every_namespace_with_leader_election(helm: Path) -> None:
    objects = render(helm, *values_args(CHART / "ci" / "cluster-wide-values.yaml"))
    settings = OperatorSettings.from_env(operator_env(objects))
    assert settings.namespaces == () and settings.leader_election and settings.problem() is None
    deployment_name = one(objects, "Deployment")["metadata"]["name"]
    assert (settings.lease_namespace, settings.lease_name) == (NAMESPACE, deployment_name)
    assert "--all-namespaces" in kopf_run_argv(settings)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def test_custom_images_and_resources(helm: Path) -> None:
    objects = render(helm, *values_args(CHART / "ci" / "custom-image-values.yaml"))
    settings = OperatorSettings.from_env(operator_env(objects))
    assert settings.trainer_image == (
        "registry.example.com/ml/speedrun-trainer:0.1.0-cu128"
        "@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
    )
    assert settings.tpu_trainer_image == "registry.example.com/ml/speedrun-trainer-tpu:0.1.0-jax"
    assert settings.image_pull_policy == "Always" and settings.run_as_user == 2000
    assert settings.service_account == "speedrun-trainer" and settings.accelerator_labels == "nvidia-gfd"
    assert settings.trainer_env_vars() == {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_HCA": "mlx5_0,mlx5_1"}
    assert (settings.default_storage_endpoint_url, settings.default_storage_secret) == (
        "https://minio.storage.svc:9000",
        "speedrun-s3",
    )
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/ml/speedrun-operator:0.1.0-rc1"
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "speedrun-operator"
    assert not by_kind(objects, "Pod"), "no metrics Service, so no helm test pod"
    cluster_roles = [o["metadata"]["name"] for o in by_kind(objects, "ClusterRole")]
    assert [r.rpartition("-")[2] for r in cluster_roles] == ["nodes"], "namespaced: nothing else cluster-wide"


def test_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None and chart["appVersion"] == version.group(1)
    assert DEFAULT_TRAINER_IMAGE.endswith(f":{chart['appVersion']}")
    assert DEFAULT_TPU_TRAINER_IMAGE.endswith(f":{chart['appVersion']}")


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_pods_are_hardened(helm: Path, values: Path) -> None:
    objects = render(helm, *values_args(values))
    pods = [o["spec"]["template"]["spec"] for o in by_kind(objects, "Deployment")] + [
        o["spec"] for o in by_kind(objects, "Pod")
    ]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_helm_test_pod_passes_against_the_operators_metrics_server(helm: Path) -> None:
    """The `helm test` pod's script, run here against the operator's real metrics server."""
    pod = one(render(helm), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = f"{RELEASE}-speedrun-operator-metrics:9090"
    assert service in command[2]
    server = serve(port)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", command[2].replace(service, f"127.0.0.1:{port}")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0 and "ok, the operator serves speedrun_operator_jobs" in proc.stdout, proc.stderr


# ---- RBAC --------------------------------------------------------------------------------------


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def group_of(kind: kube.Kind) -> str:
    return kind.api_version.rpartition("/")[0]


# What the operator does with each resource (main.py, handlers/, kube.py, kopf), and so exactly
# what the chart grants: kopf watches and patches (finalizer, annotations) the SpeedrunJobs; the
# reconcile gets/creates/patches (adopts, suspends) the children and watches the Jobs' events;
# pods are listed; a gang restart deletes the failed attempt's training Job (everything else
# goes by ownerReferences) and force-deletes its pods stuck on a lost node, whose Node it reads
# (its own ClusterRole, rbac.readNodes); Events are posted, and a training Job's are listed (FailedCreate).
OPERATOR_VERBS: dict[kube.Kind, set[str]] = {
    kube.SPEEDRUNJOB: {"get", "list", "watch", "patch"},
    kube.JOB: {"get", "list", "watch", "create", "patch", "delete"},
    kube.CONFIGMAP: {"get", "create", "patch"},
    kube.SERVICE: {"get", "create", "patch"},
    kube.POD: {"get", "list", "delete"},
    kube.EVENT: {"create", "list"},
    kube.NODE: {"get"},
    kube.POD_GROUP: {"get", "create"},
    kube.COSCHEDULING_POD_GROUP: {"get", "create"},
    kube.KUEUE_WORKLOAD: {"list", "patch"},
    kube.KUEUE_WORKLOAD_V1BETA1: {"list", "patch"},
}
SEPARATE = {kube.NODE}  # granted by the `-nodes` ClusterRole in both modes, not the main role
EXTRA_VERBS = {
    ("", "pods/status"): {"patch"},  # a running pod on a lost node marked Failed (stuck_pods.py)
    ("speedrun.dev", "speedrunjobs/status"): {"patch"},
    ("speedrun.dev", "speedrunjobs/finalizers"): {"update"},
}


def expected_rbac(cluster_wide: bool) -> dict[tuple[str, str], set[str]]:
    expected = {(group_of(k), k.plural): verbs for k, verbs in OPERATOR_VERBS.items() if k not in SEPARATE}
    expected.update(EXTRA_VERBS)
    if cluster_wide:  # kopf's scanning of CRDs (a namespaced operator has it off: setup.py)
        expected[("apiextensions.k8s.io", "customresourcedefinitions")] = {"list", "watch"}
    return expected


def test_rbac_table_covers_every_kind_the_client_knows() -> None:
    assert set(kube.KINDS.values()) == set(OPERATOR_VERBS)


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_rbac_grants_what_the_operator_does_and_no_more(helm: Path, values: Path) -> None:
    objects = render(helm, *values_args(values))
    settings = OperatorSettings.from_env(operator_env(objects))
    cluster_wide = settings.namespaces == ()
    roles = by_kind(objects, "ClusterRole" if cluster_wide else "Role")
    lease_roles = [r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    [nodes_role] = [r for r in by_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith("-nodes")]
    assert granted(nodes_role["rules"]) == {(group_of(k), k.plural): OPERATOR_VERBS[k] for k in SEPARATE}
    roles = [r for r in roles if r not in lease_roles and r is not nodes_role]
    assert roles
    for role in roles:
        assert granted(role["rules"]) == expected_rbac(cluster_wide)
    if settings.leader_election:
        [lease_role] = lease_roles
        assert lease_role["metadata"]["namespace"] == settings.lease_namespace == NAMESPACE
        assert granted(lease_role["rules"]) == {("coordination.k8s.io", "leases"): {"get", "create", "patch"}}
    else:
        assert lease_roles == []
    if not cluster_wide:
        bindings = [b for b in by_kind(objects, "RoleBinding")
                    if not b["metadata"]["name"].endswith("-leader-election")]  # fmt: skip
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(settings.namespaces)
        assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(settings.namespaces)
        # Nothing cluster-scoped but `get` on nodes (rbac.readNodes, off: a namespace admin can
        # install it, README "Install modes").
        assert by_kind(objects, "ClusterRole") == [nodes_role]
        bound = [b["roleRef"]["name"] for b in by_kind(objects, "ClusterRoleBinding")]
        assert bound == [nodes_role["metadata"]["name"]]
    sa = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_without_read_nodes_a_namespaced_install_has_nothing_cluster_scoped(helm: Path) -> None:
    objects = render(helm, "--set", "rbac.readNodes=false")
    assert by_kind(objects, "ClusterRole") == [] and by_kind(objects, "ClusterRoleBinding") == []
    assert by_kind(objects, "Role"), "the namespaced Role is still there"


def test_cluster_wide_rbac_with_namespaces_is_refused(helm: Path) -> None:
    proc = run_helm(
        helm, "template", RELEASE, str(CHART), "--set", "rbac.clusterWide=true",
        "--set", "operator.watchNamespaces={a,b}",
    )  # fmt: skip
    assert proc.returncode != 0 and "operator.watchNamespaces: leave it empty" in proc.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicaCount=2", "replicaCount: Must be less than or equal to 1"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("operator.watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("monitoring.podMonitor.interval=often", "interval"),
        ("imag.tag=x", "Additional property imag is not allowed"),
        ("operator.defaultStorageEndpointUrl=s3.example.com", "defaultStorageEndpointUrl"),
        ("operator.defaultStorageSecret=S3_Creds", "defaultStorageSecret"),
        ("trainer.env.NCCL-DEBUG=INFO", "trainer.env"),
        ("trainer.acceleratorLabels=gcp", "trainer.acceleratorLabels"),
        ("trainer.acceleratorSelectors=false", "Additional property acceleratorSelectors is not allowed"),
    ],
)
def test_schema_rejects_bad_values(helm: Path, setting: str, message: str) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", setting)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


DEFAULT_STORAGE = {
    "operator.defaultStorageUri": "s3://my-bucket/speedruns",
    "operator.defaultStorageEndpointUrl": "https://s3.example.com",
    "operator.defaultStorageSecret": "s3-creds",
}


def set_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def test_default_storage_reaches_the_pods_of_jobs_without_their_own(helm: Path) -> None:
    settings = OperatorSettings.from_env(operator_env(render(helm, *set_args(DEFAULT_STORAGE))))
    assert settings.problem() is None
    job = load_job(ROOT / "examples" / "tiny-cpu.yaml")  # no spec.storage
    [container] = build_train_job(job, settings)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") or e["valueFrom"].get("secretKeyRef") for e in container["env"]}
    assert env["SPEEDRUN_STORAGE_URI"] == "s3://my-bucket/speedruns/default/tiny-cpu"
    assert env["AWS_ENDPOINT_URL"] == "https://s3.example.com"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize("value", ["operator.defaultStorageEndpointUrl=https://s3.example.com",
                                   "operator.defaultStorageSecret=s3-creds"])  # fmt: skip
def test_default_endpoint_or_secret_without_the_default_uri_is_refused(helm: Path, value: str) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", value)
    assert proc.returncode != 0 and "apply to operator.defaultStorageUri: set it too" in proc.stderr, proc.stderr


def test_names_fit_kubernetes_limits(helm: Path) -> None:
    longest_release = "a-release-name-as-long-as-helm-allows-fifty-three-chr"  # helm's limit: 53
    assert len(longest_release) == 53
    objects = render(helm, *values_args(CHART / "ci" / "monitoring-values.yaml"), release=longest_release)
    for obj in objects:
        # Services and Deployments name DNS labels (63); the rest are DNS subdomains (253).
        limit = 63 if obj["kind"] in ("Service", "Deployment") else 253
        assert len(obj["metadata"]["name"]) <= limit, obj["metadata"]["name"]
        for value in obj["metadata"].get("labels", {}).values():
            assert len(value) <= 63, value


# ---- monitoring --------------------------------------------------------------------------------

DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")


def test_no_prometheus_operator_objects_by_default(helm: Path) -> None:
    assert not [o for o in render(helm) if o["apiVersion"].startswith("monitoring.coreos.com/")]


def test_service_monitor_scrapes_the_metrics_service(helm: Path) -> None:
    objects = render(helm, *values_args(CHART / "ci" / "monitoring-values.yaml"))
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(monitor["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["metricRelabelings"] == [{"sourceLabels": ["__name__"], "regex": "python_gc_.*", "action": "drop"}]
    assert "honorLabels" not in endpoint and "relabelings" not in endpoint
    assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])


def test_pod_monitor_selects_rank_0_of_the_training_pods_the_operator_creates(helm: Path) -> None:
    objects = render(helm, *values_args(CHART / "ci" / "monitoring-values.yaml"))
    monitor = one(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel",
                                    "podTargetLabels"}  # fmt: skip
    selector = dict(monitor["spec"]["selector"]["matchLabels"])
    # Kubernetes sets the completion index on Indexed Job pods; only rank 0 serves metrics.
    assert selector.pop(L.LABEL_COMPLETION_INDEX) == "0"
    train_job = build_train_job(load_job(ROOT / "examples" / "tiny-cpu.yaml"), OperatorSettings())
    pod_labels = train_job["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    eval_labels = L.child_labels("tiny-cpu", L.ROLE_EVAL)
    assert not selector.items() <= eval_labels.items(), "the eval pod serves no metrics"
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    container_ports = train_job["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert endpoint["port"] == L.PORT_NAME_METRICS in {p["name"] for p in container_ports}
    assert DURATION.match(endpoint["interval"])
    ours, user = endpoint["relabelings"]  # the chart's own first, then monitoring.podMonitor.relabelings
    sanitized = re.sub(r"[^a-zA-Z0-9_]", "_", L.LABEL_JOB)
    assert ours == {"sourceLabels": [f"__meta_kubernetes_pod_label_{sanitized}"], "targetLabel": "speedrun_job"}
    assert user == {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
    assert endpoint["honorLabels"] is True and "metricRelabelings" not in endpoint
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["research", "leaderboard"]}


def test_monitors_wait_for_the_prometheus_operator_crds(helm: Path, tmp_path: Path) -> None:
    """Enabled but not served by the cluster: no monitor (the install would fail), and a note."""
    monitoring = values_args(CHART / "ci" / "monitoring-values.yaml")
    assert not [o for o in render(helm, *monitoring, apis=()) if o["kind"] in ("ServiceMonitor", "PodMonitor")]
    only_pods = render(helm, *monitoring, apis=("monitoring.coreos.com/v1/PodMonitor",))
    assert {o["kind"] for o in only_pods} & {"ServiceMonitor", "PodMonitor"} == {"PodMonitor"}
    notes = render_notes(helm, tmp_path, *monitoring, apis=())
    assert "no ServiceMonitor was created" in notes and "no PodMonitor was created" in notes
    assert "no ServiceMonitor was created" not in render_notes(helm, tmp_path, *monitoring)


def test_common_labels_on_every_object_but_never_in_selectors(helm: Path) -> None:
    objects = render(helm, *values_args(CHART / "ci" / "custom-image-values.yaml"))
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":  # crds/ is not templated
            continue
        assert obj["metadata"]["labels"]["team"] == "ml-infra", obj["kind"]
    deployment = one(objects, "Deployment")
    assert "team" not in deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "ml-infra"


def test_pod_monitor_cluster_wide_watches_any_namespace(helm: Path) -> None:
    objects = render(helm, "--set", "rbac.clusterWide=true", "--set", "monitoring.podMonitor.enabled=true")
    assert one(objects, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}


def known_metric_names() -> set[str]:
    names = set(METRIC_FIELDS)
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def test_dashboard_queries_metrics_that_exist(helm: Path) -> None:
    objects = render(helm, *values_args(CHART / "ci" / "monitoring-values.yaml"))
    [configmap] = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["speedrun.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    selectors = re.compile(r"\{[^}]*\}")  # label matchers name labels (speedrun_job), not metrics
    used = {name for expr in exprs for name in re.findall(r"\b(speedrun_[a-z_]+)\b", selectors.sub("", expr))}
    assert used and used <= known_metric_names(), used - known_metric_names()
    assert {"speedrun_train_loss", "speedrun_tokens_per_second", "speedrun_mfu", "speedrun_operator_jobs"} <= used
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_dashboard_filters_by_namespace_job_and_run_and_every_panel_has_a_unit() -> None:
    dashboard = json.loads((CHART / "dashboards" / "speedrun.json").read_text())
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables == ["datasource", "namespace", "job", "run"]
    trainer_queries = 0
    for panel in dashboard["panels"]:
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        for target in panel["targets"]:
            for _, matchers in re.findall(r"\b(speedrun_(?!operator_)[a-z_]+)\{([^}]*)\}", target["expr"]):
                assert matchers == 'namespace=~"$namespace", job=~"$job", speedrun_job=~"$run"', target["expr"]
                trainer_queries += 1
    assert trainer_queries >= 7
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for p in dashboard["panels"]}
    assert units["MFU"] == "percentunit" and units["ETA"] == "s"
    assert units["Validation bits per byte"] == "suffix: bits/byte"


# ---- values.yaml and NOTES ---------------------------------------------------------------------


def test_every_value_has_a_doc_comment() -> None:
    """helm-docs style: each setting is preceded by a `# --` comment (continuation lines allowed),
    each group (a schema object with properties) by a plain heading comment, so that the values
    table lists settings, not whole groups; keys inside a free-form default (resources,
    securityContext) belong to their parent's."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, stack = [], []  # stack: (indent, schema node of the key on that line)
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else schema
        node = (parent.get("properties") or {}).get(key) if parent is not None else None
        stack.append((indent, node))
        if parent is None or "properties" not in parent:
            continue  # inside a free-form value
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        documented = j >= 0 and lines[j].startswith(" " * indent + "# --")
        if node is not None and "properties" in node:
            if documented or not lines[i - 1].strip().startswith("#"):
                undocumented.append(f"values.yaml:{i + 1}: group {key}: wants a plain heading comment, not `# --`")
        elif not documented:
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert not undocumented, "\n".join(undocumented)


def test_every_value_is_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], where: str) -> None:
        if not isinstance(value, dict) or "properties" not in node:
            return
        for key, child in value.items():
            assert key in node["properties"], f"{where}{key}: not in values.schema.json"
            walk(child, node["properties"][key], f"{where}{key}.")

    walk(values, schema, "")


def render_notes(helm: Path, tmp_path: Path, *args: str, apis: tuple[str, ...] = MONITORING_APIS) -> str:
    # `helm template` skips NOTES.txt and `helm install --dry-run` wants a cluster, so a copy of
    # the chart renders NOTES.txt into a ConfigMap.
    chart = tmp_path / "chart"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
        (chart / "templates" / "zz-notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
            'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
        )
    objects = render(helm, *args, chart=chart, apis=apis)
    return str(next(o for o in objects if o["metadata"]["name"] == "notes")["data"]["notes"])


def test_notes_say_how_to_submit_watch_and_read_results(helm: Path, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path)
    for expected in (
        f"kubectl -n {NAMESPACE} apply -f my-speedrun.yaml",  # tiny-cpu.yaml has no storage: it needs some
        "--set operator.defaultStorageUri=",
        f"kubectl -n {NAMESPACE} get srj -w",
        "jsonpath='{.status.results}",
        f"helm test {RELEASE}",
        "spec.storage",
    ):
        assert expected in notes, expected


def test_notes_with_default_storage_create_its_secret_in_the_jobs_namespace(helm: Path, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, *set_args(DEFAULT_STORAGE))
    for expected in (
        "the default: s3://my-bucket/speedruns/<namespace>/<name> at https://s3.example.com.",
        "read Secret s3-creds from their own namespace",
        f"kubectl -n {NAMESPACE} create secret generic s3-creds \\\n"
        "       --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...",
        f"kubectl -n {NAMESPACE} apply -f examples/tiny-cpu.yaml",
    ):
        assert expected in notes, expected
