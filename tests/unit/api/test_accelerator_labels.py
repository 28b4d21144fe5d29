"""The accelerator -> node labels table per cloud, and what an accelerator the table lacks is."""

from __future__ import annotations

import pytest

from speedrun_api import accelerator_labels as al
from speedrun_api.accelerators import ACCELERATORS
from speedrun_api.manifest import SpecError, parse_job
from tests.support.helpers import tiny_manifest

GPUS = [a.name for a in ACCELERATORS.values() if a.kind == "gpu"]


@pytest.mark.parametrize(
    ("profile", "labels"),
    [
        ("none", {}),
        ("gke", {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}),
        ("eks", {"karpenter.k8s.aws/instance-gpu-name": "h100"}),
        ("eks-auto", {"eks.amazonaws.com/instance-gpu-name": "h100"}),
        ("aks", {"kubernetes.azure.com/accelerator": "nvidia"}),
        ("nvidia-gfd", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
    ],
)
def test_an_h100_selects_each_clouds_labels(profile: str, labels: dict[str, str]) -> None:
    assert al.node_labels("nvidia-h100-80gb", profile) == labels


def test_gke_names_a3_mega_and_the_a100s_its_own_way() -> None:
    assert al.node_labels("nvidia-h100-mega-80gb", "gke") == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-mega-80gb"
    }
    assert al.node_labels("nvidia-a100-40gb", "gke") == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    assert al.node_labels("nvidia-h200", "gke") == {"cloud.google.com/gke-accelerator": "nvidia-h200-141gb"}


def test_eks_tells_the_two_a100s_apart_by_gpu_memory() -> None:
    name = "karpenter.k8s.aws/instance-gpu-name"
    memory = "karpenter.k8s.aws/instance-gpu-memory"
    assert al.node_labels("nvidia-a100-80gb", "eks") == {name: "a100", memory: "81920"}  # p4de
    assert al.node_labels("nvidia-a100-40gb", "eks") == {name: "a100", memory: "40960"}  # p4d


@pytest.mark.parametrize("profile", al.PROFILES)
def test_every_label_is_a_valid_kubernetes_label(profile: str) -> None:
    from speedrun_api import kubeformats as kf

    for gpu in GPUS:
        for key, value in al.node_labels(gpu, profile).items():
            assert kf.label_key_problem(key) is None, (gpu, key)
            assert len(value) <= 63 and value.replace("-", "").replace(".", "").isalnum(), (gpu, value)


def test_every_data_center_gpu_has_labels_in_every_cloud_with_that_gpu() -> None:
    """Each GPU the clouds offer has its label there: a gap would leave its pods on any GPU node."""
    for gpu in GPUS:
        assert al.node_labels(gpu, "nvidia-gfd"), gpu
        if gpu != "rtx-4090":  # a consumer card: no cloud's node pool
            assert al.node_labels(gpu, "gke") and al.node_labels(gpu, "eks"), gpu


@pytest.mark.parametrize("profile", al.PROFILES)
def test_tpus_select_gkes_labels_in_every_profile_and_cpus_none(profile: str) -> None:
    assert al.node_labels("tpu-v5e", profile) == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice"}
    assert al.node_labels("cpu", profile) == {}


def test_an_accelerator_the_table_lacks_is_a_gpu() -> None:
    assert al.device_kind("nvidia-b200") == "gpu" and al.device_resource("nvidia-b200") == "nvidia.com/gpu"
    assert al.device_resource("cpu") is None and al.device_resource("tpu-v6e") == "google.com/tpu"
    assert al.node_labels("nvidia-b200", "gke") == {}  # no label known: the GPU request alone
    assert al.node_labels("nvidia-b200", "aks") == {"kubernetes.azure.com/accelerator": "nvidia"}


@pytest.mark.parametrize(
    ("accelerator", "message"),
    [
        ("tpu-v9", r"spec\.resources\.accelerator: unknown accelerator.*unknown TPU 'tpu-v9'.*known: tpu-v4"),
        ("cpu-epyc", r"spec\.resources\.accelerator: unknown accelerator.*for a CPU give `cpu`"),
    ],
)
def test_names_that_say_tpu_or_cpu_are_refused_even_with_device_flops(accelerator: str, message: str) -> None:
    doc = tiny_manifest(**{"spec.resources.accelerator": accelerator, "spec.resources.deviceFlops": 1e15})
    with pytest.raises(SpecError, match=message) as err:
        parse_job(doc)
    assert len(err.value.lines) == 1


def test_a_gpu_the_table_lacks_is_taken_with_device_flops() -> None:
    job = parse_job(tiny_manifest(**{"spec.resources.accelerator": "nvidia-b200", "spec.resources.deviceFlops": 2e15}))
    assert job.spec.resources.accelerator == "nvidia-b200"


def test_profile_problem_names_the_choices() -> None:
    assert al.profile_problem("gke") is None
    assert al.profile_problem("gcp") == "got 'gcp'; one of none, gke, eks, eks-auto, aks, nvidia-gfd"


@pytest.mark.parametrize("name", ["1tiny", "7up", "0"])
def test_a_name_that_does_not_start_with_a_letter_is_refused_as_the_crd_does(name: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_job(tiny_manifest(**{"metadata.name": name}))
    assert err.value.lines == [f"metadata.name: must start with a letter (it names the headless Service), got {name!r}"]
