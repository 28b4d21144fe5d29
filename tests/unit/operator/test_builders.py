"""Table-driven unit tests of the pure builders (speedrun_operator.builders): no API server.

Each case is a manifest tweak of examples/tiny-cpu.yaml (or an example as is) and what the
training Job must look like: pods, torchrun flags, resources, scheduling, queue, policies.
"""

from __future__ import annotations

import copy
import io
import json
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from speedrun_api.manifest import load_job, parse_job
from speedrun_operator import builders
from speedrun_operator.builders.common import STORAGE_SECRET_KEYS
from speedrun_operator.operator_commands import main as cli
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import EXAMPLES, with_changes

SETTINGS = OperatorSettings(default_storage_uri="s3://bucket/runs")
QUEUED = {"spec.runPolicy.queueName": "gpu-queue"}
TINY = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())


def tiny(**sections: Any) -> dict[str, Any]:
    """tiny-cpu in namespace team-a; mapping sections are merged into spec, scalars replace."""
    doc = copy.deepcopy(TINY)
    doc["metadata"]["namespace"] = "team-a"
    for section, values in sections.items():
        if isinstance(values, dict):
            doc["spec"].setdefault(section, {}).update(values)
        else:
            doc["spec"][section] = values
    return doc


@dataclass
class Case:
    name: str
    manifest: dict[str, Any]
    pods: int
    nnodes: str
    nproc: int
    limits: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    queue: str | None = None
    suspended: bool = False
    elastic: bool = False


