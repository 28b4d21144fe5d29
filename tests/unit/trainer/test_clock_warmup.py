"""train.clock: modded-nanogpt's untimed dummy warm-up + state reset, and what each clock times."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_api.manifest import parse_job
from speedrun_trainer.train import loop
from speedrun_trainer.train.clock_warmup import warm_up_and_reset
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers, lr_multiplier, set_lr
from speedrun_trainer.train.runtime import Dist
from speedrun_trainer.train.step import StepTimer, TrainStep
from tests.support.helpers import tiny_manifest

CPU = torch.device("cpu")


def _train(job, warm_up: bool, steps: int = 4) -> tuple[list[torch.Tensor], list[dict], torch.Tensor]:
    """The tiny GPT trained `steps` steps on fixed batches, after the warm-up + reset or not:
    its parameters, its optimizers' states, and the next draw of the global RNG."""
    spec = job.spec
    torch.manual_seed(0)
    model = GPT(spec.model)
    opts = build_optimizers(model, spec.train.optimizer, compile=False)
    step = TrainStep(model, model, None, opts, CPU, "fp32", spec.train.optimizer.max_grad_norm)
    if warm_up:
        assert warm_up_and_reset(step, model, opts, spec, accum=2) > 0
    data = torch.Generator().manual_seed(1)
    o = spec.train.optimizer
    for s in range(steps):
        set_lr(opts, lr_multiplier(s, steps, o.warmup_steps, o.decay, o.min_lr_ratio))
        toks = torch.randint(0, spec.model.vocab_size, (2, 4, spec.model.seq_len + 1), generator=data)
        step([(t[:, :-1], t[:, 1:]) for t in toks])
    return [p.detach().clone() for p in model.parameters()], [opt.state_dict() for opt in opts], torch.rand(3)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_after_the_warm_up_is_bitwise_that_without(optimizer: str) -> None:
    job = parse_job(
        tiny_manifest(
            **{
                "spec.train.clock": "modded-nanogpt",
                "spec.train.clockWarmupSteps": 3,
                "spec.train.optimizer": {"name": optimizer, "warmupSteps": 2, "decay": 0.5},
            }
        )
    )
    params, states, rng = _train(job, warm_up=True)
    ref_params, ref_states, ref_rng = _train(job, warm_up=False)
    assert _same(params, ref_params)
    assert _same(states, ref_states)
    assert torch.equal(rng, ref_rng)  # the global RNG is where it was


class FakeTimer(StepTimer):
    """Every timed step takes exactly one second: training_seconds counts the steps the clock kept."""

    def read(self) -> tuple[float, int]:
        _, steps = super().read()
        return float(steps), steps


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: str, crash_at: int | None = None) -> loop.TrainState:
    monkeypatch.setenv("SPEEDRUN_STORAGE_URI", (tmp_path / f"run-{clock}").as_uri())
    monkeypatch.setenv("SPEEDRUN_METRICS_PORT", "0")
    monkeypatch.setattr(loop, "StepTimer", FakeTimer)
    changes = {"spec.train.steps": 8, "spec.train.checkpointEvery": 4, "spec.train.evalEvery": 0}
    job = parse_job(tiny_manifest(**changes, **{"spec.train.clock": clock, "spec.train.clockWarmupSteps": 2}))
    trainer = loop.Trainer(job, Dist(rank=0, local_rank=0, world_size=1, device=CPU))
    if crash_at is not None:
        real_step = trainer._step

        def step(batches: object) -> torch.Tensor:
            if trainer.state.step == crash_at:
                raise RuntimeError("the pod died")
            return real_step(batches)  # type: ignore[arg-type]

        monkeypatch.setattr(trainer, "_step", step)
        with pytest.raises(RuntimeError, match="the pod died"):
            trainer.run()
        trainer.close()
        return _run(tmp_path, monkeypatch, clock)  # the restart resumes from the step-4 checkpoint
    try:
        return trainer.run()
    finally:
        trainer.close()


def test_each_clock_times_its_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nanochat = _run(tmp_path, monkeypatch, "nanochat")
    assert (nanochat.step, nanochat.training_seconds, nanochat.warmup_steps) == (8, 8 - 2, 2)
    modded = _run(tmp_path, monkeypatch, "modded-nanogpt")
    assert (modded.step, modded.training_seconds, modded.warmup_steps) == (8, 8, 2)  # all real steps timed


def test_a_restart_repeats_the_warm_up_and_times_every_real_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modded = _run(tmp_path, monkeypatch, "modded-nanogpt", crash_at=6)
    # steps 1-4 (checkpointed) and 5-8 after the restart: all 8 timed; the dummy warm-up twice
    assert (modded.step, modded.training_seconds, modded.warmup_steps) == (8, 8, 4)
    nanochat = _run(tmp_path, monkeypatch, "nanochat", crash_at=6)  # steps 1-2 and 5-6 untimed
    assert (nanochat.step, nanochat.training_seconds, nanochat.warmup_steps) == (8, 2 + 2, 4)


def test_dummy_batches_look_like_the_prefetchers() -> None:
    """The warm-up compiles the graphs the real steps run: same shapes, dtypes, contiguity as
    data/prefetch.py's micro-batches (x int32, y int64), or the first timed step recompiles."""
    import numpy as np

    from speedrun_trainer.data.loader import TokenDataset
    from speedrun_trainer.data.prefetch import BatchPrefetcher
    from speedrun_trainer.train.clock_warmup import dummy_batches

    ds = TokenDataset([np.arange(5000, dtype=np.uint16) % 256], "mem://tokens")
    prefetcher = BatchPrefetcher(
        ds, start_step=0, accum=2, rank=0, world=1, device_batch_size=4, batch_size=8, seq_len=32, device=CPU
    )
    try:
        real = prefetcher.next_step()
    finally:
        prefetcher.close()
    dummy = dummy_batches(2, 4, 32, 256, torch.Generator().manual_seed(0))
    assert len(dummy) == len(real)
    for (dx, dy), (rx, ry) in zip(dummy, real, strict=True):
        for d, r in ((dx, rx), (dy, ry)):
            assert (d.shape, d.dtype, d.stride(), d.is_contiguous()) == (
                r.shape,
                r.dtype,
                r.stride(),
                r.is_contiguous(),
            )
        assert int(dx.max()) < 256 and torch.equal(dx[:, 1:].long(), dy[:, :-1])
