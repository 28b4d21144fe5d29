"""One optimizer step with no host synchronisation, its clock, and its loss read every N steps.

- `TrainStep`: forward + backward over the micro-batches (DDP gradient sync only on the last),
  gradient-norm clip, every optimizer's step, zero_grad. It returns the mean loss as a device
  tensor and reads nothing back: no `.item()`, no `float()`, no synchronize, so the host keeps
  queueing kernels while the GPU works.
- `StepTimer`: on CUDA a pair of CUDA events around each step, read only when asked (one wait
  on the newest event, then `elapsed_time`s that are already complete); elsewhere perf_counter
  (CPU ops run synchronously, so wall time is step time).
- `data_parallel`: DDP around the (compiled) model when there is more than one rank; none at
  world size 1, where it would only add its hooks and a one-rank all-reduce of every bucket.
  Buffers are never broadcast (every buffer of the GPT is a constant of the spec), and with
  `train.gradReduceDtype: bf16` the gradients are all-reduced in bf16 (half the bytes).
- `LossMeter`: the losses of the steps since the last read, summed on the device; `read()` makes
  one all-reduce and one host read for all of them (the trainer calls it every `logEvery` steps).

    ddp = data_parallel(runnable, device, world_size)      # None on one process
    step = TrainStep(model, ddp or runnable, ddp, optimizers, device, precision, max_grad_norm)
    timer, meter = StepTimer(device), LossMeter(device)
    timer.start(); loss = step(prefetcher.next_step()); timer.stop(); meter.add(loss)
    ...every logEvery steps: seconds, steps = timer.read(); mean_loss = meter.read()
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
from torch.nn.parallel import DistributedDataParallel

from speedrun_trainer.train.attention import segment_ids
from speedrun_trainer.train.runtime import autocast

Batch = tuple[torch.Tensor, torch.Tensor]


def data_parallel(
    module: nn.Module, device: torch.device, world_size: int, grad_reduce_dtype: str = "fp32"
) -> DistributedDataParallel | None:
    """`module` under DDP when `world_size` > 1 (device_ids on CUDA), else None: the caller runs it bare.

    `broadcast_buffers=False`: DDP's default re-sends every buffer from rank 0 before each forward,
    for modules whose buffers change in training (BatchNorm's running stats). The GPT's buffers
    (the rotary inv_freq/cos/sin tables, model.py `Rotary`) are computed from the spec alone, equal
    on every rank and never written after construction (tests/unit/trainer/test_data_parallel.py
    fails on a buffer that a step changes), and DDP's construction already broadcasts them once.

    `grad_reduce_dtype` "bf16" (`train.gradReduceDtype`) registers torch's `bf16_compress_hook`:
    each gradient bucket is cast to bf16, divided by the world size, all-reduced and cast back, so
    a step sends half the bytes (124M parameters: ~0.25 GB instead of ~0.5 GB per all-reduce), at
    bf16's 8-bit mantissa in the averaged gradient. The optimizer still steps in fp32.
    """
    if world_size <= 1:
        return None
    ddp = DistributedDataParallel(
        module, device_ids=[device.index or 0] if device.type == "cuda" else None, broadcast_buffers=False
    )
    if grad_reduce_dtype == "bf16":
        ddp.register_comm_hook(None, bf16_compress_hook)
    elif grad_reduce_dtype != "fp32":
        raise ValueError(f"grad_reduce_dtype: fp32 or bf16, got {grad_reduce_dtype!r}")
    return ddp


class TrainStep:
    """The trainer's optimizer step (see the module doc); the learning rate is set by the caller."""

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[..., torch.Tensor],
        ddp: DistributedDataParallel | None,
        optimizers: Sequence[torch.optim.Optimizer],
        device: torch.device,
        precision: str,
        max_grad_norm: float,
        document_eos: int | None = None,
    ) -> None:
        self.model, self.forward, self.ddp = model, forward, ddp
        self.document_eos = document_eos  # model.documentMask: attention within documents
        self.optimizers, self.device, self.precision = list(optimizers), device, precision
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, micro_batches: Sequence[Batch]) -> torch.Tensor:
        accum = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro_batches):
            last = i == accum - 1
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with no_sync, autocast(self.device, self.precision):
                if self.document_eos is None:
                    loss = self.forward(x, y)
                else:
                    loss = self.forward(x, y, doc_ids=segment_ids(x, self.document_eos))
            (loss / accum).backward()
            total += loss.detach()
        if self.max_grad_norm > 0:
            # foreach norm + clamp on the device: no host read (clip_grad_norm_ never .item()s)
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)
        return total / accum


class StepTimer:
    """Seconds spent in the timed steps, read lazily (see the module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._open: torch.cuda.Event | float | None = None
        self._seconds, self._steps = 0.0, 0

    def start(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._open = event
        else:
            self._open = time.perf_counter()

    def stop(self) -> None:
        if self._open is None:
            raise RuntimeError("StepTimer.stop() without start()")
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._open, end))  # type: ignore[arg-type]
        else:
            self._seconds += time.perf_counter() - self._open  # type: ignore[operator]
        self._open = None
        self._steps += 1

    def read(self) -> tuple[float, int]:
        """(seconds, steps) timed since the last read; on CUDA waits for the last timed step once."""
        if self._pending:
            self._pending[-1][1].synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._pending) / 1000.0
            self._pending.clear()
        out = (self._seconds, self._steps)
        self._seconds, self._steps = 0.0, 0
        return out


class LossMeter:
    """Sum of step losses on the device; `read()` averages them over steps and ranks."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float32, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach().float()
        self.count += 1

    def read(self) -> float:
        """The mean loss of the steps added since the last read, over all ranks (NaN if none)."""
        if self.count == 0:
            return float("nan")
        total = self.total / self.count
        if dist.is_initialized():
            dist.all_reduce(total)
            total = total / dist.get_world_size()
        self.total.zero_()
        self.count = 0
        return float(total)
