"""The `speedrun` CLI as a user meets it: plan output, JSON keys, and errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from speedrun_trainer.cli.speedrun import main
from tests.support.helpers import EXAMPLES, tiny_manifest, write_manifest

MARIN_KEYS = {"model_size", "model_flops_per_token", "model_flops", "total_tokens", "num_devices", "device_flops"}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_plans(path, capsys):
    assert main(["plan", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out.keys() >= MARIN_KEYS
    assert out["steps"] > 0 and out["grad_accum_steps"] >= 1


def test_plan_prints_marin_figures(capsys):
    assert main(["plan", str(EXAMPLES / "marin-130m.yaml")]) == 0
    out = capsys.readouterr().out
    for text in [
        "Model size: 154.15 million parameters",
        "Model FLOPs: 2.11e+18 FLOP",
        "Device FLOPs: 3.12e+14",
        "4.21e+18 FLOPs assuming an MFU of 0.5",
        "1.05e+19 FLOPs assuming an MFU of 0.2",
        "Gradient accumulation steps: 16",
    ]:
        assert text in out


def test_plan_leads_with_the_cost_and_keeps_the_config_for_a_flag(capsys):
    assert main(["plan", str(EXAMPLES / "marin-130m.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    lead = [line.split(":")[0].strip() for line in lines[1:9]]
    assert lead == [
        "Model size",
        "Model FLOPs",
        "Total tokens",
        "Number of devices",
        "Peak memory per device",
        "The rough estimated compute (total model FLOPs / assumed MFU) is between",
        "* 4.21e+18 FLOPs assuming an MFU of 0.5 (about 3.8 h of wall time)",
        "* 1.05e+19 FLOPs assuming an MFU of 0.2 (about 9.4 h of wall time)",
    ]
    assert not any(line.lstrip().startswith(("{", '"')) for line in lines), "no configuration without --config"
    assert main(["plan", str(EXAMPLES / "marin-130m.yaml"), "--config"]) == 0
    with_config = capsys.readouterr().out
    assert with_config.splitlines()[:9] == lines[:9] and '"hiddenDim": 512' in with_config


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_plan_fits_80_columns(path, capsys):
    assert main(["plan", str(path)]) == 0
    assert all(len(line) <= 80 for line in capsys.readouterr().out.splitlines())


def test_invalid_manifest_exits_2_with_one_line_per_problem(tmp_path):
    doc = tiny_manifest(**{"spec.model.hiddenDim": 66, "spec.model.numHeads": 4, "spec.train.batchSize": 12})
    path = write_manifest(tmp_path / "bad.yaml", doc)
    res = subprocess.run(
        [sys.executable, "-m", "speedrun_trainer.cli", "plan", str(path)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert any(line.startswith("error: spec.model.hiddenDim: must be divisible by numHeads") for line in lines)
    assert any(line.startswith("error: spec.train.batchSize: must divide evenly") for line in lines)
    assert res.stdout == ""


def test_missing_file_is_one_line(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.yaml'}: no such file"


def test_speedrun_run_gives_its_processes_the_spec_env(tmp_path) -> None:
    from speedrun_api.manifest import parse_job
    from speedrun_trainer.cli.local import LocalRun

    doc = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    doc["spec"]["env"] = {"NCCL_DEBUG": "INFO", "MY_SETTING": "x y", "OMP_NUM_THREADS": "3"}
    run = LocalRun(parse_job(doc), tmp_path, tmp_path.as_uri())
    assert run.env["NCCL_DEBUG"] == "INFO" and run.env["MY_SETTING"] == "x y"
    assert run.env["OMP_NUM_THREADS"] == "3"  # the spec's, not the launcher's share of the cores
    assert run.env["SPEEDRUN_STORAGE_URI"] == tmp_path.as_uri()  # the launcher's own, still there
