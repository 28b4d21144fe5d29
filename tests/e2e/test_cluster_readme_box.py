"""E2E on the control plane and real nodes: README.md's "Run it on a cluster" box, every command in order.

The box (read by tests/support/readme_box.py, so a command added to it is run here too) goes
through bash one command at a time, in the repository root, with the real helm and kubectl
against the control plane (KUBECONFIG: its admin), whose pods run in containers on the session's
real kubelets (tests/cluster/real_nodes.py). What differs from a user's cluster, and only that:
- the placeholders: the registry becomes a repository of the session's loopback registry (the
  one `built_images` built the Dockerfile's images into, which the nodes trust); the S3 endpoint
  and the two keys become the harness's moto server on the pod network
  (tests/cluster/speedruns.py `moto_s3`) and its credentials; its bucket is the box's;
- `make image REGISTRY=...` runs as `make -n image REGISTRY=...`: the test asserts what it would
  run (a build of each Dockerfile target, a push of each), and does the pushes itself: the
  operator and trainer images the session built from the same Dockerfile (`make image` with
  buildah, tests/support/images.py) are copied within the registry to the names the box pushes
  (same digests). The TPU trainer image (~6 GB) is not built: this CPU job never pulls it;
- the box's `kubectl wait --timeout=30m` is also bounded by the test, which fails at once if the
  job ends Failed or a kubelet or containerd dies.
The box's `helm install` runs as written: the operator runs in its container from the pushed
image (its in-cluster client reaching the apiserver through kube-proxy), under the chart's RBAC
(its log must hold no refusal). The job is examples/tiny-cpu.yaml as shipped (300 steps, 2
nodes): the Job's two pods run the pushed trainer image on the real nodes, rendezvous through
cluster DNS, and find S3 and their keys only through the chart's default storage values and the
Secret the box creates. The first pull of the 3.3 GB trainer image takes minutes. Needs root;
skips with the reason otherwise. Run: `pytest -m cluster tests/e2e/test_cluster_readme_box.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_operator.builders.common import STORAGE_SECRET_KEYS
from tests.cluster.api import ApiError
from tests.cluster.chart import Release, installed_release
from tests.cluster.control_plane import ControlPlane, ControlPlaneError, wait_until
from tests.cluster.kube_proxy import KubeProxy
from tests.cluster.kubectl import kubectl_binary
from tests.cluster.network import PodNetwork
from tests.cluster.real_nodes import RealNodes
from tests.cluster.real_speedrun import OPERATOR_LABELS, pod_log, wait_for_operator
from tests.cluster.speedruns import moto_s3, s3_client
from tests.support import images
from tests.support.helm_tool import HelmUnavailable, helm_path
from tests.support.helpers import ROOT
from tests.support.image_registry import CACHE, Registry
from tests.support.readme_box import cluster_box, helm_sets, option, words
from tests.support.s3 import S3_CREDENTIALS

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

WAIT_TIMEOUT = 1500.0  # the box says 30m; the trainer image's first pull and the tiny run take minutes
COMMAND_TIMEOUT = 120.0
APP_VERSION = yaml.safe_load((ROOT / "charts" / "speedrun-operator" / "Chart.yaml").read_text())["appVersion"]
BOX_REPOSITORY = "readme-box"  # the box's registry: a repository of its own in the session's registry


class Shell:
    """Runs a box command through bash in the repository root, with `helm` and `kubectl` on PATH
    and the control plane's admin kubeconfig."""

    def __init__(self, cp: ControlPlane, bin_dir: Path) -> None:
        bin_dir.mkdir(parents=True, exist_ok=True)
        try:
            tools = {"helm": helm_path(), "kubectl": kubectl_binary()}
        except HelmUnavailable as err:
            pytest.skip(f"needs helm: {err}")
        for name, path in tools.items():
            (bin_dir / name).symlink_to(path)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KUBECONFIG": str(cp.kubeconfig)}

    def start(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    def run(self, command: str) -> str:
        proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)  # fmt: skip
        assert proc.returncode == 0, f"{command}\nexited {proc.returncode}: {proc.stderr.strip()}"
        return proc.stdout


