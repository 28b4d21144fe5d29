"""Multi-node networking in the rendered pods: `resources.hostNetwork`, `resources.extraResources`,
`spec.env` and the chart's `trainer.env` (operator builders/common.py, builders/train_job.py), and
the refusals of names and resources that cannot work (api run_env.py, kubeformats.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_api.manifest import parse_job
from speedrun_api.run_env import env_name_problem
from speedrun_operator import builders
from speedrun_operator.operator_commands import main as cli
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import EXAMPLES

SETTINGS = OperatorSettings(default_storage_uri="s3://bucket/runs")
GPT2 = yaml.safe_load((EXAMPLES / "gpt2-124m-8xh100.yaml").read_text())


def gpt2(env: dict[str, str] | None = None, **resources: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GPT2)
    doc["spec"]["resources"].update(resources)
    if env is not None:
        doc["spec"]["env"] = env
    return doc


def pods(doc: dict[str, Any], settings: OperatorSettings = SETTINGS) -> tuple[dict[str, Any], dict[str, Any]]:
    job = parse_job(doc)
    train = builders.build_train_job(job, settings)["spec"]["template"]["spec"]
    evaluate = builders.build_eval_job(job, settings)["spec"]["template"]["spec"]
    return train, evaluate


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    [container] = pod["containers"]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"a variable set twice: {names}"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_host_network_rdma_and_env_on_the_training_pods() -> None:
    doc = gpt2(env={"NCCL_DEBUG": "INFO"}, hostNetwork=True, extraResources={"rdma/ib": 1, "nvidia.com/hostdev": 8})
    train, evaluate = pods(doc)
    [container] = train["containers"]
    assert train["hostNetwork"] is True and train["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert train["subdomain"] == "gpt2-124m"  # the rendezvous name still resolves (ClusterFirstWithHostNet)
    # host ports, stated: the scheduler never puts two pods using them on one node
    assert {p["name"]: p["hostPort"] for p in container["ports"]} == {
        p["name"]: p["containerPort"] for p in container["ports"]
    }
    assert {p["containerPort"] for p in container["ports"]} == {29400, 9400}
    # each agent advertises its pod IP (the node's), not the node's hostname
    assert "--local-addr=$(POD_IP)" in container["command"]
    env = env_of(train)
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}} and env["NCCL_DEBUG"] == "INFO"
    res = container["resources"]
    for kind in ("requests", "limits"):  # extended resources: request == limit, whole numbers as strings
        assert res[kind]["rdma/ib"] == "1" and res[kind]["nvidia.com/hostdev"] == "8"
        assert res[kind]["nvidia.com/gpu"] == "8"
    # the eval pod talks to no other node: the env, but neither the node's network nor its NICs
    [eval_container] = evaluate["containers"]
    assert "hostNetwork" not in evaluate and "dnsPolicy" not in evaluate
    assert "rdma/ib" not in eval_container["resources"]["limits"]
    assert env_of(evaluate)["NCCL_DEBUG"] == "INFO" and "POD_IP" not in env_of(evaluate)


def test_without_them_the_pods_are_as_before() -> None:
    train, _ = pods(gpt2())
    [container] = train["containers"]
    assert "hostNetwork" not in train and "dnsPolicy" not in train
    assert all("hostPort" not in p for p in container["ports"])
    assert not any(arg.startswith("--local-addr") for arg in container["command"])
    assert set(container["resources"]["limits"]) == {"nvidia.com/gpu", "memory"}


def test_chart_env_lies_under_the_spec_env() -> None:
    chart = OperatorSettings(
        default_storage_uri="s3://bucket/runs",
        trainer_env='{"NCCL_IB_HCA": "mlx5_0,mlx5_1", "NCCL_DEBUG": "WARN"}',
    )
    train, evaluate = pods(gpt2(env={"NCCL_DEBUG": "INFO"}), chart)
    for pod in (train, evaluate):
        env = env_of(pod)  # each name once
        assert env["NCCL_IB_HCA"] == "mlx5_0,mlx5_1" and env["NCCL_DEBUG"] == "INFO"


def test_every_variable_the_operator_sets_is_one_a_user_cannot() -> None:
    doc = gpt2(hostNetwork=True)
    doc["spec"]["tracking"] = {"wandb": {"mode": "online", "secretRef": {"name": "wandb"}}}
    doc["spec"]["storage"]["endpointUrl"] = "https://s3.example.com"
    train, evaluate = pods(doc)
    names = set(env_of(train)) | set(env_of(evaluate))
    assert {"POD_IP", "AWS_ACCESS_KEY_ID", "WANDB_API_KEY", "SPEEDRUN_RUN_ID"} <= names
    settable = sorted(n for n in names if env_name_problem(n) is None)
    assert not settable, f"spec.env could override what the operator sets: {settable}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"env": {"RANK": "1"}}, "spec.env: RANK is set by the launcher"),
        ({"env": {"SPEEDRUN_STORAGE_URI": "s3://x"}}, "spec.env: SPEEDRUN_STORAGE_URI is set by the launcher"),
        ({"env": {"MASTER_ADDR": "10.0.0.1"}}, "spec.env: MASTER_ADDR is set by the launcher"),
        ({"env": {"NCCL-DEBUG": "INFO"}}, "spec.env: 'NCCL-DEBUG' is not a C identifier"),
        ({"extraResources": {"ib": 1}}, "spec.resources.extraResources: 'ib' is not an extended resource name"),
        ({"extraResources": {"kubernetes.io/x": 1}}, "spec.resources.extraResources: 'kubernetes.io/x' is not"),
        ({"extraResources": {"nvidia.com/gpu": 8}}, "spec.resources.extraResources: nvidia.com/gpu is an accelerator"),
        ({"extraResources": {"rdma/ib": 0}}, "spec.resources.extraResources['rdma/ib']: Input should be greater"),
        ({"extraResources": {"rdma/ib": "1"}}, "spec.resources.extraResources['rdma/ib']: Input should be a valid"),
        ({"hostNetwork": "yes"}, "spec.resources.hostNetwork: Input should be a valid boolean"),
    ],
)
def test_render_refuses_in_one_line(
    change: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = gpt2(change.get("env"), **{k: v for k, v in change.items() if k != "env"})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli(["render", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "SPEEDRUN_OPERATOR_TRAINER_ENV: not JSON"),
        ('["NCCL_DEBUG"]', "SPEEDRUN_OPERATOR_TRAINER_ENV: expected a JSON object of strings"),
        ('{"NCCL_NTHREADS": 4}', "SPEEDRUN_OPERATOR_TRAINER_ENV: expected a JSON object of strings"),
        ('{"WORLD_SIZE": "2"}', "SPEEDRUN_OPERATOR_TRAINER_ENV: WORLD_SIZE is set by the launcher"),
    ],
)
def test_a_chart_env_that_cannot_work_is_named(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = OperatorSettings.from_env({"SPEEDRUN_OPERATOR_TRAINER_ENV": value})
    assert (settings.problem() or "").startswith(message)
    assert OperatorSettings.from_env(settings.to_env()) == settings
    monkeypatch.setenv("SPEEDRUN_OPERATOR_TRAINER_ENV", value)
    assert cli(["render", str(EXAMPLES / "gpt2-124m-8xh100.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {settings.problem()}"
