"""The generated CRD (crds/speedrunjob.yaml): no drift, structural, and it agrees with the model.

Validation here is offline: structural defaulting and the openAPIV3Schema (jsonschema, draft 4
like Kubernetes' OpenAPI v3 subset). The CEL rules (x-kubernetes-validations) are evaluated by the
real kube-apiserver with the same CEL_REJECTS table (tests/support/crd_cases.py), in
tests/cluster/test_crd.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from speedrun_api.crd import PRINTER_COLUMNS, build_crd, render_crd
from speedrun_api.manifest import SpecError, parse_job
from speedrun_api.status import Condition, Progress, Results, SpeedrunJobStatus
from speedrun_trainer.cli.speedrun import main as cli
from tests.support.crd_cases import CEL_REJECTS, SCHEMA_REJECTS, example_docs, tiny
from tests.support.helpers import ROOT
from tests.support.kube_admission import CustomResourceSchema

CRD_FILE = ROOT / "crds" / "speedrunjob.yaml"
SCHEMA = CustomResourceSchema(build_crd())
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title"}


def admit(doc: dict[str, Any]) -> list[str]:
    return SCHEMA.validate(SCHEMA.default(doc))


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == render_crd(), "crds/speedrunjob.yaml drifted: run `speedrun crd`"


def test_crd_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crd.yaml"
    chart = tmp_path / "chart"
    chart.mkdir()
    assert cli(["crd", "--out", str(out), "--chart-dir", str(chart)]) == 0
    assert (chart / "crds" / "speedrunjob.yaml").read_text() == out.read_text() == render_crd()
    assert cli(["crd", "--check", "--out", str(out), "--chart-dir", str(chart)]) == 0
    out.write_text(out.read_text().replace("srj", "sr"))
    capsys.readouterr()
    assert cli(["crd", "--check", "--out", str(out), "--chart-dir", str(chart)]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "-    - sr" in err and "+    - srj" in err


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return []
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_schema_is_structural() -> None:
    nodes = walk(SCHEMA.schema)
    assert len(nodes) > 100
    for path, node in nodes:
        if node.get("x-kubernetes-int-or-string"):  # structural's one union: Kubernetes' own quantities
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}] and "type" not in node, path
            continue
        assert not FORBIDDEN_KEYS & set(node), f"{path}: {FORBIDDEN_KEYS & set(node)}"
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not isinstance(node.get("additionalProperties"), bool), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, f"{path}: {key} must be the OpenAPI v3 boolean"
        if "default" in node:
            assert jsonschema.Draft4Validator(node).is_valid(node["default"]), f"{path}: default"
    conditions = SCHEMA.schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_names_subresources_and_printer_columns() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("SpeedrunJob", "speedrunjobs", ["srj"])
    assert names["categories"] == ["speedrun"] and crd["spec"]["scope"] == "Namespaced"
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"].lower(): c["jsonPath"] for c in version["additionalPrinterColumns"]}
    for wanted in ("phase", "nodes", "accelerator", "step", "loss", "bpb", "core", "age"):
        assert wanted in columns, wanted
    for column in PRINTER_COLUMNS:
        node: dict[str, Any] = SCHEMA.schema
        parts = column["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        for part in parts:
            node = node["properties"][part]
        assert node["type"] == column["type"] or (column["type"], node["type"]) == ("date", "string"), column


@pytest.mark.parametrize("doc", example_docs(), ids=lambda d: d["metadata"]["name"])
def test_examples_are_admitted(doc: dict[str, Any]) -> None:
    assert admit(doc) == []


@pytest.mark.parametrize("doc", example_docs(), ids=lambda d: d["metadata"]["name"])
def test_server_side_defaults_mean_what_pydantic_defaults_mean(doc: dict[str, Any]) -> None:
    defaulted = SCHEMA.default(doc)
    assert parse_job(defaulted).manifest() == parse_job(doc).manifest()


@pytest.mark.parametrize(("where", "doc"), SCHEMA_REJECTS, ids=[w for w, _ in SCHEMA_REJECTS])
def test_schema_rejects_what_the_model_rejects(where: str, doc: dict[str, Any]) -> None:
    problems = admit(doc)
    assert problems and problems[0].startswith(where), problems
    with pytest.raises(SpecError):
        parse_job(doc)


@pytest.mark.parametrize(("message", "doc", "model_rejects"), CEL_REJECTS, ids=[m for m, _, _ in CEL_REJECTS])
def test_what_the_model_rejects_of_the_cel_table(message: str, doc: dict[str, Any], model_rejects: bool) -> None:
    # The apiserver's side of each row is checked in tests/cluster/test_crd.py.
    assert admit(doc) == []  # the schema alone admits them: only CEL refuses
    if model_rejects:
        with pytest.raises(SpecError):
            parse_job(doc)


def test_a_rule_without_cel_is_left_to_the_operator() -> None:
    # The batch-size rule spans nodes x procs x micro-batch ranges: no CEL twin, the operator
    # reports it (tests/cluster/test_lifecycle.py::test_an_invalid_spec_fails_and_a_fixed_generation_runs).
    doc = tiny(**{"spec.train.batchSize": 12})
    assert admit(doc) == []
    with pytest.raises(SpecError, match="batchSize"):
        parse_job(doc)


def test_status_schema_accepts_what_the_operator_writes() -> None:
    status = SpeedrunJobStatus(
        phase="Succeeded",
        nodes="1:4",
        conditions=[
            Condition(
                type="Succeeded",
                status="True",
                reason="EvaluationSucceeded",
                last_transition_time="2026-01-01T00:00:00Z",
            )
        ],
        progress=Progress(step=10, total_steps=20, train_loss=2.0, mfu=0.4, update_time="2026-01-01T00:00:00Z"),
        results=Results(uri="s3://b/r.json", bpb=1.1, core=0.3),
        restarts=1,
        start_time="2026-01-01T00:00:00Z",
        completion_time="2026-01-01T01:00:00Z",
        observed_generation=3,
    )
    doc = {**tiny(), "status": status.wire()}
    assert SCHEMA.validate(doc) == []
    bad = {**tiny(), "status": {**status.wire(), "phase": "Exploded"}}
    assert any("status.phase" in p for p in SCHEMA.validate(bad))
