"""`spec.podOverrides` on the real apiserver: a SpeedrunJob with every overlay field is admitted, and
the training Job the operator creates from it carries each field, with the chart's
`trainer.podOverrides` under it; the apiserver admitted that Job, and its pods (the Job
controller's, validated as pods). Admission parity of the overlay: every manifest of
tests/support/overlay_cases.py's OVERLAY_ADMITTED gives a training and an eval Job the apiserver
admits (server-side dry run of what the builders make); its refusals are rows of
tests/cluster/test_admission.py. Those run on the control plane only (no kubelets); the last test
runs a training pod with the overlay in a real container on a real node (the player image as the
trainer image: it runs until SIGTERM) and reads the overlay from inside it through `kubectl exec`:
/dev/shm's size, the env, a mounted volume, the supplemental group.
Run: `pytest -m cluster tests/cluster/test_pod_overrides.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from speedrun_api.manifest import parse_job
from speedrun_operator.builders import build_eval_job, build_train_job
from speedrun_operator.settings import OperatorSettings
from tests.cluster.chart import NEVER_PULLED, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.crd_install import dry_run, install_crd
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_run import BASE_VALUES, ServedNamespace, release_operator
from tests.cluster.players import PlayerImage
from tests.cluster.real_nodes import RealNodes
from tests.support.overlay_cases import EVERY_FIELD, OVERLAY_ADMITTED, every_field

pytestmark = pytest.mark.cluster

NAMESPACE = "pod-overrides"
CRD_NAME = "speedrunjobs.speedrun.dev"
# The chart's operator-wide overlay: a label, an env var and a toleration every pod gets, and a
# service account and /dev/shm size the job's own overlay replaces.
CHART_OVERLAY = {
    "labels": {"cluster-tier": "gpu"},
    "env": [{"name": "NCCL_DEBUG", "value": "WARN"}, {"name": "NCCL_IB_HCA", "value": "chart-default"}],
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "serviceAccountName": "chart-default",
    "shmSize": "1Gi",
}


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane, kubectl: Kubectl) -> Kubectl:
    return install_crd(control_plane, kubectl, NAMESPACE)


@pytest.mark.parametrize("manifest", OVERLAY_ADMITTED, ids=range(len(OVERLAY_ADMITTED)))
def test_an_admitted_overlay_gives_jobs_the_apiserver_admits(crd: Kubectl, manifest: dict[str, Any]) -> None:
    code, err, _ = dry_run(crd, manifest, NAMESPACE)
    assert code == 0, err
    job = parse_job({**manifest, "metadata": {**manifest["metadata"], "namespace": NAMESPACE}})
    settings = OperatorSettings(default_storage_uri="s3://bucket/runs", pod_overrides=json.dumps(CHART_OVERLAY))
    for child in (build_train_job(job, settings), build_eval_job(job, settings)):
        code, err, _ = dry_run(crd, child, NAMESPACE)
        assert code == 0, f"{child['metadata']['name']}: {err}"


def test_every_overlay_field_reaches_the_training_job_and_its_pods(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path: Path
) -> None:
    values = {**BASE_VALUES, **NEVER_PULLED}  # nothing runs: no kubelet here, and an image no registry holds
    overlay = f"--set-json=trainer.podOverrides={json.dumps(CHART_OVERLAY)}"
    release = install_chart(control_plane, NAMESPACE, NAMESPACE, values, overlay)
    for account in ("trainer-identity", "chart-default"):  # pods of a missing ServiceAccount are refused
        control_plane.admin.create(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", {"metadata": {"name": account}})
    with release_operator(control_plane, release, tmp_path) as op:
        served = ServedNamespace(control_plane, NAMESPACE, op)
        doc = every_field("overlay")
        doc["metadata"]["namespace"] = NAMESPACE
        served.apply(kubectl, doc)
        job = wait_until(lambda: served.job("overlay"), 90, "the training Job", interval=0.2)
        template = job["spec"]["template"]
        check_overlay(template)
        # The Job controller made its pods from that template: the apiserver admitted them as pods.
        pods = wait_until(lambda: served.pods("overlay") or None, 90, "the training pods", interval=0.2)
        for pod in pods:
            check_overlay(pod)
        served.delete(kubectl, "overlay")


def check_overlay(obj: dict[str, Any]) -> None:
    """What the apiserver stored of a pod (template) carries every field of the overlay."""
    meta, pod = obj["metadata"], obj["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "trainer")
    want = EVERY_FIELD
    assert meta["labels"].items() >= {**want["labels"], "cluster-tier": "gpu", "speedrun.dev/job": "overlay"}.items()
    assert meta["annotations"].items() >= want["annotations"].items()
    assert pod["imagePullSecrets"] == want["imagePullSecrets"]
    assert pod["serviceAccountName"] == "trainer-identity" and pod["automountServiceAccountToken"] is True
    env = {e["name"]: e for e in container["env"]}
    for var in want["env"]:
        assert {k: v for k, v in env[var["name"]].items() if k in var} == var, env[var["name"]]
    assert env["NCCL_DEBUG"]["value"] == "WARN"  # the chart's, which the job does not set
    assert [e["name"] for e in container["env"]].count("NCCL_IB_HCA") == 1  # the job's replaced the chart's
    assert "RANK" not in env and env["SPEEDRUN_JOB_NAME"]["value"] == "overlay"  # the operator's env stays
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["datasets"]["emptyDir"] == {"sizeLimit": "64Mi"}
    assert volumes["extra-config"]["configMap"]["name"] == "extra"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Mi"}  # the job's shmSize
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/datasets"] == "datasets" and mounts["/etc/extra"] == "extra-config" and mounts["/dev/shm"] == "dshm"
    assert pod["affinity"]["nodeAffinity"] == want["affinity"]["nodeAffinity"]
    assert pod["affinity"]["podAntiAffinity"] == want["affinity"]["podAntiAffinity"]
    tolerations = [{k: v for k, v in t.items() if k != "tolerationSeconds"} for t in pod["tolerations"]]
    assert want["tolerations"][0] in tolerations and CHART_OVERLAY["tolerations"][0] in tolerations
    security = pod["securityContext"]
    assert security["supplementalGroups"] == [4242] and security["fsGroupChangePolicy"] == "OnRootMismatch"
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000  # the operator's stay
    own = container["securityContext"]
    assert own["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]} and own["allowPrivilegeEscalation"] is False
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert container["resources"]["limits"]["rdma/hca"] == "1"
    assert container["resources"]["limits"]["vpc.amazonaws.com/efa"] == "32"
    assert container["command"][:3] == ["python", "-m", "speedrun_trainer.train.torchrun"]


RUNNING_NAMESPACE = "pod-overrides-running"
# What a pod on a real node can show of the overlay (no RDMA device, no host network here: those
# are the Job's, checked above).
RUNNING_OVERLAY = {
    "env": [
        {"name": "NCCL_IB_HCA", "value": "mlx5"},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ],
    "volumes": [{"name": "datasets", "emptyDir": {"sizeLimit": "64Mi"}}],
    "volumeMounts": [{"name": "datasets", "mountPath": "/datasets"}],
    "securityContext": {"supplementalGroups": [4242]},
    "containerSecurityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
    "serviceAccountName": "trainer-identity",
    "labels": {"team": "nlp"},
    "shmSize": "96Mi",
}


def test_a_training_pod_runs_with_the_overlay_on_a_real_node(
    control_plane: ControlPlane, kube_nodes: RealNodes, player_image: PlayerImage, kubectl: Kubectl, tmp_path: Path
) -> None:
    values = {**BASE_VALUES, "trainer.image.repository": player_image.repository, "trainer.image.tag": player_image.tag}
    release = install_chart(control_plane, RUNNING_NAMESPACE, RUNNING_NAMESPACE, values)
    control_plane.admin.create(
        f"/api/v1/namespaces/{RUNNING_NAMESPACE}/serviceaccounts", {"metadata": {"name": "trainer-identity"}}
    )
    with release_operator(control_plane, release, tmp_path) as op:
        served = ServedNamespace(control_plane, RUNNING_NAMESPACE, op)
        doc = served.manifest("running", **{"spec.resources": {"nodes": 1, "cpu": "100m", "memory": "512Mi"}})
        doc["spec"]["podOverrides"] = RUNNING_OVERLAY
        served.apply(kubectl, doc)

        def running() -> dict[str, Any] | None:
            pods = [p for p in served.pods("running") if (p.get("status") or {}).get("phase") == "Running"]
            return pods[0] if pods else None

        pod = wait_until(running, 180, "the training pod Running on a real node", interval=0.5)
        name = pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] in kube_nodes.names and pod["metadata"]["labels"]["team"] == "nlp"

        def inside(*command: str) -> str:
            return str(kubectl.run("exec", "-n", RUNNING_NAMESPACE, name, "-c", "trainer", "--", *command).stdout)

        shm = inside("df", "-k", "--output=size", "/dev/shm").split()
        assert shm[-1] == str(96 * 1024), shm  # the kubelet sized the tmpfs as shmSize
        env = dict(line.split("=", 1) for line in inside("env").splitlines() if "=" in line)
        assert env["NCCL_IB_HCA"] == "mlx5" and env["NODE_NAME"] == pod["spec"]["nodeName"]
        assert env["SPEEDRUN_JOB_NAME"] == "running"  # the operator's env is still there
        assert "/datasets" in inside("cat", "/proc/self/mounts")
        inside("touch", "/datasets/written")  # mounted, writable by the pod's non-root user
        assert "4242" in inside("id", "-G").split()
        status = dict(line.split(":\t", 1) for line in inside("cat", "/proc/self/status").splitlines() if ":\t" in line)
        assert int(status["CapBnd"], 16) == 1 << 14, status["CapBnd"]  # drop ALL, then add IPC_LOCK (bit 14)
        served.delete(kubectl, "running")
