"""Every example manifest against the CRD's openAPIV3Schema, as `kubectl apply` would check it.

The schema is read from crds/speedrunjob.yaml (the generated file that ships in the chart) and
applied with jsonschema's Draft 4 validator (OpenAPI v3.0 schemas are Draft 4 plus extensions:
boolean exclusiveMinimum, `x-kubernetes-*` ignored). Unknown fields are errors, as with kubectl's
default `--validate=strict`. The CEL rules (`x-kubernetes-validations`) need a real apiserver;
the same rules run in Python in tests of the spec model.

    pytest tests/unit/deploy/test_examples_schema.py
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from speedrun_api.manifest import parse_job
from speedrun_operator.builders import BuildError, check_runnable
from speedrun_operator.settings import OperatorSettings
from tests.support import helm_tool
from tests.support.helpers import ROOT

CRD = ROOT / "crds" / "speedrunjob.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KIND_OVERLAY = ROOT / "deploy" / "kind" / "tiny-cpu"


def strict(schema: Any) -> Any:
    """A copy in which objects with declared properties reject unknown ones."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft4Validator:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def errors(validator: jsonschema.Draft4Validator, manifest: dict[str, Any]) -> list[str]:
    return sorted(
        f"{'.'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in validator.iter_errors(manifest)
    )


def load(path: Path) -> dict[str, Any]:
    [manifest] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return manifest


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"tiny-cpu.yaml", "marin-130m.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_matches_the_crd(validator: jsonschema.Draft4Validator, path: Path) -> None:
    manifest = load(path)
    assert manifest["apiVersion"] == "speedrun.dev/v1alpha1" and manifest["kind"] == "SpeedrunJob"
    assert errors(validator, manifest) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_requests_cpu_and_memory(path: Path) -> None:
    """Pods without requests are best-effort: the first evicted (charts/speedrun-operator/README.md)."""
    resources = load(path)["spec"]["resources"]
    assert resources.get("cpu") and resources.get("memory"), f"{path.name}: set spec.resources.cpu and memory"


def test_kind_quickstart_manifest_matches_the_crd_and_runs_in_a_cluster(
    validator: jsonschema.Draft4Validator,
) -> None:
    """deploy/kind/tiny-cpu (examples/tiny-cpu.yaml + MinIO storage), rendered as the script does."""
    try:
        kubectl = helm_tool.kubectl_path()
    except helm_tool.HelmUnavailable as err:
        pytest.skip(f"no kubectl for `kubectl kustomize`: {err}")
    proc = subprocess.run(
        [str(kubectl), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(KIND_OVERLAY)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = yaml.safe_load(proc.stdout)
    assert errors(validator, manifest) == []
    assert manifest["spec"]["storage"]["secretRef"] == {"name": "s3-creds"}
    check_runnable(parse_job(manifest), OperatorSettings())  # the operator would accept it
    with pytest.raises(BuildError, match=r"spec\.storage\.uri"):  # the bare example needs storage
        check_runnable(parse_job(load(ROOT / "examples" / "tiny-cpu.yaml")), OperatorSettings())


def set_path(manifest: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = manifest
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()
INVALID = [
    # (what, path, value, expected error: path and message fragment)
    ("misspelt field", "spec.model.hiddenDims", 128, "spec.model: Additional properties are not allowed ('hiddenDims'"),
    ("unknown activation", "spec.model.activation", "swish", "spec.model.activation: 'swish' is not one of"),
    ("steps as a string", "spec.train.steps", "300", "spec.train.steps: '300' is not of type 'integer'"),
    ("zero layers", "spec.model.numLayers", 0, "spec.model.numLayers: 0 is less than"),
    ("privileged metrics port", "spec.metrics", {"port": 80}, "spec.metrics.port: 80 is less than the minimum"),
    ("no model", "spec.model", DELETE, "spec: 'model' is a required property"),
    ("no spec", "spec", DELETE, "(root): 'spec' is a required property"),
]


@pytest.mark.parametrize(("what", "path", "value", "expected"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_manifest_is_rejected(
    validator: jsonschema.Draft4Validator, what: str, path: str, value: Any, expected: str
) -> None:
    manifest = copy.deepcopy(load(ROOT / "examples" / "tiny-cpu.yaml"))
    set_path(manifest, path, value)
    found = errors(validator, manifest)
    assert any(e.startswith(expected) for e in found), f"{what}: {found}"
