"""The analytic memory estimate (speedrun_api.memory) against the real GPT traced under fake tensors.

Fake tensors allocate nothing, so these shapes (hidden 512, 2048 tokens per sequence) trace in
about a second each; fp8 runs torchao's real Float8Linear layers (fake tensors need no FP8 GPU).
The estimate must be within TOLERANCE of the trace: of the eager peak of two optimizer steps of
two micro-batches (weights, gradients, optimizer states, activations and transients together),
and of what torch.compile's min-cut partitioner saves for the backward.
"""

from __future__ import annotations

import pytest

from speedrun_api.manifest import parse_job
from speedrun_api.memory import estimate_peak_memory
from speedrun_trainer.train.memory_trace import compare_line, trace_compiled, trace_eager
from tests.support.helpers import example, with_changes

TOLERANCE = 0.10

FAMILIES = {
    "relu2-qknorm": {"activation": "relu2", "qkNorm": True},
    "silu": {"activation": "silu"},
    "gelu-gqa": {"activation": "gelu", "numKvHeads": 2},
    "relu2-tied": {"activation": "relu2", "tieEmbeddings": True},
    "silu-gqa-qknorm-tied": {"activation": "silu", "numKvHeads": 2, "qkNorm": True, "tieEmbeddings": True},
}
SHAPE = {"vocabSize": 8192, "seqLen": 2048, "hiddenDim": 512, "intermediateDim": 2048, "numLayers": 2, "numHeads": 4}


def job(family: str, device_batch: int, precision: str, optimizer: str = "adamw", compile: bool = False):
    return parse_job(
        {
            "metadata": {"name": "trace"},
            "spec": {
                "model": {**SHAPE, **FAMILIES[family]},
                "train": {
                    "batchSize": 2 * device_batch,
                    "deviceBatchSize": device_batch,
                    "steps": 1,
                    "precision": precision,
                    "compile": compile,
                    "optimizer": {"name": optimizer},
                },
                "data": {"train": "file:///t", "validation": "file:///v"},
            },
        }
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["bf16", "fp32", "fp8"])
@pytest.mark.parametrize(("optimizer", "device_batch"), [("adamw", 4), ("muon", 1)])
def test_eager_peak_matches_the_trace(family, precision, optimizer, device_batch):
    j = job(family, device_batch, precision, optimizer)
    estimate = estimate_peak_memory(j, world_size=1)
    traced = trace_eager(j.spec.model, device_batch, precision, j.spec.train.optimizer)
    assert traced.weights == estimate.weights
    assert estimate.allocated == pytest.approx(traced.peak, rel=TOLERANCE), compare_line(estimate, traced.peak)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_compiled_saved_tensors_match_the_partitioner(family, precision):
    j = job(family, 4, precision, compile=True)  # 8192 tokens: the loss runs in two chunks
    estimate = estimate_peak_memory(j, world_size=1)
    assert estimate.compiled
    assert estimate.saved == pytest.approx(trace_compiled(j.spec.model, 4, precision), rel=TOLERANCE)


def test_compiled_saves_less_than_eager_and_fp32_compiled_matches():
    j = job("relu2-qknorm", 2, "fp32", compile=True)
    estimate = estimate_peak_memory(j, world_size=1)
    assert estimate.saved == pytest.approx(trace_compiled(j.spec.model, 2, "fp32"), rel=TOLERANCE)
    eager = estimate_peak_memory(job("silu", 2, "bf16"), world_size=1)
    compiled = estimate_peak_memory(job("silu", 2, "bf16", compile=True), world_size=1)
    assert compiled.activations < eager.activations


def test_compare_line_reads_like_a_device_check():
    estimate = estimate_peak_memory(job("silu", 2, "bf16"), world_size=1)
    line = compare_line(estimate, estimate.allocated)
    assert "estimate / measured = 1.00" in line


def test_nanochat_d24_shapes_at_its_micro_batch():
    """nanochat d24's block shapes and vocabulary at 16 x 2048 tokens, two of its 24 layers.

    The whole model traces the same way (`python -m speedrun_trainer.train.memory_trace
    examples/nanochat-d24.yaml`: eager 67.0 GB traced, 67.0 estimated; compiled saves 50.2 GB
    traced, 50.3 estimated), in about 20 s, too slow for this tier.
    """
    j = parse_job(with_changes(example("nanochat-d24.yaml"), **{"spec.model.numLayers": 2, "spec.resources.nodes": 1}))
    t = j.spec.train
    eager = estimate_peak_memory(j, world_size=1, compiled=False)
    assert eager.allocated == pytest.approx(trace_eager(j.spec.model, 16, "bf16", t.optimizer).peak, rel=TOLERANCE)
    compiled = estimate_peak_memory(j, world_size=1, compiled=True)
    assert compiled.saved == pytest.approx(trace_compiled(j.spec.model, 16, "bf16"), rel=TOLERANCE)
