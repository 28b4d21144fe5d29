"""The generated CRD on the real apiserver: what `kubectl apply` admits, refuses, prunes and prints.

The same tables as tests/unit/api/test_crd.py (which checks the schema offline), sent through kubectl to
kube-apiserver with server-side dry run: the OpenAPI schema, structural defaulting, pruning and
the CEL rules (x-kubernetes-validations) are Kubernetes' own here. Refusals must name the field.
Run: `pytest -m cluster tests/cluster/test_crd.py`.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from speedrun_api.crd import PRINTER_COLUMNS
from speedrun_api.manifest import parse_job
from tests.cluster.control_plane import ControlPlane
from tests.cluster.crd_install import dry_run, install_crd
from tests.cluster.kubectl import Kubectl
from tests.support.crd_cases import CEL_REJECTS, SCHEMA_REJECTS, example_docs, tiny

pytestmark = pytest.mark.cluster

NAMESPACE = "crd-tests"
CRD_NAME = "speedrunjobs.speedrun.dev"


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane, kubectl: Kubectl) -> Kubectl:
    return install_crd(control_plane, kubectl, NAMESPACE)


@pytest.mark.parametrize("doc", example_docs(), ids=lambda d: d["metadata"]["name"])
def test_examples_are_admitted_and_their_defaults_mean_the_models(crd: Kubectl, doc: dict[str, Any]) -> None:
    code, err, stored = dry_run(crd, doc, NAMESPACE)
    assert code == 0, err
    assert stored is not None
    defaulted = {k: stored[k] for k in ("apiVersion", "kind", "spec")} | {"metadata": doc["metadata"]}
    assert parse_job(defaulted).manifest() == parse_job(doc).manifest()


@pytest.mark.parametrize(("where", "doc"), SCHEMA_REJECTS, ids=[w for w, _ in SCHEMA_REJECTS])
def test_schema_refusals_name_the_field(crd: Kubectl, where: str, doc: dict[str, Any]) -> None:
    code, err, _ = dry_run(crd, doc, NAMESPACE)
    field = where.split(":")[0]
    assert code != 0 and field in err, err


@pytest.mark.parametrize(("message", "doc", "model_rejects"), CEL_REJECTS, ids=[m for m, _, _ in CEL_REJECTS])
def test_cel_rules_refuse_with_their_message(
    crd: Kubectl, message: str, doc: dict[str, Any], model_rejects: bool
) -> None:
    code, err, _ = dry_run(crd, doc, NAMESPACE)
    assert code != 0 and message in err, err


def test_unknown_fields_are_refused_by_kubectl_and_pruned_for_lax_clients(crd: Kubectl) -> None:
    doc = tiny()
    doc["spec"]["model"]["notAField"] = 1
    code, err, _ = dry_run(crd, doc, NAMESPACE)  # kubectl asks for strict field validation
    assert code != 0 and 'unknown field "spec.model.notAField"' in err, err
    code, err, stored = dry_run(crd, doc, NAMESPACE, "--validate=false")  # what a client without it gets
    assert code == 0, err
    assert stored is not None and "notAField" not in stored["spec"]["model"]


def test_get_prints_the_printer_columns(crd: Kubectl) -> None:
    doc = tiny(**{"metadata.name": "columns"})
    doc["metadata"]["namespace"] = NAMESPACE
    crd.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    try:
        header = crd.run("get", "srj", "columns", "-n", NAMESPACE).stdout.splitlines()[0].split()
        expected = ["NAME"] + [c["name"].upper() for c in PRINTER_COLUMNS if c.get("priority", 0) == 0]
        assert header == expected
    finally:
        crd.run("delete", "srj", "columns", "-n", NAMESPACE, "--wait=false")
