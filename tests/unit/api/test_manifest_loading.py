"""Hostile manifests: every one ends in `error: <field path>: <what is allowed>` or
`error: <file>:<line>: <what is wrong>` and exit 2, never a traceback, a hang or NaN in JSON.

The classes come from the fuzzing in issue 15: bytes that are not UTF-8, YAML bombs and deep
nesting, non-finite and oversized numbers, a second document, duplicate keys, snake_case names,
loosely typed values, and horizons that resolve past the caps. tests/unit/api/test_manifest_properties.py
mutates the examples at random under the same rules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_api import safeyaml
from speedrun_api.manifest import SpecError, load_job, parse_job
from speedrun_trainer.cli.speedrun import main
from tests.support.helpers import EXAMPLES, tiny_manifest, write_manifest

ERROR_LINE = re.compile(r"^error: (spec|metadata|kind|apiVersion|status|\S+\.(yaml|json))(\S*|:\d+): \S.*$")
LE, FINITE = "Input should be less than or equal to", "Input should be a finite number"
TINY = (EXAMPLES / "tiny-cpu.yaml").read_text()


def plan_errors(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["plan", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and lines, err
    bad = [line for line in lines if not ERROR_LINE.match(line)]
    assert not bad, lines
    return lines


def write_bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "m.yaml"
    path.write_bytes(data)
    return path


# 60 aliases (under the alias cap) that expand to 10**6 values: the "billion laughs", smaller.
BOMB = "metadata: {name: x}\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7)
)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("utf16", TINY.encode("utf-16"), r"m\.yaml:1: UTF-16 text"),
        ("0xff", TINY.encode()[:200] + b"\xff" + TINY.encode()[200:], r"m\.yaml:\d+: not UTF-8 text \(byte 0xff"),
        ("nul", b"spec:\n  a: \x00\n", r"m\.yaml:2: a NUL character"),
        ("deep", b"[" * 5000 + b"]" * 5000, r"m\.yaml:1: nested deeper than 32 levels"),
        ("deep-block", "".join(f"{' ' * i}k{i}:\n" for i in range(60)).encode(), "nested deeper than 32"),
        ("bomb", BOMB.encode(), r"m\.yaml:\d+: aliases expand to more than 100,000 values"),
        ("alias-loop", b"metadata: &a {name: x, labels: *a}\n", "alias"),
        ("recursive-seq", b"spec: &a [*a]\n", "recursive"),
        ("aliases", ("a: &a 1\n" + "".join(f"b{i}: *a\n" for i in range(100))).encode(), "more than 64 aliases"),
        ("two-docs", (TINY + "\n---\n" + TINY).encode(), r"m\.yaml:\d+: a second YAML document"),
        ("duplicate", TINY.replace("  data:", "  data: {}\n  data:", 1).encode(), r"m\.yaml:\d+: duplicate key 'data'"),
        ("bool-key", b"yes: 1\n", r"m\.yaml:1: mapping key True is not a string"),
        ("int-key", b"1: x\n", r"m\.yaml:1: mapping key 1 is not a string"),
        ("huge", b"# " + b"x" * (safeyaml.MAX_BYTES + 10), r"m\.yaml: larger than"),
        ("bad-yaml", b"spec: [unclosed\n", r"m\.yaml:\d+: not valid YAML"),
        ("5000-digits", b"spec:\n  train: {steps: " + b"9" * 5000 + b"}\n", r"m\.yaml:2: an integer of 5,000 char"),
        ("control-char", b"spec: \x01\n", r"m\.yaml:1: not valid YAML: character U\+0001"),
        ("empty", b"", r"m\.yaml: empty file"),
        ("scalar", b"42\n", r"m\.yaml: expected a SpeedrunJob mapping"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 and "\\" not in v else "",
)
def test_unreadable_files_are_one_line_with_file_and_line(name, data, expected, tmp_path, capsys):
    lines = plan_errors(write_bytes(tmp_path, data), capsys)
    assert len(lines) == 1 and re.search(expected, lines[0]), lines


def test_a_utf8_bom_and_yaml_1_2_floats_are_fine(tmp_path, capsys):
    text = TINY.replace("learningRate: 0.003", "learningRate: 3e-3")
    assert "3e-3" in text
    job = load_job(write_bytes(tmp_path, b"\xef\xbb\xbf" + text.encode()))
    assert job.spec.train.optimizer.learning_rate == 0.003


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"spec.train.steps": None, "spec.train.flopsBudget": float("inf")}, "spec.train.flopsBudget: FINITE"),
        ({"spec.train.steps": None, "spec.train.paramDataRatio": 1e300}, "spec.train.paramDataRatio: LE 1000000"),
        ({"spec.train.steps": 10**400}, "spec.train.steps: LE 1000000000 (got 1000"),
        ({"spec.train.optimizer.learningRate": float("inf")}, "spec.train.optimizer.learningRate: FINITE"),
        ({"spec.model.ropeTheta": float("nan")}, "spec.model.ropeTheta: FINITE"),
        ({"spec.train.optimizer.maxGradNorm": float("inf")}, "spec.train.optimizer.maxGradNorm: FINITE"),
        ({"spec.resources.deviceFlops": 1e300}, "spec.resources.deviceFlops: LE"),
        ({"spec.target": {"metric": "val_loss", "value": float("nan")}}, "spec.target.value: FINITE"),
        ({"spec.train.seed": 2**64}, "spec.train.seed: LE 4294967295"),
        ({"spec.eval.bpb.tokens": 10**18}, "spec.eval.bpb.tokens: LE 10000000000"),
        ({"spec.runPolicy.activeDeadlineSeconds": 2**63}, "spec.runPolicy.activeDeadlineSeconds: Input should be less"),
        (
            {"spec.resources.maxNodes": 10**9, "spec.resources.minNodes": 1, "spec.resources.nodes": None},
            "spec.resources.maxNodes: LE 10000",
        ),
        ({"spec.train.steps": "100"}, "spec.train.steps: Input should be a valid integer (got '100')"),
        ({"spec.train.steps": True}, "spec.train.steps: Input should be a valid integer (got True)"),
        ({"spec.model.tieEmbeddings": "yes"}, "spec.model.tieEmbeddings: Input should be a valid boolean"),
        ({"spec.train.batch_size": 8}, "spec.train.batch_size: unknown field (fields are camelCase; did you"),
        ({"spec.train.steps": None, "spec.train.flopsBudget": 1e30}, "spec.train.flopsBudget: resolves to"),
        (
            {"spec.train.steps": None, "spec.train.tokens": 10**16, "spec.model.seqLen": 1},
            "spec.train.tokens: resolves",
        ),
        (
            {
                "spec.train.steps": None,
                "spec.train.tokens": 16 * 2**20 * 596_046_447,
                "spec.model.seqLen": 2**20,
                "spec.train.batchSize": 16,
            },
            None,
        ),
    ],
)
def test_numbers_and_names_outside_the_contract(overrides, expected, tmp_path, capsys):
    path = write_manifest(tmp_path / "m.yaml", tiny_manifest(**overrides))
    expected = expected and expected.replace(": FINITE", f": {FINITE}").replace(": LE", f": {LE}")
    if expected is None:  # at the caps exactly: valid, and the JSON is strict
        assert main(["plan", str(path), "--json"]) == 0
        json.loads(capsys.readouterr().out, parse_constant=_no_constants)
        return
    lines = plan_errors(path, capsys)
    assert any(line.startswith(f"error: {expected}") for line in lines), lines


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} in JSON output")


@pytest.mark.parametrize("spec", [[1, 2], "text", 3, None])
def test_spec_that_is_not_a_mapping(spec):
    doc = tiny_manifest()
    doc["spec"] = spec
    with pytest.raises(SpecError) as info:
        parse_job(doc)
    assert info.value.lines[0].startswith("spec: ")


def test_resources_that_is_not_a_mapping():
    with pytest.raises(SpecError) as info:
        parse_job(tiny_manifest(**{"spec.resources": ["gpu"]}))
    assert info.value.lines[0].startswith("spec.resources: Input should be a valid dictionary")


def test_the_crd_states_the_same_ranges():
    crd = yaml.safe_load((EXAMPLES.parent / "crds" / "speedrunjob.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["train"]["properties"]["steps"]["maximum"] == 1_000_000_000
    assert spec["train"]["properties"]["seed"]["maximum"] == 2**32 - 1
    assert spec["eval"]["properties"]["bpb"]["properties"]["tokens"]["maximum"] == 10**10
    # int64 fields stop at 2**53 - 1: the apiserver reads bounds as float64 (tests/cluster/test_admission.py)
    assert spec["runPolicy"]["properties"]["activeDeadlineSeconds"]["maximum"] == 2**53 - 1
    assert spec["model"]["properties"]["vocabSize"]["maximum"] == 2**22
