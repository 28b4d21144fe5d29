"""The training step's data path and host-sync discipline (data/prefetch.py, train/step.py).

- the background prefetcher yields exactly the batches of `TokenDataset.sequences`, as int32
  inputs and int64 targets, resumes at any step, and re-raises a read error in the caller;
- the step (model, Muon + AdamW, clip, data from the prefetcher, DDP on one gloo process) makes
  no host read: the torch profiler counts zero `aten::_local_scalar_dense` (what `.item()`,
  `float()` and every device-to-host scalar read run) called from Python across the steps,
  while the LossMeter's read every N steps makes exactly one;
- `train.compile` resolves by device when omitted.
A CUDA test (skipped without CUDA) runs the step under `torch.cuda.set_sync_debug_mode("error")`.

Run: pytest -q tests/unit/trainer/test_step.py  (CPU, a few seconds)
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from speedrun_api.spec_train import ModelSpec, OptimizerSpec
from speedrun_trainer.cli.launch import free_port
from speedrun_trainer.data.loader import TokenDataset, batch_for
from speedrun_trainer.data.prefetch import BatchPrefetcher
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers
from speedrun_trainer.train.runtime import resolve_compile
from speedrun_trainer.train.step import LossMeter, StepTimer, TrainStep, data_parallel

SPEC = ModelSpec(vocab_size=64, seq_len=16, hidden_dim=32, intermediate_dim=64, num_layers=2, num_heads=2)


def dataset(n: int = 5000, seed: int = 0) -> TokenDataset:
    rng = np.random.default_rng(seed)
    return TokenDataset(
        [rng.integers(0, SPEC.vocab_size, n, dtype=np.uint16), rng.integers(0, SPEC.vocab_size, 777, dtype=np.uint16)],
        "mem://",
    )


def prefetcher(
    ds: TokenDataset, start_step: int = 0, accum: int = 2, rank: int = 0, world: int = 1, depth: int = 2
) -> BatchPrefetcher:
    return BatchPrefetcher(
        ds,
        start_step=start_step,
        accum=accum,
        rank=rank,
        world=world,
        device_batch_size=3,
        batch_size=3 * accum * world,
        seq_len=SPEC.seq_len,
        device=torch.device("cpu"),
        depth=depth,
    )


@pytest.mark.parametrize(("start", "rank", "world"), [(0, 0, 1), (5, 1, 2)])
def test_prefetcher_yields_the_loader_batches(start: int, rank: int, world: int) -> None:
    ds = dataset()
    batches = prefetcher(ds, start_step=start, rank=rank, world=world)
    try:
        for step in range(start, start + 40):  # past the end of the stream: wraps as sequences() does
            micro = batches.next_step()
            assert len(micro) == 2
            for m, (x, y) in enumerate(micro):
                first = batch_for(step, m, rank, world, 3, 3 * 2 * world)
                want_x, want_y = ds.sequences(first, 3, SPEC.seq_len)
                assert x.dtype == torch.int32 and y.dtype == torch.int64
                assert torch.equal(x.long(), want_x) and torch.equal(y, want_y)
    finally:
        batches.close()


def test_prefetcher_raises_read_errors_in_the_caller() -> None:
    empty = TokenDataset([np.zeros(5, dtype=np.uint16)], "mem://tiny")  # fewer than seqLen + 1 tokens
    batches = prefetcher(empty)
    with pytest.raises(Exception, match="fewer than seqLen"):
        batches.next_step()
    with pytest.raises(RuntimeError, match="closed"):
        batches.next_step()


def test_prefetcher_close_stops_a_thread_blocked_on_a_full_queue() -> None:
    batches = prefetcher(dataset(), depth=1)
    batches.next_step()
    batches.close()
    assert not batches._thread.is_alive()


def build_step(ddp: bool) -> tuple[TrainStep, torch.nn.Module]:
    torch.manual_seed(0)
    model = GPT(SPEC)
    optimizers = build_optimizers(model, OptimizerSpec(name="muon", learning_rate=0.02))
    wrapped = DistributedDataParallel(model) if ddp else None
    return TrainStep(model, wrapped or model, wrapped, optimizers, torch.device("cpu"), "fp32", 1.0), model


def scalar_reads(prof: torch.profiler.profile) -> int:
    """Scalar reads made from Python (by our code or an optimizer's), not inside another aten op:
    the CPU kernel of fused AdamW reads its step counts internally, which on CUDA runs on the device."""

    def inside_an_op(e: torch.autograd.profiler_util.FunctionEvent) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::") and p.name != "aten::item":
                return True
            p = p.cpu_parent
        return False

    return sum(1 for e in prof.events() if e.name == "aten::_local_scalar_dense" and not inside_an_op(e))


def test_step_makes_no_host_reads_and_the_meter_one_per_window() -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)  # DDP on one process, as the bench runs it
    try:
        step, _ = build_step(ddp=True)
        batches = prefetcher(dataset())
        meter, timer = LossMeter(torch.device("cpu")), StepTimer(torch.device("cpu"))
        try:
            first = step(batches.next_step())  # optimizer state is created outside the count
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(4):
                    timer.start()
                    meter.add(step(batches.next_step()))
                    timer.stop()
            assert scalar_reads(prof) == 0
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                loss = meter.read()
            assert scalar_reads(prof) == 1
        finally:
            batches.close()
        seconds, steps = timer.read()
        assert steps == 4 and seconds > 0 and timer.read() == (0.0, 0)
        assert 0 < loss < float(first) + 1 and np.isfinite(loss)
        assert np.isnan(meter.read())  # nothing added since the last read
    finally:
        dist.destroy_process_group()


def test_step_trains() -> None:
    step, model = build_step(ddp=False)
    counting = TokenDataset([(np.arange(3000) % SPEC.vocab_size).astype(np.uint16)], "mem://counting")
    batches = prefetcher(counting)  # next token = this token + 1: learnable, so the loss must fall
    try:
        losses = [float(step(batches.next_step())) for _ in range(30)]
    finally:
        batches.close()
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none) after each step


def test_ddp_only_with_more_than_one_rank() -> None:
    # One process (the bench alone, `speedrun run` with one worker): no DDP, whose hooks and one-rank
    # all-reduces only cost time; with 2 ranks (one gloo process stands in for rank 0 of 2) DDP.
    model = GPT(SPEC)
    assert data_parallel(model, torch.device("cpu"), 1) is None
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        wrapped = data_parallel(model, torch.device("cpu"), 2)
        assert isinstance(wrapped, DistributedDataParallel) and wrapped.module is model
    finally:
        dist.destroy_process_group()


def test_compile_resolves_by_device_when_omitted() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_compile(None, cpu) is False and resolve_compile(None, cuda) is True
    assert resolve_compile(True, cpu) is True and resolve_compile(False, cuda) is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_makes_no_host_sync() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = GPT(SPEC).to(device)
    optimizers = build_optimizers(model, OptimizerSpec(name="muon", learning_rate=0.02))
    step = TrainStep(model, model, None, optimizers, device, "bf16", 1.0)
    batches = BatchPrefetcher(
        dataset(),
        start_step=0,
        accum=2,
        rank=0,
        world=1,
        device_batch_size=3,
        batch_size=6,
        seq_len=SPEC.seq_len,
        device=device,
    )
    meter, timer = LossMeter(device), StepTimer(device)
    try:
        step(batches.next_step())
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                timer.start()
                meter.add(step(batches.next_step()))
                timer.stop()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert np.isfinite(meter.read()) and timer.read()[1] == 3
    finally:
        batches.close()


def test_prefetcher_keeps_uint32_token_ids() -> None:
    # A vocabulary over 65,536 (uint32 shards): ids must cross to the device unchanged.
    ids = np.array([70000, 128000, 5, 65536, 131071] * 40, dtype=np.uint32)
    ds = TokenDataset([ids], "mem://wide")
    assert ds.token_dtype == np.uint32
    batches = prefetcher(ds, accum=1)
    try:
        ((x, y),) = batches.next_step()
        want_x, want_y = ds.sequences(0, 3, SPEC.seq_len)
        assert torch.equal(x.long(), want_x) and torch.equal(y, want_y) and int(y.max()) == 131071
    finally:
        batches.close()
