"""TPU slices in the builders (operator/speedrun_operator/builders/tpu.py): GKE's selectors,
`google.com/tpu` per host, one pod per host running JAX, the TPU image, and a CPU eval pod."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

import pytest
import yaml

from speedrun_api.manifest import load_job, parse_job
from speedrun_operator import builders
from speedrun_operator.operator_commands import main as cli
from speedrun_operator.settings import DEFAULT_TPU_TRAINER_IMAGE, OperatorSettings
from tests.support.helpers import EXAMPLES, with_changes

SETTINGS = OperatorSettings(default_storage_uri="s3://bucket/runs")
EXAMPLE = EXAMPLES / "tpu-v5e-16.yaml"


def tiny_tpu(accelerator: str, topology: str, nodes: int, **changes: Any) -> Any:
    doc = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    resources = {"accelerator": accelerator, "topology": topology, "nodes": nodes, "procsPerNode": 1}
    batch = {"spec.train.batchSize": 128, "spec.train.deviceBatchSize": 8}
    return parse_job(with_changes(doc, **{"spec.resources": resources, **batch, **changes}))


def pod_of(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod, container


@pytest.mark.parametrize(
    ("accelerator", "topology", "nodes", "selector", "chips"),
    [
        ("tpu-v5e", "4x4", 4, "tpu-v5-lite-podslice", "4"),
        ("tpu-v5e", "2x4", 1, "tpu-v5-lite-podslice", "8"),  # one host of 8 chips
        ("tpu-v5e", "2x4", 2, "tpu-v5-lite-podslice", "4"),  # two hosts of 4
        ("tpu-v6e", "1x1", 1, "tpu-v6e-slice", "1"),
        ("tpu-v5p", "2x2x2", 2, "tpu-v5p-slice", "4"),
        ("tpu-v4", "2x2x4", 4, "tpu-v4-podslice", "4"),
    ],
)
def test_a_tpu_slice_is_one_pod_per_host_with_gke_selectors(
    accelerator: str, topology: str, nodes: int, selector: str, chips: str
) -> None:
    job = tiny_tpu(accelerator, topology, nodes)
    manifest = builders.build_train_job(job, SETTINGS)
    pod, container = pod_of(manifest)
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == nodes
    # GKE injects TPU_WORKER_ID / TPU_WORKER_HOSTNAMES into an Indexed Job's pods with a subdomain.
    assert pod["subdomain"] == builders.build_headless_service(job)["metadata"]["name"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": selector,
        "cloud.google.com/gke-tpu-topology": topology,
    }
    res = container["resources"]
    assert res["requests"]["google.com/tpu"] == res["limits"]["google.com/tpu"] == chips
    # docs/contracts.md "JAX backend entry point" (branch i26-jax)
    assert container["command"] == [
        "python",
        "-m",
        "speedrun_trainer.train.jax_main",
        "--config",
        "/etc/speedrun/run.json",
    ]
    assert {"name": "SPEEDRUN_JAX_PLATFORM", "value": "tpu"} in container["env"]
    assert not any("torchrun" in part for part in container["command"])
    assert {"name": "jax-coordinator", "containerPort": 8482} in container["ports"]
    assert container["image"] == DEFAULT_TPU_TRAINER_IMAGE


def test_the_eval_pod_of_a_tpu_run_is_a_cpu_pod_in_the_trainer_image() -> None:
    job = tiny_tpu("tpu-v5e", "4x4", 4)
    pod, container = pod_of(builders.build_eval_job(job, SETTINGS))
    assert "google.com/tpu" not in str(container.get("resources", {}))
    assert "cloud.google.com/gke-tpu-accelerator" not in pod.get("nodeSelector", {})
    assert container["image"] == SETTINGS.trainer_image
    assert "--nproc-per-node=1" in container["command"] and "speedrun_trainer.evaluation" in container["command"]


def test_image_follows_the_accelerator_and_spec_image_wins() -> None:
    settings = OperatorSettings(default_storage_uri="s3://b/r", trainer_image="ex/t:1", tpu_trainer_image="ex/tpu:1")
    tpu = tiny_tpu("tpu-v6e", "4x4", 4)
    assert pod_of(builders.build_train_job(tpu, settings))[1]["image"] == "ex/tpu:1"
    own = tiny_tpu("tpu-v6e", "4x4", 4, **{"spec.image": "ex/mine:2"})
    assert pod_of(builders.build_train_job(own, settings))[1]["image"] == "ex/mine:2"
    assert pod_of(builders.build_eval_job(own, settings))[1]["image"] == "ex/mine:2"
    gpu = load_job(EXAMPLES / "gpt2-124m-8xh100.yaml")
    assert pod_of(builders.build_train_job(gpu, settings))[1]["image"] == "ex/t:1"
    env = OperatorSettings.from_env({"SPEEDRUN_OPERATOR_TPU_TRAINER_IMAGE": "ex/tpu:9"})
    assert env.tpu_trainer_image == "ex/tpu:9" and OperatorSettings.from_env(env.to_env()) == env


def test_a_tpu_manifest_is_runnable_in_a_cluster() -> None:
    builders.check_runnable(load_job(EXAMPLE), OperatorSettings())  # no TPU refusal any more


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (tiny_tpu("tpu-v5e", "2x2", 1, **{"spec.train.backend": "torch"}), "backend: torch cannot train on tpu-v5e"),
        (
            parse_job(
                with_changes(yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text()), **{"spec.train.backend": "jax"})
            ),
            "backend: jax runs in a cluster only on TPU slices",
        ),
    ],
)
def test_the_backend_must_match_the_slice_in_a_cluster(job: Any, message: str) -> None:
    """jax pods are joined by GKE's TPU env only (no builder sets the join env elsewhere yet), and a
    TPU trains only through jax: both refused at admission, naming spec.train.backend."""
    with pytest.raises(builders.BuildError, match=rf"^spec\.train\.{message}"):
        builders.check_runnable(job, SETTINGS)


def rendered_job(suffix: str) -> dict[str, Any]:
    """The Job named `*<suffix>` that `speedrun render` prints for the TPU example."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli(["render", str(EXAMPLE)]) == 0
    docs = [d for d in yaml.safe_load_all(out.getvalue()) if d]
    [job] = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith(suffix)]
    return job


def test_render_of_the_tpu_example_shows_the_slice() -> None:
    train = rendered_job("-train")
    pod, container = pod_of(train)
    assert train["spec"]["parallelism"] == 4 and container["resources"]["limits"]["google.com/tpu"] == "4"
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4"
    assert pod["tolerations"] == [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_the_eval_pod_of_a_tpu_run_keeps_off_the_slice_hosts() -> None:
    """It asks for no TPU, so the TPU taint's toleration is dropped (the others stay): it never takes
    a TPU host's CPU or pulls the trainer image onto one."""
    evaluation = rendered_job("-eval")
    pod, container = pod_of(evaluation)
    assert "google.com/tpu" not in (container.get("resources") or {}).get("limits", {})
    assert "tolerations" not in pod, pod.get("tolerations")