def srj_status(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    found = cp.admin.get(f"/apis/speedrun.dev/v1alpha1/namespaces/{namespace}/speedrunjobs/{name}") or {}
    return found.get("status") or {}


def operator_logs(cp: ControlPlane, namespace: str) -> str:
    return "\n".join(pod_log(cp, p) for p in cp.admin.list(f"/api/v1/namespaces/{namespace}/pods",
                                                           labels=OPERATOR_LABELS))  # fmt: skip


def wait_as_the_box_does(shell: Shell, command: str, cp: ControlPlane, nodes: RealNodes, srj: tuple[str, str]) -> str:
    """The box's `kubectl wait`, watched: a Failed job or a dead kubelet or containerd fails the test at once."""
    proc = shell.start(command)
    deadline = time.monotonic() + WAIT_TIMEOUT
    try:
        while proc.poll() is None:
            nodes.check()
            try:
                status = srj_status(cp, *srj)
            except TimeoutError:  # one slow answer of a loaded machine (the nodes unpacking the
                if time.monotonic() > deadline:  # 3.3 GB trainer image) is asked again
                    raise
                continue
            if status.get("phase") == "Failed" or time.monotonic() > deadline:
                pods = cp.admin.list(f"/api/v1/namespaces/{srj[0]}/pods", labels=f"speedrun.dev/job={srj[1]}")
                logs = "\n".join(f"--- {p['metadata']['name']}:\n{pod_log(cp, p)}" for p in pods)
                raise AssertionError(f"{command}: the job is {status}\n{logs}\n--- operator:\n"
                                     f"{operator_logs(cp, srj[0])}\n{nodes.log_tails()}")  # fmt: skip
            time.sleep(1)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"{command}\nexited {proc.returncode}: {err.strip()}"
    return out


def push_as_the_box_does(registry: Registry, built: dict[str, images.Image], pushed: list[str],
                         stack: contextlib.ExitStack) -> None:  # fmt: skip
    """`make image`'s pushes: the session's operator and trainer images (built by `make image` from
    the same Dockerfile) copied to the names the box pushes; removed from the registry at the end."""
    for name, ref in zip(("operator", "trainer"), pushed, strict=False):
        host, _, path = ref.partition("/")
        assert host == registry.host, ref
        repository, _, tag = path.rpartition(":")
        source, _, source_tag = built[name].ref.removeprefix(host + "/").rpartition(":")
        digest = registry.copy(source, source_tag, repository, tag)
        assert digest == built[name].digest, (ref, digest, built[name])
        stack.callback(registry.delete, repository, digest)


def uninstall_operator(cp: ControlPlane, namespace: str) -> None:
    """The namespace's jobs deleted while the operator runs (it releases their finalizers), then its
    Deployment, else the ReplicaSet re-creates the pod the nodes' teardown deletes."""
    path = f"/apis/speedrun.dev/v1alpha1/namespaces/{namespace}/speedrunjobs"
    for item in cp.admin.list(path):
        with contextlib.suppress(ApiError):
            cp.admin.delete(f"{path}/{item['metadata']['name']}")
    with contextlib.suppress(ControlPlaneError):  # a test that failed keeps its own message
        wait_until(lambda: not cp.admin.list(path), 120, "the box's SpeedrunJobs gone", interval=1.0)
    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    for item in cp.admin.list(deployments):
        cp.admin.delete(f"{deployments}/{item['metadata']['name']}")


def refused(cp: ControlPlane, release: Release) -> list[str]:
    """The operator pod's log lines about requests the chart's RBAC denied it."""
    user = f'User "system:serviceaccount:{release.namespace}:{release.service_account}" cannot'
    pod = wait_for_operator(cp, release.namespace)
    return [line[:500] for line in pod_log(cp, pod, lines=None).splitlines() if user in line]


def test_readme_cluster_box_runs_as_written(
    control_plane: ControlPlane, kube_nodes: RealNodes, pod_net: PodNetwork, service_proxy: KubeProxy,
    built_images: dict[str, images.Image], tmp_path: Path,
) -> None:  # fmt: skip
    cp, commands = control_plane, cluster_box()
    [make] = [words(c) for c in commands if words(c)[:2] == ["make", "image"]]
    [install] = [words(c) for c in commands if words(c)[:2] == ["helm", "install"]]
    values, namespace = helm_sets(install), option(install, "-n", "--namespace")
    assert namespace, "the box's helm install names its namespace"
    bucket, _, prefix = values["operator.defaultStorageUri"].removeprefix("s3://").partition("/")
    [box_registry] = [arg.removeprefix("REGISTRY=") for arg in make if arg.startswith("REGISTRY=")]
    registry = Registry(host=built_images["trainer"].ref.partition("/")[0], storage=CACHE / "registry")
    shell = Shell(cp, tmp_path / "bin")
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(moto_s3(pod_net, bucket)).url
        placeholders = {
            box_registry: f"{registry.host}/{BOX_REPOSITORY}",
            values["operator.defaultStorageEndpointUrl"]: s3,
            **{f"{key}=...": f"{key}={S3_CREDENTIALS[key]}" for key in STORAGE_SECRET_KEYS},
        }
        for placeholder in placeholders:
            assert placeholder in "\n".join(commands), f"the box no longer has the placeholder {placeholder}"
        pushed: list[str] = []
        job: tuple[str, str] | None = None
        release: Release | None = None
        out = ""
        for command in commands:
            argv, line = words(command), command
            for placeholder, value in placeholders.items():
                line = line.replace(placeholder, value)
            if argv[:2] == ["make", "image"]:
                pushed = what_make_image_would_push(shell.run(line.replace("make image", "make -n image", 1)))
                push_as_the_box_does(registry, built_images, pushed, stack)
            elif argv[:2] == ["helm", "install"]:
                stack.callback(uninstall_operator, cp, namespace)
                shell.run(line)
                release = installed_release(cp, argv[2], namespace)
                env = release.env
                chart_images = (env["SPEEDRUN_TRAINER_IMAGE"], env["SPEEDRUN_OPERATOR_TPU_TRAINER_IMAGE"])
                assert (operator_image(cp, release), *chart_images) == tuple(pushed)
            elif "wait" in argv:
                assert job is not None, "the box waits for a job it has not applied"
                out = wait_as_the_box_does(shell, line, cp, kube_nodes, job)
            else:
                out = shell.run(line)
                if "apply" in argv:
                    manifest = yaml.safe_load((ROOT / argv[argv.index("-f") + 1]).read_text())
                    job = (namespace, manifest["metadata"]["name"])
        assert job is not None and pushed and release, "the box builds the images, installs the chart, applies a job"

        # The box's last command printed status.results: the same numbers as the results file,
        # which lies under the chart's default storage prefix.
        results = json.loads(out)
        key = f"{prefix}/{namespace}/{job[1]}/speedrun_results.json"
        assert results["uri"] == f"s3://{bucket}/{key}", results
        published = json.loads(s3_client(s3).get_object(Bucket=bucket, Key=key)["Body"].read())
        info = published["runs"][0]["run_info"]
        assert results["bpb"] == info["eval/builtin://pydoc-topics/val/bpb"] and info["num_devices"] == 2
        assert srj_status(cp, *job)["phase"] == "Succeeded"

        secret = next(argv[6] for argv in map(words, commands) if argv[3:6] == ["create", "secret", "generic"])
        check_pods(cp, kube_nodes, job, pushed[1], built_images["trainer"].digest, secret)
        operator = wait_for_operator(cp, namespace)
        status = operator["status"]["containerStatuses"][0]
        assert operator["spec"]["nodeName"] in kube_nodes.names and status["image"] == pushed[0], status
        assert status["imageID"].endswith(built_images["operator"].digest), status
        assert refused(cp, release) == [], "the chart's RBAC refused the operator"


def check_pods(cp: ControlPlane, nodes: RealNodes, job: tuple[str, str], image: str, digest: str,
               secret: str) -> None:  # fmt: skip
    """The job's training and eval pods ran the pushed trainer image (the built one: `digest`) on
    the real nodes, with the box's Secret for their keys."""
    namespace, name = job
    pods = cp.admin.list(f"/api/v1/namespaces/{namespace}/pods", labels=f"speedrun.dev/job={name}")
    assert sorted({p["metadata"]["labels"]["speedrun.dev/role"] for p in pods}) == ["eval", "train"]
    for pod in pods:
        [container] = pod["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
                if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
        assert container["image"] == image and refs == dict.fromkeys(STORAGE_SECRET_KEYS, secret), refs
        [status] = pod["status"]["containerStatuses"]
        assert pod["spec"]["nodeName"] in nodes.names and status["imageID"].endswith(digest), status


def operator_image(cp: ControlPlane, release: Release) -> str:
    [deployment] = cp.admin.list(f"/apis/apps/v1/namespaces/{release.namespace}/deployments",
                                 labels=f"app.kubernetes.io/instance={release.name}")  # fmt: skip
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def what_make_image_would_push(dry_run: str) -> list[str]:
    """The images `make -n image` shows it would build and push: [operator, trainer, trainer-tpu]."""
    # Whichever builder the machine has (docker, podman, buildah), with its flags.
    built = dict(re.findall(r"^\S+ build (?:\S+ )*?--target ([\w-]+) -t (\S+) \.$", dry_run, re.M))
    pushed = re.findall(r"^\S+ push (?:\S+ )*?(\S+)$", dry_run, re.M)
    assert list(built) == ["operator", "trainer", "trainer-tpu"] and pushed == list(built.values()), dry_run
    assert all(image.endswith(f":{APP_VERSION}") for image in pushed), pushed
    return pushed
