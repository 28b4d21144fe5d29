"""What can be checked of the kind quickstart without Docker or a cluster.

The script parses (`bash -n`) and is strict (`set -euo pipefail`); the files it uses exist; its
default images are the chart's and the operator's; the MinIO manifest is valid for Kubernetes
1.32 (kubernetes-validate) and agrees with the SpeedrunJob it serves (Secret name and keys,
Service name and port, bucket); the chart renders valid objects with deploy/kind/values.yaml.
Running it end to end needs docker, kind and kubectl: see docs/operator.md, "Try it on kind".

    pytest tests/unit/deploy/test_kind_quickstart.py
"""

from __future__ import annotations

import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from speedrun_operator.builders.common import STORAGE_SECRET_KEYS
from tests.support.helpers import ROOT

SCRIPT = ROOT / "scripts" / "kind-quickstart.sh"
MINIO = ROOT / "deploy" / "kind" / "minio.yaml"
OVERLAY = ROOT / "deploy" / "kind" / "tiny-cpu" / "kustomization.yaml"
KUBE_VERSION = "1.32"


def script() -> str:
    return SCRIPT.read_text()


def test_script_parses_and_is_strict() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)
    assert "set -euo pipefail" in script()
    assert SCRIPT.stat().st_mode & 0o111, "executable"


def test_make_kind_runs_the_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^kind:.*\n\t.*scripts/kind-quickstart\.sh", makefile, re.M)


def test_files_the_script_uses_exist() -> None:
    for path in re.findall(r"\b((?:deploy/kind|charts|examples|tests)/[\w./-]+)", script()):
        assert (ROOT / path.rstrip(".")).exists(), path


def test_default_images_are_the_charts() -> None:
    values = yaml.safe_load((ROOT / "charts" / "speedrun-operator" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "charts" / "speedrun-operator" / "Chart.yaml").read_text())
    assert f"VERSION={chart['appVersion']}" in script()
    assert f"OPERATOR_IMAGE:-{values['image']['repository']}:$VERSION" in script()
    assert f"TRAINER_IMAGE:-{values['trainer']['image']['repository']}:$VERSION" in script()


def minio_objects() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MINIO.read_text()) if doc]


@pytest.mark.parametrize("index", range(3))
def test_minio_objects_are_valid(index: int) -> None:
    obj = minio_objects()[index]
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_minio_serves_the_storage_the_speedrunjob_uses() -> None:
    objects = {o["kind"]: o for o in minio_objects()}
    patch = yaml.safe_load(yaml.safe_load(OVERLAY.read_text())["patches"][0]["patch"])[0]["value"]
    secret, service = objects["Secret"], objects["Service"]
    assert patch["secretRef"]["name"] == secret["metadata"]["name"]
    assert set(STORAGE_SECRET_KEYS) == set(secret["stringData"])  # the keys the operator maps into pods
    assert patch["endpointUrl"] == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    bucket = patch["uri"].removeprefix("s3://").split("/")[0]
    assert f"mc mb --ignore-existing local/{bucket}" in script()
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_chart_renders_valid_objects_with_the_kind_values() -> None:
    from tests.support import helm_tool

    try:
        helm = helm_tool.helm_path()
    except helm_tool.HelmUnavailable as err:
        pytest.skip(f"no helm binary: {err}")
    proc = subprocess.run(
        [str(helm), "template", "speedrun", str(ROOT / "charts" / "speedrun-operator"), "--namespace", "speedrun",
         "--kube-version", KUBE_VERSION, "--values", str(ROOT / "deploy" / "kind" / "values.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPEEDRUN_OPERATOR_IMAGE_PULL_POLICY"] == "Never", "kind-loaded images are never pulled"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"


def test_the_helm_test_pod_outlives_its_success_for_its_logs() -> None:
    """The script runs `helm test --logs`, which reads the test pod's log once it has succeeded: a
    `hook-succeeded` delete policy removes the pod first and helm fails (found by the e2e run of the
    script, tests/e2e/test_quickstart_script.py)."""
    assert re.search(r"\$HELM\" test .*--logs", script())
    template = (ROOT / "charts" / "speedrun-operator" / "templates" / "tests" / "test-metrics.yaml").read_text()
    [policy] = re.findall(r"helm\.sh/hook-delete-policy: (\S+)", template)
    assert "hook-succeeded" not in policy.split(","), policy
