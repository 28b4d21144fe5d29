"""Fixtures and helpers for the operator integration tests (tests/test_operator_*.py).

`cluster` serves the generated CRD from a `KubeApiEmulator` (tests/kube_emulator.py) and points
$KUBECONFIG at it; `start_operator` runs the real operator (`kopf run -m speedrun_operator.main`,
the argv `speedrun operator` builds) in kopf's `KopfRunner`. Intervals are shortened here so
the suite stays fast; they are read when speedrun_operator.main is first imported, which is why
they are set at import time of this module.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner

from speedrun_operator.commands import kopf_run_argv
from speedrun_operator.settings import OperatorSettings
from speedrun_trainer.cli.launch import free_port  # noqa: F401 - re-exported for the operator tests
from tests.kube_emulator import EmulatedCluster, wait_for
from tests.scripted_jobs import ScriptedJobController

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "crds" / "speedrunjob.yaml"
NAMESPACE = "speedruns"
SRJ = ("speedrun.dev/v1alpha1", "speedrunjobs")

# Read when speedrun_operator.main is imported (kopf needs timer intervals at decoration time),
# so they are set as this module is imported; nothing else in the test session reads them.
TIMER_ENV = {"SPEEDRUN_OPERATOR_PROGRESS_INTERVAL": "1", "SPEEDRUN_OPERATOR_RESYNC_INTERVAL": "5"}
for _key, _value in TIMER_ENV.items():
    os.environ.setdefault(_key, _value)
# Read at operator start-up: set only while an operator runs.
OPERATOR_ENV = {
    "SPEEDRUN_OPERATOR_DEFAULT_STORAGE_URI": "s3://speedrun-test/runs",
    "SPEEDRUN_TRAINER_IMAGE": "registry.test/speedrun-trainer:test",
}


def tiny_job(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """examples/tiny-cpu.yaml named `name`, with top-level spec keys replaced."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    doc["spec"].update(copy.deepcopy(spec_overrides))
    return doc


@contextlib.contextmanager
def emulated_cluster(tmp: Path) -> Iterator[EmulatedCluster]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    with EmulatedCluster(crds=[crd], namespaces=("default", NAMESPACE)) as cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp / "kubeconfig", NAMESPACE)))
        yield cluster


@contextlib.contextmanager
def start_operator(metrics_port: int = 0) -> Iterator[KopfRunner]:
    """The operator as `speedrun operator --namespace speedruns` runs it (one replica, no Lease)."""
    settings = OperatorSettings(namespaces=(NAMESPACE,))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**OPERATOR_ENV, "SPEEDRUN_OPERATOR_METRICS_PORT": str(metrics_port)}.items():
            mp.setenv(key, value)
        with KopfRunner(kopf_run_argv(settings, verbose=True), timeout=30) as runner:
            yield runner


class Speedruns:
    """Test-side verbs on one emulated cluster: apply, read, wait, and drive the Jobs."""

    def __init__(self, cluster: EmulatedCluster) -> None:
        self.cluster = cluster
        self.jobs = ScriptedJobController(cluster)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.cluster.create(*SRJ, NAMESPACE, manifest)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.cluster.get(*SRJ, NAMESPACE, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 15.0) -> dict[str, Any]:
        wait_for(lambda: self.status(name).get("phase") == phase, timeout, f"{name} phase {phase}: {self.status(name)}")
        return self.status(name)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def children(self, name: str) -> dict[str, list[str]]:
        """Names of the objects labelled as this job's, by kind."""
        selector = {"speedrun.dev/job": name}
        return {
            "configmaps": [o["metadata"]["name"] for o in self.cluster.list("v1", "configmaps", NAMESPACE, selector)],
            "services": [o["metadata"]["name"] for o in self.cluster.list("v1", "services", NAMESPACE, selector)],
            "jobs": sorted(o["metadata"]["name"] for o in self.cluster.list("batch/v1", "jobs", NAMESPACE, selector)),
        }

    def job(self, name: str) -> dict[str, Any] | None:
        return self.cluster.get("batch/v1", "jobs", NAMESPACE, name)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events about SpeedrunJob `name`, in creation order."""
        found = [
            e
            for e in self.cluster.list("v1", "events", NAMESPACE)
            if e.get("involvedObject", {}).get("name") == name
            and e.get("involvedObject", {}).get("kind") == "SpeedrunJob"
        ]
        found.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [(e["type"], e["reason"], e.get("message", "")) for e in found]
