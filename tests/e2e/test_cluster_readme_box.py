"""E2E on the control plane: README.md's "Run it on a cluster" box, every command in order, as written.

The box (read by tests/support/readme_box.py, so a command added to it is run here too) goes
through bash one command at a time, in the repository root, with the real helm and kubectl
against the control plane (KUBECONFIG: its admin). What differs from a user's cluster, and only
that:
- the placeholders: the S3 endpoint and the two keys become the harness's moto server on the
  pod network (tests/cluster/speedruns.py `moto_s3`) and its credentials; its bucket is the box's;
- `make image REGISTRY=...` runs as `make -n image REGISTRY=...`: no container engine runs here,
  so the test asserts what it would run (a build of each Dockerfile target, a push of each) and
  that the images it pushes are the ones the box's helm line installs;
- the box's `helm install` gets `--set replicaCount=0`: no container runtime can run the operator
  image here, so the harness runs the Deployment's operator (its env, its ServiceAccount token)
  in the test process, as every control-plane test does (tests/cluster/chart.py);
- the box's `kubectl wait --timeout=30m` is also bounded by the test, which fails at once if the
  job ends Failed.
The job is examples/tiny-cpu.yaml as shipped (300 steps, 2 nodes): the Job controller creates its
pods and the node agent runs each as real trainer processes in its own network namespace, as in
tests/e2e/test_cluster_speedrun.py; they find S3 and their keys only through the chart's default
storage values and the Secret the box creates. Needs root; skips with the reason otherwise.
Run: `pytest -m cluster tests/e2e/test_cluster_readme_box.py`.
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
from tests.cluster.chart import Release, installed_release
from tests.cluster.control_plane import ControlPlane
from tests.cluster.kubectl import kubectl_binary
from tests.cluster.network import PodNetwork
from tests.cluster.node_agent import NodeAgent
from tests.cluster.operator_run import release_operator
from tests.cluster.speedruns import moto_s3, s3_client
from tests.support.helm_tool import HelmUnavailable, helm_path
from tests.support.helpers import ROOT
from tests.support.readme_box import cluster_box, helm_sets, option, words
from tests.support.s3 import S3_CREDENTIALS

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

WAIT_TIMEOUT = 900.0  # the box says 30m; the tiny run takes a few minutes even on a loaded machine
COMMAND_TIMEOUT = 120.0
APP_VERSION = yaml.safe_load((ROOT / "charts" / "speedrun-operator" / "Chart.yaml").read_text())["appVersion"]


class Shell:
    """Runs a box command through bash in the repository root, with `helm` and `kubectl` on PATH
    and the control plane's admin kubeconfig (set here: the in-process operator points the test
    process's KUBECONFIG at its ServiceAccount's)."""

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


def wait_as_the_box_does(shell: Shell, command: str, cp: ControlPlane, nodes: NodeAgent, srj: tuple[str, str]) -> str:
    """The box's `kubectl wait`, watched: a Failed job or a dead pod process fails the test at once."""
    proc = shell.start(command)
    deadline = time.monotonic() + WAIT_TIMEOUT
    try:
        while proc.poll() is None:
            status = srj_status(cp, *srj)
            nodes.check()
            if status.get("phase") == "Failed" or time.monotonic() > deadline:
                raise AssertionError(f"{command}: the job is {status}\n{nodes.log_tails()}")
            time.sleep(1)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"{command}\nexited {proc.returncode}: {err.strip()}"
    return out


def test_readme_cluster_box_runs_as_written(
    control_plane: ControlPlane, kube_nodes: NodeAgent, pod_net: PodNetwork, tmp_path: Path
) -> None:
    cp, commands = control_plane, cluster_box()
    [install] = [words(c) for c in commands if words(c)[:2] == ["helm", "install"]]
    values, namespace = helm_sets(install), option(install, "-n", "--namespace")
    assert namespace, "the box's helm install names its namespace"
    bucket, _, prefix = values["operator.defaultStorageUri"].removeprefix("s3://").partition("/")
    shell, workdir = Shell(cp, tmp_path / "bin"), tmp_path / "operator"
    workdir.mkdir()
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(moto_s3(pod_net, bucket)).url
        placeholders = {
            values["operator.defaultStorageEndpointUrl"]: s3,
            **{f"{key}=...": f"{key}={S3_CREDENTIALS[key]}" for key in STORAGE_SECRET_KEYS},
        }
        for placeholder in placeholders:
            assert placeholder in "\n".join(commands), f"the box no longer has the placeholder {placeholder}"
        pushed: list[str] = []
        job: tuple[str, str] | None = None
        out = ""
        for command in commands:
            argv, line = words(command), command
            for placeholder, value in placeholders.items():
                line = line.replace(placeholder, value)
            if argv[:2] == ["make", "image"]:
                pushed = what_make_image_would_push(shell.run(line.replace("make image", "make -n image", 1)))
            elif argv[:2] == ["helm", "install"]:
                shell.run(f"{line} --set replicaCount=0")
                release = installed_release(cp, argv[2], namespace)
                env = release.env
                chart_images = (env["SPEEDRUN_TRAINER_IMAGE"], env["SPEEDRUN_OPERATOR_TPU_TRAINER_IMAGE"])
                assert (operator_image(cp, release), *chart_images) == tuple(pushed)
                stack.enter_context(release_operator(cp, release, workdir))
            elif "wait" in argv:
                assert job is not None, "the box waits for a job it has not applied"
                out = wait_as_the_box_does(shell, line, cp, kube_nodes, job)
            else:
                out = shell.run(line)
                if "apply" in argv:
                    manifest = yaml.safe_load((ROOT / argv[argv.index("-f") + 1]).read_text())
                    job = (namespace, manifest["metadata"]["name"])
        assert job is not None and pushed, "the box builds the images and applies a job"

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
        check_pods(cp, job, pushed[1], secret)


def check_pods(cp: ControlPlane, job: tuple[str, str], image: str, secret: str) -> None:
    """The job's training and eval pods ran the pushed trainer image, with the box's Secret for their keys."""
    namespace, name = job
    pods = cp.admin.list(f"/api/v1/namespaces/{namespace}/pods", labels=f"speedrun.dev/job={name}")
    assert sorted({p["metadata"]["labels"]["speedrun.dev/role"] for p in pods}) == ["eval", "train"]
    for pod in pods:
        [container] = pod["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
                if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
        assert container["image"] == image and refs == dict.fromkeys(STORAGE_SECRET_KEYS, secret), refs


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
