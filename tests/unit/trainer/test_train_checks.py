"""The trainer refuses manifests it cannot honour on this machine, with the right exit semantics."""

from __future__ import annotations

import pytest
import torch

from speedrun_api.manifest import ConfigError, parse_job
from speedrun_trainer.train.runtime import DeviceError, Dist, check_device
from tests.support.helpers import tiny_manifest

CPU = Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def test_cpu_manifest_runs_on_cpu():
    check_device(parse_job(tiny_manifest()), CPU)


def test_tpu_manifest_is_an_invalid_config_for_torch():
    """A TPU trains through jax (its default backend); asking torch for it is refused, naming the field."""
    tpu = {"spec.resources.accelerator": "tpu-v5e", "spec.resources.topology": "2x2", "spec.resources.nodes": 1}
    job = parse_job(tiny_manifest(**tpu, **{"spec.train.backend": "torch", "spec.train.deviceBatchSize": 2}))
    with pytest.raises(ConfigError, match=r"spec\.train\.backend: torch cannot train on tpu-v5e"):
        check_device(job, CPU)


@pytest.mark.parametrize(
    "extra",
    [
        {"spec.train.backend": "jax"},
        {  # one host of 4 chips
            "spec.resources.accelerator": "tpu-v5e",
            "spec.resources.topology": "2x2",
            "spec.resources.nodes": 1,
            "spec.train.deviceBatchSize": 2,
        },
    ],
)
def test_a_jax_backend_run_is_never_trained_by_torchrun(extra):
    """backend jax (set, or the TPU default) belongs to jax_main: the torch trainer refuses it."""
    job = parse_job(tiny_manifest(**extra))
    with pytest.raises(ConfigError, match=r"spec\.train\.backend: jax trains under"):
        check_device(job, CPU)


def test_gpu_manifest_without_cuda_is_a_retryable_device_error():
    job = parse_job(tiny_manifest(**{"spec.resources.accelerator": "nvidia-h100-80gb"}))
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        check_device(job, CPU)
