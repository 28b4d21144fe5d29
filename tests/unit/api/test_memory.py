"""The plan's memory estimate and verdict: published runs fit, the d24 at 32 does not, the refusal.

Calibration points (published configurations that run on the named GPUs):
- nanochat d24 trains at device batch 16 on 8x H100 80 GB (16 x 2048 tokens x 8 x 2 accumulation
  steps = the 524,288-token batch); at 32 its activations alone exceed 80 GB.
- nanochat's runs/speedrun.sh trains d26 with `--device-batch-size=16 --fp8` and a 1M-token batch.
- modded-nanogpt's GPT-2 small (124M) trains on H100s at 64 x 1024 tokens per device (its early
  records) and at 48 x 1024 tokens as one sequence per device (its later ones).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from speedrun_api.accelerators import ACCELERATORS
from speedrun_api.kubeformats import quantity_value
from speedrun_api.manifest import SpecError, load_job, parse_job
from speedrun_api.memory import estimate_peak_memory, largest_fitting_batch, memory_verdict
from speedrun_api.spec import SpeedrunJob
from tests.support.helpers import EXAMPLES, example, tiny_manifest, with_changes


def d24(**changes: object) -> dict:
    return with_changes(example("nanochat-d24.yaml"), **changes)


def refusal(doc: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_job(doc)
    (line,) = err.value.lines
    return line


def test_nanochat_d24_at_16_fits_and_says_by_how_much():
    job = load_job(EXAMPLES / "nanochat-d24.yaml")
    verdict = memory_verdict(job)
    assert verdict.fits and verdict.capacity == 80 * 10**9
    assert 0.75 < verdict.estimate.total / verdict.capacity < 0.95
    share = verdict.estimate.total / verdict.capacity
    assert verdict.line() == f"fits: {verdict.estimate.total / 1e9:.1f} of 80.0 GB ({share:.0%})"
    out = subprocess.run(
        [sys.executable, "-m", "speedrun_trainer.cli.speedrun", "plan", str(EXAMPLES / "nanochat-d24.yaml")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"Peak memory per device: {verdict.line()}\n" in out


def test_nanochat_d24_at_32_is_refused_naming_the_field_and_the_largest_that_fits():
    line = refusal(d24(**{"spec.train.deviceBatchSize": 32}))
    assert line.startswith("spec.train.deviceBatchSize: 32 needs about ")
    assert "80.0 GB" in line and line.endswith("at most 16 fits (gradient accumulation keeps batchSize)")


def test_even_one_sequence_not_fitting_is_refused():
    line = refusal(d24(**{"spec.resources.deviceMemory": "8Gi"}))
    assert line.startswith("spec.train.deviceBatchSize: 16 needs about ") and "even 1 does not fit" in line


def test_the_largest_that_fits_also_divides_the_batch():
    # The spec's own model validation, without the plan's refusal: d24 at 32 on a 24 GB device.
    job = SpeedrunJob.model_validate(d24(**{"spec.resources.deviceMemory": "24G", "spec.train.deviceBatchSize": 32}))
    best = largest_fitting_batch(job)
    assert best >= 1 and 256 % (best * 8) == 0
    assert estimate_peak_memory(job, device_batch=best).total <= 24e9
    assert all(estimate_peak_memory(job, device_batch=b).total > 24e9 for b in range(best + 1, 33))


def test_nanochat_d26_fp8_at_16_fits_an_h100():
    doc = d24(
        **{
            "spec.model.hiddenDim": 1664,
            "spec.model.intermediateDim": 6656,
            "spec.model.numLayers": 26,
            "spec.model.numHeads": 13,
            "spec.model.numKvHeads": 13,
            "spec.train.batchSize": 512,
            "spec.train.precision": "fp8",
        }
    )
    assert memory_verdict(parse_job(doc)).fits
    line = refusal(with_changes(doc, **{"spec.train.deviceBatchSize": 32}))
    assert line.startswith("spec.train.deviceBatchSize: 32 ") and line.endswith(
        "at most 16 fits (gradient accumulation keeps batchSize)"
    )


@pytest.mark.parametrize(("seq_len", "device_batch"), [(1024, 64), (48 * 1024, 1)])
def test_modded_nanogpt_124m_fits_one_h100(seq_len, device_batch):
    doc = with_changes(
        example("gpt2-124m-8xh100.yaml"),
        **{
            "spec.model.seqLen": seq_len,
            "spec.train.batchSize": 8 * device_batch,
            "spec.train.deviceBatchSize": device_batch,
            "spec.resources.nodes": 1,
        },
    )
    verdict = memory_verdict(parse_job(doc))
    assert verdict.fits and verdict.estimate.total < 0.8 * verdict.capacity


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_fits_or_is_not_judged(path):
    assert memory_verdict(load_job(path)).fits in (True, None)


def test_cpu_is_estimated_without_a_verdict():
    verdict = memory_verdict(parse_job(tiny_manifest()))
    assert verdict.fits is None and verdict.capacity is None and verdict.estimate.total > 0
    assert "no device memory known" in verdict.line()


def test_device_memory_overrides_the_table_and_judges_unknown_accelerators():
    unknown = {"spec.resources.accelerator": "my-npu", "spec.resources.deviceFlops": 1e15}
    assert memory_verdict(parse_job(d24(**unknown))).fits is None
    judged = memory_verdict(parse_job(d24(**unknown, **{"spec.resources.deviceMemory": "96Gi"})))
    assert judged.capacity == 96 * 2**30 and judged.fits


def test_every_accelerator_but_cpu_has_memory():
    assert {name for name, acc in ACCELERATORS.items() if acc.device_memory is None} == {"cpu"}
    assert ACCELERATORS["nvidia-h200"].device_memory == 141 * 10**9
    assert ACCELERATORS["tpu-v5p"].device_memory == 95 * 2**30


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("80Gi", 80 * 2**30), ("80G", 80e9), ("1e9", 1e9), ("1500m", 1.5), (".5Ki", 512), ("2E", 2e18), ("7", 7)],
)
def test_quantity_value(quantity, value):
    assert quantity_value(quantity) == value


def test_muon_keeps_less_optimizer_state_than_adamw_and_ddp_adds_buckets():
    job = load_job(EXAMPLES / "nanochat-d24.yaml")
    muon = estimate_peak_memory(job)
    adamw = estimate_peak_memory(parse_job(d24(**{"spec.train.optimizer.name": "adamw"})))
    assert muon.optimizer < adamw.optimizer == 2 * adamw.gradients
    assert muon.ddp_buckets == muon.gradients and estimate_peak_memory(job, world_size=1).ddp_buckets == 0


def test_the_operator_refuses_it_at_admission_with_the_same_line():
    import kopf

    from speedrun_operator.handlers import reconcile
    from speedrun_operator.handlers.operator_startup import OperatorContext
    from tests.unit.api.test_manifest_properties import SETTINGS, FakeClient

    body = d24(**{"spec.train.deviceBatchSize": 32})
    body["metadata"].update(namespace="ns", uid="u-1", generation=1)
    client = FakeClient(body)
    with pytest.raises(kopf.PermanentError) as err:
        reconcile._reconcile(OperatorContext(settings=SETTINGS, client=client), body)  # type: ignore[arg-type]
    assert str(err.value) == refusal(d24(**{"spec.train.deviceBatchSize": 32}))
    assert client.status_patches[-1]["phase"] == "Failed"
