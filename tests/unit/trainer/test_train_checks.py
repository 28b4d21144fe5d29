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


def test_tpu_manifest_is_an_invalid_config():
    slice_ = {"spec.resources.accelerator": "tpu-v5e", "spec.resources.topology": "2x2", "spec.resources.nodes": 1}
    job = parse_job(tiny_manifest(**slice_, **{"spec.train.deviceBatchSize": 2}))  # 1 host of 4 chips
    with pytest.raises(ConfigError, match=r"spec\.resources\.accelerator: tpu-v5e needs a TPU backend"):
        check_device(job, CPU)


def test_gpu_manifest_without_cuda_is_a_retryable_device_error():
    job = parse_job(tiny_manifest(**{"spec.resources.accelerator": "nvidia-h100-80gb"}))
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        check_device(job, CPU)
