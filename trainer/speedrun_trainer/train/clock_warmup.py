"""modded-nanogpt's clock: an untimed warm-up on dummy data, then the state it touched restored.

Since its record 21, modded-nanogpt times every real step: train_gpt.py compiles and warms up
the kernels on a few untimed steps ("Warmup the training kernels, then re-initialize the state so
we aren't cheating"), then restores the model's `initial_state` and the optimizers' state, builds
a fresh data loader and starts the clock (README, "Timing change after record 21": the 10 untimed
"grace period" steps became "an explicit kernel-warmup section which is untimed and uses dummy
data"). `train.clock: modded-nanogpt` does that before the first real step of every process start
(a resume repeats it): `train.clockWarmupSteps` full optimizer steps (every micro-batch, the
gradient clip, every optimizer) on random tokens, then model weights, optimizer state and every
RNG restored. The LR schedule and the data position need no restoring: the schedule is a function
of the step counter and the data of the sequences consumed, and the warm-up advances neither.

The snapshot is taken to host memory (modded-nanogpt deep-copies on the GPU): the warm-up must
not need more device memory than training does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from speedrun_api.spec import SpeedrunSpec
from speedrun_trainer.train.step import Batch, TrainStep

DUMMY_SEED = 0  # the dummy tokens come from their own generator: the global RNG is not drawn on


def _to_host(obj: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor cloned to CPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return obj


def _rng_states(device: torch.device) -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def dummy_batches(
    accum: int, device_batch_size: int, seq_len: int, vocab_size: int, gen: torch.Generator
) -> list[Batch]:
    """One step's micro-batches of uniform random tokens (modded-nanogpt's "dummy data"), shaped,
    typed and laid out as the prefetcher's (data/prefetch.py: contiguous x int32, y int64), so the
    graphs compiled in the warm-up are the ones the real steps run: no recompiling in timed steps."""
    out = []
    for _ in range(accum):
        buf = torch.randint(0, vocab_size, (device_batch_size * seq_len + 1,), generator=gen)
        x = buf[:-1].view(device_batch_size, seq_len).to(torch.int32)
        y = buf[1:].view(device_batch_size, seq_len).clone()
        out.append((x, y))
    return out


def warm_up_and_reset(
    train_step: TrainStep, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], spec: SpeedrunSpec, accum: int
) -> float:
    """Run `train.clockWarmupSteps` untimed optimizer steps of `accum` micro-batches on dummy data,
    then restore model, optimizers and RNG to what they were; returns the seconds it took (the
    results' warmup_seconds)."""
    steps, device = spec.train.clock_warmup_steps, train_step.device
    device_batch_size, seq_len, vocab_size = spec.train.device_batch_size, spec.model.seq_len, spec.model.vocab_size
    if steps <= 0:
        return 0.0
    began = time.perf_counter()
    weights = _to_host(model.state_dict())
    opt_states = [_to_host(o.state_dict()) for o in optimizers]
    rng = _rng_states(device)
    gen = torch.Generator().manual_seed(DUMMY_SEED)
    for _ in range(steps):
        batches = dummy_batches(accum, device_batch_size, seq_len, vocab_size, gen)
        train_step([(x.to(device), y.to(device)) for x, y in batches])
    model.load_state_dict(weights)  # copies into the same tensors: the optimizers keep their params
    for opt, state in zip(optimizers, opt_states, strict=True):
        opt.load_state_dict(state)  # replaces the state the warm-up built (an empty one at step 0)
    model.zero_grad(set_to_none=True)
    _set_rng_states(rng)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began