CASES = [
    Case("cpu", tiny(), pods=2, nnodes="2", nproc=1, limits={"memory": "2Gi"}),  # the example's memory
    Case(
        "gpu-multi-node",  # with the example's opt-in queue
        with_changes(yaml.safe_load((EXAMPLES / "gpt2-124m-8xh100.yaml").read_text()), **QUEUED),
        pods=2,
        nnodes="2",
        nproc=8,
        limits={"nvidia.com/gpu": "8", "memory": "512Gi"},
        node_selector={},  # the default profile, none: the GPU request alone (test_accelerator_labels.py)
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        queue="gpu-queue",
        suspended=True,
    ),
    Case(
        "elastic",
        tiny(resources={"nodes": None, "minNodes": 1, "maxNodes": 2}, train={"batchSize": 16}),
        pods=2,
        nnodes="1:2",
        nproc=1,
        limits={"memory": "2Gi"},
        elastic=True,
    ),
    Case(
        "kueue",
        tiny(runPolicy={"queueName": "team-queue", "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 600}),
        pods=2,
        nnodes="2",
        nproc=1,
        limits={"memory": "2Gi"},
        queue="team-queue",
        suspended=True,
    ),
]


def parse(manifest: dict[str, Any]) -> Any:
    doc = copy.deepcopy(manifest)
    resources = doc["spec"].get("resources", {})
    doc["spec"]["resources"] = {k: v for k, v in resources.items() if v is not None}
    return parse_job(doc)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_train_job(case: Case) -> None:
    job = parse(case.manifest)
    name = job.metadata.name
    manifest = builders.build_train_job(job, SETTINGS)
    spec = manifest["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]

    assert manifest["metadata"]["name"] == f"{name}-train"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == case.pods
    assert pod["subdomain"] == name and pod["restartPolicy"] == "Never"
    cmd = container["command"]
    assert cmd[:4] == ["python", "-m", "speedrun_trainer.train.torchrun", f"--nnodes={case.nnodes}"]
    assert f"--nproc-per-node={case.nproc}" in cmd
    assert "--rdzv-backend=c10d" in cmd
    assert f"--rdzv-endpoint={name}-train-0.{name}:29400" in cmd
    # Gang restarts are the operator's (counted in status.restarts): neither torchrun nor the Job retries.
    # The agents wait at least the start-up deadline (3600 s by default) for the others.
    assert "--max-restarts=0" in cmd and "--rdzv-conf=join_timeout=3600,read_timeout=3600" in cmd
    assert cmd[-4:] == ["-m", "speedrun_trainer.train", "--config", "/etc/speedrun/run.json"]
    assert container.get("resources", {}).get("limits", {}) == case.limits
    assert pod.get("nodeSelector", {}) == case.node_selector
    assert pod.get("tolerations", []) == case.tolerations
    labels = manifest["metadata"]["labels"]
    assert labels.get("kueue.x-k8s.io/queue-name") == case.queue
    assert spec["template"]["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == case.queue
    assert spec["suspend"] is case.suspended
    assert ("successPolicy" in spec) is case.elastic
    assert spec["backoffLimit"] == 0
    assert labels["speedrun.dev/attempt"] == spec["template"]["metadata"]["labels"]["speedrun.dev/attempt"] == "0"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pods_are_hardened(case: Case) -> None:
    job = parse(case.manifest)
    for manifest in (builders.build_train_job(job, SETTINGS), builders.build_eval_job(job, SETTINGS)):
        pod = manifest["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory"}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert all("value" in e or "valueFrom" in e for e in container["env"])
        rules = manifest["spec"]["podFailurePolicy"]["rules"]
        assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_policies_and_credentials_come_from_the_spec() -> None:
    manifest = tiny(
        runPolicy={
            "maxRestarts": 5,
            "activeDeadlineSeconds": 3600,
            "ttlSecondsAfterFinished": 600,
            "rendezvousTimeoutSeconds": 1800,
            "startupDeadlineSeconds": 600,
        },
        storage={"uri": "s3://b/p", "endpointUrl": "http://minio:9000", "secretRef": {"name": "s3-creds"}},
        tracking={"wandb": {"mode": "online", "secretRef": {"name": "wandb"}}},
        resources={"cpu": "4", "memory": "16Gi", "priorityClassName": "speedrun-high", "nodeSelector": {"pool": "cpu"}},
    )
    job = parse(manifest)
    spec = builders.build_train_job(job, SETTINGS)["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["backoffLimit"] == 0 and "--rdzv-conf=join_timeout=1800,read_timeout=1800" in container["command"]
    # The TTL is set by the operator once it has recorded the outcome (handlers/reconcile.py).
    assert spec["activeDeadlineSeconds"] == 3600 and "ttlSecondsAfterFinished" not in spec
    assert pod["priorityClassName"] == "speedrun-high" and pod["nodeSelector"] == {"pool": "cpu"}
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    env = {e["name"]: e for e in container["env"]}
    assert env["SPEEDRUN_STORAGE_URI"]["value"] == "s3://b/p"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": key}}
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "WANDB_API_KEY"}}
    assert env["WANDB_MODE"]["value"] == "online"
    assert not any("secret" in json.dumps(e.get("value", "")).lower() for e in container["env"])


def test_eval_job_is_one_standalone_torchrun_pod_with_results_in_its_termination_message() -> None:
    job = parse(yaml.safe_load((EXAMPLES / "gpt2-124m-8xh100.yaml").read_text()))
    manifest = builders.build_eval_job(job, SETTINGS)
    spec = manifest["spec"]
    [container] = spec["template"]["spec"]["containers"]
    assert manifest["metadata"]["name"] == "gpt2-124m-eval"
    assert spec["completions"] == spec["parallelism"] == 1 and spec["backoffLimit"] == SETTINGS.eval_backoff_limit
    assert container["command"] == [
        "python",
        "-m",
        "speedrun_trainer.train.torchrun",
        "--nnodes=1",
        "--nproc-per-node=8",
        "--standalone",
        "-m",
        "speedrun_trainer.evaluation",
        "--config",
        "/etc/speedrun/run.json",
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SPEEDRUN_TERMINATION_LOG"] == container["terminationMessagePath"] == "/dev/termination-log"


def test_configmap_and_service() -> None:
    job = parse(tiny())
    cm = builders.build_run_configmap(job)
    assert cm["metadata"]["name"] == "tiny-cpu-run" and cm["metadata"]["namespace"] == "team-a"
    config = json.loads(cm["data"]["run.json"])
    assert config["spec"]["train"]["steps"] == 300 and config["metadata"] == {
        "name": "tiny-cpu",
        "namespace": "team-a",
        "labels": {},
        "annotations": {},
    }
    svc = builders.build_headless_service(job)
    assert svc["metadata"]["name"] == "tiny-cpu"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"speedrun.dev/job": "tiny-cpu", "speedrun.dev/role": "train"}
    train_labels = builders.build_train_job(job, SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= train_labels.items()


def test_image_and_selectors_follow_the_settings() -> None:
    gpu = parse(yaml.safe_load((EXAMPLES / "gpt2-124m-8xh100.yaml").read_text()))
    plain = OperatorSettings(trainer_image="example.com/t:1", accelerator_labels="none")
    [container] = builders.build_train_job(gpu, plain)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "example.com/t:1"
    assert "nodeSelector" not in builders.build_train_job(gpu, plain)["spec"]["template"]["spec"]
    own = parse(tiny(image="example.com/mine:2"))
    [container] = builders.build_train_job(own, plain)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "example.com/mine:2"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (tiny(storage={"uri": "file:///data/runs"}), r"spec.storage.uri: local storage \(file:// or a path\)"),
    ],
)
def test_check_runnable_refuses_what_a_cluster_cannot_run(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(builders.BuildError, match=message):
        builders.check_runnable(parse(manifest), SETTINGS)


def test_storage_is_required_without_an_operator_default() -> None:
    with pytest.raises(builders.BuildError, match=r"spec\.storage\.uri: required"):
        builders.check_runnable(parse(tiny()), OperatorSettings())
    builders.check_runnable(parse(tiny(storage={"uri": "s3://b/p"})), OperatorSettings())


DEFAULT_STORAGE = OperatorSettings(
    default_storage_uri="s3://bucket/runs/",
    default_storage_endpoint_url="https://s3.example.com",
    default_storage_secret="s3-default",
)
OWN = {"uri": "s3://own/p", "endpointUrl": "http://minio:9000", "secretRef": {"name": "own-creds"}}


@pytest.mark.parametrize(
    ("storage", "settings", "uri", "endpoint", "secret"),
    [
        # No spec.storage: the operator's default, endpoint and Secret included.
        (None, DEFAULT_STORAGE, "s3://bucket/runs/team-a/tiny-cpu", "https://s3.example.com", "s3-default"),
        # A job's own URI wins as a whole: the default endpoint and Secret never go with it.
        ({"uri": "s3://own/p"}, DEFAULT_STORAGE, "s3://own/p", None, None),
        (OWN, DEFAULT_STORAGE, "s3://own/p", "http://minio:9000", "own-creds"),
        # Under the default prefix, a job's own Secret (or endpoint) replaces the default's.
        ({"secretRef": {"name": "team-creds"}}, DEFAULT_STORAGE, "s3://bucket/runs/team-a/tiny-cpu",
         "https://s3.example.com", "team-creds"),
        ({"endpointUrl": "http://minio:9000"}, DEFAULT_STORAGE, "s3://bucket/runs/team-a/tiny-cpu",
         "http://minio:9000", "s3-default"),
        # A default URI alone (AWS, the pods' own identity): no endpoint, no Secret.
        (None, SETTINGS, "s3://bucket/runs/team-a/tiny-cpu", None, None),
    ],
    ids=["default", "own-uri", "own-all", "own-secret", "own-endpoint", "default-uri-only"],
)  # fmt: skip
def test_storage_env_of_training_and_eval_pods(
    storage: dict[str, Any] | None, settings: OperatorSettings, uri: str, endpoint: str | None, secret: str | None
) -> None:
    job = parse(tiny(storage=storage) if storage else tiny())
    for built in (builders.build_train_job(job, settings), builders.build_eval_job(job, settings)):
        [container] = built["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["SPEEDRUN_STORAGE_URI"]["value"] == uri
        assert env.get("AWS_ENDPOINT_URL", {}).get("value") == endpoint
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] in STORAGE_SECRET_KEYS}
        assert refs == {key: {"name": secret, "key": key} for key in STORAGE_SECRET_KEYS if secret}


def test_render_gpt2_example_one_pod_per_node_with_eight_gpus() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli(["render", str(EXAMPLES / "gpt2-124m-8xh100.yaml")]) == 0
    docs = list(yaml.safe_load_all(out.getvalue()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Job", "Job"]
    train = docs[2]["spec"]
    assert train["completions"] == train["parallelism"] == 2  # one pod per node
    [container] = train["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["command"] == [
        "python",
        "-m",
        "speedrun_trainer.train.torchrun",
        "--nnodes=2",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpt2-124m-train-0.gpt2-124m:29400",
        "--rdzv-id=gpt2-124m-0",
        "--rdzv-conf=join_timeout=3600,read_timeout=3600",
        "--max-restarts=0",
        "-m",
        "speedrun_trainer.train",
        "--config",
        "/etc/speedrun/run.json",
    ]
    assert json.loads(docs[0]["data"]["run.json"]) == json.loads(json.dumps(load_job_manifest()))


def load_job_manifest() -> dict[str, Any]:
    job = load_job(EXAMPLES / "gpt2-124m-8xh100.yaml")
    return json.loads(builders.build_run_configmap(job)["data"]["run.json"])


def test_render_json_and_invalid_manifest(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["render", str(EXAMPLES / "tiny-cpu.yaml"), "-o", "json"]) == 0
    captured = capsys.readouterr()
    assert [item["kind"] for item in json.loads(captured.out)["items"]] == ["ConfigMap", "Service", "Job", "Job"]
    assert "spec.storage.uri: required" in captured.err  # tiny-cpu has no storage: the operator would refuse it
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny(model={"numHeads": 5})))
    assert cli(["render", str(bad)]) == 2
    assert "spec.model.hiddenDim" in capsys.readouterr().err


def test_each_attempt_has_its_own_rendezvous_id() -> None:
    """A straggler agent of a replaced attempt (stuck_pods.py) reaches the same store address but
    can never join the next attempt's rendezvous: the id is the run's and the attempt's."""
    job = parse(tiny())
    ids = []
    for attempt in (0, 1):
        [container] = builders.build_train_job(job, SETTINGS, attempt)["spec"]["template"]["spec"]["containers"]
        ids.append([c for c in container["command"] if c.startswith("--rdzv-id=")])
    assert ids[0] != ids[1] and ids[1][0].endswith("-1"), ids
