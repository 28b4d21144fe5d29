"""One namespace served by the chart's operator, and what tests read back about its SpeedrunJobs.

    with served_namespace(cp, "pending", tmp, resyncInterval="2") as served:
        served.apply(kubectl, manifest)          # kubectl apply into the namespace
        served.phase("name"), served.condition("name", "Training"), served.events("name")

`chart_operator_in`: `helm install` (chart.py), then the operator run with the release's
ServiceAccount token (`release_operator`, also for a release installed otherwise); on exit the
SpeedrunJobs are drained, and a request the chart's RBAC refused fails the test.
`served_namespace` adds the chart values the operator tier uses and the readers; speedruns.py
adds S3 for real speedruns.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speedrun_trainer.cli.launch import free_port
from tests.cluster.chart import NEVER_PULLED, ChartOperator, Release, chart_operator, install_chart
from tests.cluster.control_plane import ControlPlane
from tests.cluster.kubectl import Kubectl
from tests.support.helpers import tiny_manifest

BASE_VALUES = {
    "operator.defaultStorageUri": "s3://speedrun-test/runs",
    "operator.progressInterval": "1",
    "operator.resyncInterval": "2",
    **NEVER_PULLED,
}


@dataclass
class ServedNamespace:
    cp: ControlPlane
    namespace: str
    operator: ChartOperator

    @property
    def srj_path(self) -> str:
        return f"/apis/speedrun.dev/v1alpha1/namespaces/{self.namespace}/speedrunjobs"

    def manifest(self, name: str, **changes: Any) -> dict[str, Any]:
        doc = tiny_manifest(**changes)
        doc["metadata"] = {"name": name, "namespace": self.namespace}
        return doc

    def apply(self, kubectl: Kubectl, doc: dict[str, Any]) -> None:
        kubectl.run("apply", "-f", "-", stdin=json.dumps(doc))

    def srj(self, name: str) -> dict[str, Any]:
        return self.cp.admin.get(f"{self.srj_path}/{name}") or {}

    def phase(self, name: str) -> str:
        return (self.srj(name).get("status") or {}).get("phase", "")

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        found = [c for c in (self.srj(name).get("status") or {}).get("conditions") or [] if c["type"] == type_]
        return found[0] if found else {}

    def events(self, name: str) -> list[dict[str, Any]]:
        events = self.cp.admin.list(f"/api/v1/namespaces/{self.namespace}/events",
                                    fields=f"involvedObject.name={name},involvedObject.kind=SpeedrunJob")  # fmt: skip
        return sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.cp.admin.list(f"/api/v1/namespaces/{self.namespace}/pods", labels=f"speedrun.dev/job={name}")

    def job(self, name: str) -> dict[str, Any] | None:
        return self.cp.admin.get(f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}-train")

    def delete(self, kubectl: Kubectl, name: str) -> None:
        kubectl.run("delete", "srj", name, "-n", self.namespace, "--wait=true", "--timeout=90s")


@contextlib.contextmanager
def chart_operator_in(
    cp: ControlPlane, namespace: str, workdir: Path, values: dict[str, str], env: dict[str, str] | None = None
) -> Iterator[ChartOperator]:
    """The chart installed as release `namespace` into `namespace` with chart `values`, and its
    operator running (`release_operator`)."""
    release = install_chart(cp, namespace, namespace, values)
    with release_operator(cp, release, workdir, env) as op:
        yield op


@contextlib.contextmanager
def release_operator(
    cp: ControlPlane, release: Release, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[ChartOperator]:
    """The operator of an installed release serving its namespace, run with the release's
    ServiceAccount token (`env` over the variables the chart sets); on exit the namespace's
    SpeedrunJobs are drained while it runs, and a request the chart's RBAC refused fails."""
    namespace = release.namespace
    cp.namespace(namespace)
    overrides = {"SPEEDRUN_OPERATOR_METRICS_PORT": str(free_port()), "SPEEDRUN_OPERATOR_LIVENESS": "", **(env or {})}
    with chart_operator(cp, release, workdir, **overrides) as op:
        yield op
        cp.drain(namespace, f"/apis/speedrun.dev/v1alpha1/namespaces/{namespace}/speedrunjobs")
    assert op.forbidden() == [], "the chart's RBAC refused the operator"


@contextlib.contextmanager
def served_namespace(
    cp: ControlPlane, namespace: str, workdir: Path, env: dict[str, str] | None = None, **values: str
) -> Iterator[ServedNamespace]:
    """`chart_operator_in` with chart `values` (dots as in `--set`) over BASE_VALUES, and readers
    of what the operator makes of its SpeedrunJobs."""
    with chart_operator_in(cp, namespace, workdir, {**BASE_VALUES, **values}, env) as op:
        yield ServedNamespace(cp, namespace, op)
