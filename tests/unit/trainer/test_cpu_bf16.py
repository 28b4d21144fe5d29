"""`precision: bf16` on CPUs (train/runtime.py): real bf16 autocast where the CPU multiplies bf16
natively (AVX512-BF16 or AMX, from oneDNN's check of the CPU's capability flags), fp32 elsewhere.

- the precision -> autocast dtype table for CUDA, capable CPUs and CPUs without native bf16;
- on a capable CPU (skipped elsewhere): the trainer's step runs its matmuls in bf16, keeps the
  weights, gradients and loss in fp32, and a micro model's loss falls as it does in fp32.
The numerical-equality tests (test_model, test_step, test_muon, test_cross_entropy) stay in fp32.

Run: pytest -q tests/unit/trainer/test_cpu_bf16.py  (CPU, a few seconds)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speedrun_api.spec_train import ModelSpec, OptimizerSpec
from speedrun_trainer.data.loader import TokenDataset
from speedrun_trainer.data.prefetch import BatchPrefetcher
from speedrun_trainer.train import runtime
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers
from speedrun_trainer.train.runtime import autocast, autocast_dtype, native_bf16_matmul
from speedrun_trainer.train.step import TrainStep

SPEC = ModelSpec(
    vocab_size=64,
    seq_len=16,
    hidden_dim=32,
    intermediate_dim=64,
    num_layers=2,
    num_heads=2,
    activation="relu2",
    qk_norm=True,
    tie_embeddings=True,
)
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
NATIVE = native_bf16_matmul(CPU)


def test_cuda_autocasts_bf16_and_fp8_in_bf16() -> None:
    assert autocast_dtype(CUDA, "bf16") == autocast_dtype(CUDA, "fp8") == torch.bfloat16
    assert autocast_dtype(CUDA, "fp32") is None


def test_cpu_autocasts_bf16_only_where_it_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    assert autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "fp8") is None  # refused earlier (train/fp8.py); never autocast here
    assert autocast_dtype(CPU, "bf16") == (torch.bfloat16 if NATIVE else None)
    monkeypatch.setattr(runtime, "native_bf16_matmul", lambda device: False)
    assert autocast_dtype(CPU, "bf16") is None  # emulated bf16 is slower than fp32: train in fp32
    with autocast(CPU, "bf16"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(runtime, "native_bf16_matmul", lambda device: True)
    with autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not native_bf16_matmul(torch.device("meta"))


def counting_batches(device_batch_size: int = 4) -> BatchPrefetcher:
    """Next token = this token + 1: learnable, so a training loss must fall."""
    ds = TokenDataset([(np.arange(4000) % SPEC.vocab_size).astype(np.uint16)], "mem://counting")
    return BatchPrefetcher(
        ds,
        start_step=0,
        accum=1,
        rank=0,
        world=1,
        device_batch_size=device_batch_size,
        batch_size=device_batch_size,
        seq_len=SPEC.seq_len,
        device=CPU,
    )


def train(precision: str, steps: int) -> tuple[list[float], list[torch.dtype], torch.nn.Module]:
    torch.manual_seed(0)
    model = GPT(SPEC)
    optimizers = build_optimizers(model, OptimizerSpec(name="muon", learning_rate=0.02))
    step = TrainStep(model, model, None, optimizers, CPU, precision, 1.0)
    seen: list[torch.dtype] = []
    hook = model.blocks[0].mlp.c_up.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    batches = counting_batches()
    try:
        losses = [float(step(batches.next_step())) for _ in range(steps)]
    finally:
        batches.close()
        hook.remove()
    return losses, seen, model


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (AVX512-BF16/AMX): bf16 trains in fp32")
def test_bf16_step_multiplies_in_bf16_and_trains() -> None:
    losses, seen, model = train("bf16", 20)
    assert set(seen) == {torch.bfloat16}  # the block matmuls ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses
    fp32_losses, fp32_seen, _ = train("fp32", 20)
    assert set(fp32_seen) == {torch.float32}
    # The same run in fp32: bf16 starts from the same loss (rounding apart) and learns as well.
    assert abs(losses[0] - fp32_losses[0]) < 0.05
    assert losses[-1] < fp32_losses[-1] + 0.25, (losses[-1], fp32_losses[-1])


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (AVX512-BF16/AMX): bf16 trains in fp32")
def test_bf16_gradients_follow_the_fp32_ones() -> None:
    torch.manual_seed(0)
    model = GPT(SPEC)
    idx = torch.randint(0, SPEC.vocab_size, (4, SPEC.seq_len), generator=torch.Generator().manual_seed(1))
    grads = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with autocast(CPU, precision):
            loss = model(idx, idx.roll(-1, dims=1))
        assert loss.dtype == torch.float32
        loss.backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert grads[precision].dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cosine > 0.99, cosine
