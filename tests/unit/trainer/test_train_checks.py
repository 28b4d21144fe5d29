"""The trainer refuses manifests it cannot honour on this machine, with the right exit semantics."""

from __future__ import annotations

import pytest
import torch

from speedrun_api.manifest import ConfigError, parse_job
from speedrun_trainer.train.runtime import Dist, check_device
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


@pytest.mark.parametrize(
    "resources",
    [
        {"spec.resources.accelerator": "nvidia-h100-80gb"},
        # A GPU the table lacks: before, the check skipped it and the run trained on the CPU.
        {"spec.resources.accelerator": "nvidia-b200", "spec.resources.deviceFlops": 2.25e15},
    ],
    ids=["known", "not-in-the-table"],
)
def test_a_gpu_manifest_without_cuda_is_refused_for_good(resources):
    """Asked for a GPU, seeing none: a ConfigError, exit code 2, which the operator's podFailurePolicy
    takes as final (another attempt on the same image and nodes sees the same)."""
    job = parse_job(tiny_manifest(**resources))
    name = resources["spec.resources.accelerator"]
    with pytest.raises(ConfigError, match=rf"spec\.resources\.accelerator: {name} is a GPU, but torch .* sees no CUDA"):
        check_device(job, CPU)


def test_the_refusal_exits_2_through_the_entry_point(monkeypatch, tmp_path, capsys):
    """The whole path a worker takes: config loaded, the check fails, one line, exit code 2."""
    import yaml

    from speedrun_api.manifest import EXIT_INVALID
    from speedrun_trainer.train import loop

    path = tmp_path / "run.yaml"
    doc = tiny_manifest(**{"spec.resources.accelerator": "nvidia-b200", "spec.resources.deviceFlops": 2.25e15})
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SPEEDRUN_STORAGE_URI", (tmp_path / "store").as_uri())
    assert loop.main(["--config", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nvidia-b200 is a GPU, but torch" in err[0], err
