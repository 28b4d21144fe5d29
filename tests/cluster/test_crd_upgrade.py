"""CRD upgrades with `helm upgrade`, on the real control plane: the documented path works.

Helm installs charts/speedrun-operator/crds/ on the first install only and never upgrades it
(helm.sh/docs/chart_best_practices/custom_resource_definitions). A chart release that adds a
field to the SpeedrunJob schema therefore needs the documented step before `helm upgrade`:
UPGRADE_CRDS, which this test runs exactly as docs/operator.md and the chart's README print it.
The test installs the chart, makes a copy of it whose CRD has one more field, and shows that
`helm upgrade` alone leaves the served schema unchanged (kubectl's strict field validation
refuses a SpeedrunJob with the new field), and that after UPGRADE_CRDS the field is served and
kept. `--force-conflicts` is needed because the CRD's fields are owned by the `helm` field manager from the install, and
server-side apply refuses to take them over without it.
Run: `pytest -m cluster tests/cluster/test_crd_upgrade.py`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.chart import CHART, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.support.helm_tool import helm_path
from tests.support.helpers import ROOT, tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-upgrade"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/speedrunjobs.speedrun.dev"
UPGRADE_CRDS = "kubectl apply --server-side --force-conflicts -f charts/speedrun-operator/crds/"
NEW_FIELD = "upgradeProbe"


def served_spec_fields(cp: ControlPlane) -> set[str]:
    crd = cp.admin.get(CRD_PATH) or {}
    [version] = crd["spec"]["versions"]
    return set(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def chart_with_a_new_field(tmp: Path) -> Path:
    chart = tmp / "speedrun-operator"
    shutil.copytree(CHART, chart)
    crd_file = chart / "crds" / "speedrunjob.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][NEW_FIELD] = {
        "type": "string", "description": "a field added by the next chart release"}  # fmt: skip
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def with_new_field(name: str) -> str:
    doc = tiny_manifest(**{f"spec.{NEW_FIELD}": "kept"})
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    return json.dumps(doc)


def kept_field(cp: ControlPlane, kubectl: Kubectl, name: str) -> Any:
    kubectl.run("apply", "-f", "-", stdin=with_new_field(name))
    body = cp.admin.get(f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs/{name}") or {}
    return body["spec"].get(NEW_FIELD)


def helm_upgrade(cp: ControlPlane, chart: Path) -> None:
    cmd = [str(helm_path()), "upgrade", "speedrun-upgrade", str(chart), f"--namespace={NAMESPACE}",
           f"--kubeconfig={cp.kubeconfig}", "--reuse-values", "--wait=false"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"helm upgrade failed: {proc.stderr.strip()}"


def test_the_documented_crd_upgrade_serves_a_field_the_new_chart_adds(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path: Path
) -> None:
    cp = control_plane
    docs, chart_readme = (ROOT / "docs" / "operator.md").read_text(), (CHART / "README.md").read_text()
    assert UPGRADE_CRDS in docs and UPGRADE_CRDS in chart_readme, "the documented step is not the tested one"
    # Before the install, so that it is Helm's crds/ that creates the CRD when the session has none yet.
    install_chart(cp, "speedrun-upgrade", NAMESPACE, {"operator.defaultStorageUri": "s3://speedrun-test/runs"})
    cp.namespace(NAMESPACE)
    new_chart = chart_with_a_new_field(tmp_path)
    try:
        helm_upgrade(cp, new_chart)
        assert NEW_FIELD not in served_spec_fields(cp), "helm upgrade changed crds/ (it never does)"
        refused = kubectl.run("apply", "-f", "-", stdin=with_new_field("before"), check=False)
        assert refused.returncode != 0 and f'unknown field "spec.{NEW_FIELD}"' in refused.stderr, refused.stderr

        command = UPGRADE_CRDS.split()
        assert command[0] == "kubectl"
        kubectl.run(*command[1:-1], str(new_chart / "crds"))
        helm_upgrade(cp, new_chart)
        wait_until(lambda: NEW_FIELD in served_spec_fields(cp), 60, "the new field in the served CRD")
        assert kept_field(cp, kubectl, "after") == "kept"
    finally:
        kubectl.run("delete", "srj", "--all", "-n", NAMESPACE, "--wait=false", check=False)
        # Leave the session's CRD as the repository has it, for the tests after this one.
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
