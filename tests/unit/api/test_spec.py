"""The SpeedrunJob model: defaults, field names, and one clear line per invalid field."""

from __future__ import annotations

import pytest

from speedrun_api.manifest import SpecError, load_job, parse_job
from tests.support.helpers import EXAMPLES, tiny_manifest, write_manifest


def errors(**overrides: object) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_job(tiny_manifest(**overrides))
    return info.value.lines


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads(path):
    job = load_job(path)
    assert job.spec.model.vocab_size > 0


def test_wire_names_are_camel_case_and_round_trip():
    job = parse_job(tiny_manifest())
    wire = job.manifest()
    assert wire["spec"]["model"]["hiddenDim"] == 64
    assert wire["spec"]["train"]["deviceBatchSize"] == 4
    assert wire["spec"]["runPolicy"]["maxRestarts"] == 3
    assert parse_job(wire) == job


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"spec.model.hiddenDim": 66, "spec.model.numHeads": 4}, "spec.model.hiddenDim: must be divisible by numHeads"),
        (
            {"spec.model.numKvHeads": 3, "spec.model.numHeads": 2},
            "spec.model.numHeads: must be divisible by numKvHeads",
        ),
        ({"spec.train.tokens": 1000}, "spec.train: give exactly one training horizon"),
        ({"spec.train.steps": None}, "spec.train: give exactly one training horizon"),
        ({"spec.train.batchSize": 12}, "spec.train.batchSize: must divide evenly"),
        ({"spec.resources.accelerator": "tpu-v9"}, "spec.resources.accelerator: unknown accelerator"),
        ({"spec.resources.minNodes": 1, "spec.resources.maxNodes": 2}, "spec.resources.nodes: invalid node count"),
        ({"spec.target": {"metric": "core", "value": 0.25}}, "spec.eval.core: required for a CORE target"),
        ({"spec.model.activation": "swish"}, "spec.model.activation: Input should be 'silu', 'relu2' or 'gelu'"),
        ({"spec.model.hiddenDm": 64}, "spec.model.hiddenDm: unknown field"),
        ({"spec.train.optimizer.name": "sgd"}, "spec.train.optimizer.name:"),
        ({"spec.model.numLayers": 0}, "spec.model.numLayers: Input should be greater than or equal to 1 (got 0)"),
        ({"spec.data": None}, "spec.data: required"),
        ({"metadata.name": "Bad_Name"}, "metadata.name: String should match pattern"),
    ],
)
def test_invalid_manifests_name_the_field(overrides, expected):
    lines = errors(**overrides)
    assert any(line.startswith(expected) for line in lines), lines
    assert all("\n" not in line and "Traceback" not in line for line in lines)


def test_every_problem_is_reported_at_once():
    lines = errors(**{"spec.model.numLayers": 0, "spec.train.deviceBatchSize": 0})
    assert len(lines) == 2


def test_elastic_batch_must_divide_for_every_node_count():
    lines = errors(**{"spec.resources.nodes": None, "spec.resources.minNodes": 1, "spec.resources.maxNodes": 3})
    assert any("nodes 3" in line for line in lines), lines


def test_unknown_accelerator_with_device_flops_is_fine():
    job = parse_job(tiny_manifest(**{"spec.resources.accelerator": "mi300x", "spec.resources.deviceFlops": 1.3e15}))
    assert job.spec.resources.device_flops == 1.3e15


def test_load_job_reports_yaml_and_file_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(bad)
    with pytest.raises(SpecError, match="no such file"):
        load_job(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="kind: must be SpeedrunJob"):
        load_job(write_manifest(tmp_path / "k.yaml", {**tiny_manifest(), "kind": "Job"}))
