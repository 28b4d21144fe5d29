"""The operator's accelerator-labels profile: settings, chart env, `speedrun render`, the builders."""

from __future__ import annotations

import argparse

import pytest
import yaml

from speedrun_api.manifest import parse_job
from speedrun_operator import builders
from speedrun_operator.operator_commands import main as cli
from speedrun_operator.operator_commands import register, settings_from_args
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import EXAMPLES, tiny_manifest

GPU_EXAMPLE = EXAMPLES / "gpt2-124m-8xh100.yaml"


def train_pod(job_doc: dict, settings: OperatorSettings) -> dict:
    return builders.build_train_job(parse_job(job_doc), settings)["spec"]["template"]["spec"]


def test_the_default_profile_selects_no_labels_and_requests_the_gpus() -> None:
    assert OperatorSettings().accelerator_labels == "none"
    pod = train_pod(yaml.safe_load(GPU_EXAMPLE.read_text()), OperatorSettings())
    assert "nodeSelector" not in pod
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_the_profile_comes_from_its_variable_and_a_bad_one_is_named() -> None:
    settings = OperatorSettings.from_env({"SPEEDRUN_OPERATOR_ACCELERATOR_LABELS": "eks"})
    assert settings.accelerator_labels == "eks" and settings.problem() is None
    bad = OperatorSettings.from_env({"SPEEDRUN_OPERATOR_ACCELERATOR_LABELS": "gcp"})
    assert (
        bad.problem()
        == "SPEEDRUN_OPERATOR_ACCELERATOR_LABELS: got 'gcp'; one of none, gke, eks, eks-auto, aks, nvidia-gfd"
    )


def test_the_spec_node_selector_wins_per_key() -> None:
    doc = yaml.safe_load(GPU_EXAMPLE.read_text())
    doc["spec"]["resources"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED"}
    pod = train_pod(doc, OperatorSettings(accelerator_labels="nvidia-gfd"))
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED"}


def test_an_accelerator_the_table_lacks_requests_gpus_in_every_profile() -> None:
    """Before: no resource at all, so the pod landed on any node and trained on its CPU."""
    doc = tiny_manifest(**{"spec.resources.accelerator": "nvidia-b200", "spec.resources.deviceFlops": 2.25e15})
    for profile in ("none", "gke", "eks"):
        pod = train_pod(doc, OperatorSettings(accelerator_labels=profile))
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1", profile
        assert "nodeSelector" not in pod, profile


def test_the_eval_pod_of_a_gpu_run_selects_the_same_labels() -> None:
    job = parse_job(yaml.safe_load(GPU_EXAMPLE.read_text()))
    pod = builders.build_eval_job(job, OperatorSettings(accelerator_labels="gke"))["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}


def test_render_takes_the_profile_as_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["render", str(GPU_EXAMPLE), "--accelerator-labels", "eks"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d and d["kind"] == "Job"]
    selectors = {d["metadata"]["name"]: d["spec"]["template"]["spec"].get("nodeSelector") for d in docs}
    assert selectors["gpt2-124m-train"] == {"karpenter.k8s.aws/instance-gpu-name": "h100"}


def test_render_names_a_bad_profile_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPEEDRUN_OPERATOR_ACCELERATOR_LABELS", "gcp")
    assert cli(["render", str(GPU_EXAMPLE)]) == 2
    assert capsys.readouterr().err == (
        "error: SPEEDRUN_OPERATOR_ACCELERATOR_LABELS: got 'gcp'; one of none, gke, eks, eks-auto, aks, nvidia-gfd\n"
    )
    assert cli(["render", str(GPU_EXAMPLE), "--accelerator-labels", "aks"]) == 0  # the flag wins


def test_the_operator_flag_reaches_its_settings() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["operator", "--accelerator-labels", "nvidia-gfd"])
    assert settings_from_args(args, OperatorSettings()).accelerator_labels == "nvidia-gfd"
    assert OperatorSettings(accelerator_labels="nvidia-gfd").to_env()["SPEEDRUN_OPERATOR_ACCELERATOR_LABELS"] == (
        "nvidia-gfd"
    )
